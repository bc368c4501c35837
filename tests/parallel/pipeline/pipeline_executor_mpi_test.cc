// The executor on the world as one pp group (2, 3 or 4 ranks), every
// schedule kind: the losses and the gradients of each rank's chunks equal a
// single-process run of the whole toy model over all micro-batches.
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <memory>
#include <string>

#include "core/check.h"
#include "parallel/comm/communicator_factory.h"
#include "parallel/pipeline/pipeline_executor.h"
#include "parallel/pipeline/schedule_simulator.h"
#include "tests/parallel/pipeline/toy_stage_model.h"

namespace fulcrum::parallel::pipeline {
namespace {

using testing::ToyModel;
using testing::ToyStageModel;

std::unique_ptr<Communicator> WorldCommunicator(const std::string& name) {
  CommOptions options;
  options.timeout_seconds = 60.0;
  auto comm = CreateCommunicator(CommBackend::kMpi, MPI_COMM_WORLD, name, options);
  FULCRUM_CHECK(comm.ok(), comm.status().ToString());
  return std::move(comm).value();
}

struct Reference {
  std::vector<torch::Tensor> losses;
  std::vector<torch::Tensor> grads;  // of ToyModel::Parameters(vs) for the rank's chunks
};

Reference RunReference(int stages, int v, int m, int stage) {
  ToyModel model(stages * v, m);
  Reference ref;
  for (int mb = 0; mb < m; ++mb) {
    torch::Tensor h;
    for (int vs = 0; vs < stages * v; ++vs) h = model.ForwardVirtualStage(vs, mb, h);
    ref.losses.push_back(h.detach());
    h.backward();
  }
  for (int c = 0; c < v; ++c) {
    for (const auto& p : model.Parameters(c * stages + stage)) ref.grads.push_back(p.grad());
  }
  return ref;
}

class PipelineExecutorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    activations_ = WorldCommunicator("pp_activations");
    gradients_ = WorldCommunicator("pp_gradients");
  }
  int stages() const { return activations_->size(); }
  int stage() const { return activations_->rank(); }

  // Runs `kind` and compares with the reference; returns the step result.
  // `built`: the schedule from BuildSchedule, else the hand-written one.
  PipelineStepResult RunAndCompare(ScheduleKind kind, int m, int v, bool built = false) {
    const ScheduleShape shape{stages(), m, v};
    Schedule schedule = testing::TestSchedule(kind, shape);
    if (built) {
      auto b = BuildSchedule(kind, shape);
      EXPECT_TRUE(b.ok()) << b.status();
      if (!b.ok()) return {};
      schedule = std::move(b).value();
    }
    SCOPED_TRACE(std::string("m=") + std::to_string(m) + " v=" + std::to_string(v) +
                 " kind=" + ScheduleName(kind) + (built ? " (BuildSchedule)" : " (hand-written)"));
    ToyModel model(stages() * v, m);
    ToyStageModel stage_model(model, stage(), stages());
    PipelineExecutor executor(std::move(schedule), stage(), {activations_.get(), gradients_.get()},
                              /*record_timings=*/true);
    PipelineStepResult result = executor.Run(stage_model);
    const Reference ref = RunReference(stages(), v, m, stage());

    EXPECT_EQ(stage_model.forwards(), m * v);
    const bool holds_last = stage() == stages() - 1;
    EXPECT_EQ(result.losses.size(), holds_last ? static_cast<size_t>(m) : 0u);
    for (size_t i = 0; i < result.losses.size(); ++i) {
      EXPECT_TRUE(torch::equal(result.losses[i], ref.losses[i]))
          << "mb " << i << ": " << result.losses[i].item<float>() << " vs "
          << ref.losses[i].item<float>();
    }
    std::vector<torch::Tensor> params;
    for (int c = 0; c < v; ++c) {
      for (const auto& p : stage_model.ChunkParameters(c)) params.push_back(p);
    }
    EXPECT_EQ(params.size(), ref.grads.size());
    for (size_t i = 0; i < params.size() && i < ref.grads.size(); ++i) {
      EXPECT_TRUE(params[i].grad().defined()) << "param " << i;
      if (!params[i].grad().defined()) continue;
      EXPECT_TRUE(torch::allclose(params[i].grad(), ref.grads[i], 1e-6, 1e-6))
          << "param " << i << " max diff "
          << (params[i].grad() - ref.grads[i]).abs().max().item<double>();
    }
    // Timings: one per compute action, ordered, inside the step.
    int computes = 0;
    for (const Action& a : executor.schedule().stages[stage()]) {
      computes += a.type == ActionType::kForward || a.type == ActionType::kBackward ||
                  a.type == ActionType::kBackwardInput || a.type == ActionType::kBackwardWeight;
    }
    EXPECT_EQ(static_cast<int>(result.timings.size()), computes);
    for (size_t i = 0; i < result.timings.size(); ++i) {
      EXPECT_LE(result.timings[i].start, result.timings[i].end);
      if (i > 0) {
        EXPECT_LE(result.timings[i - 1].end, result.timings[i].start);
      }
    }
    EXPECT_GE(result.step_seconds, result.timings.empty() ? 0.0 : result.timings.back().end);
    return result;
  }

  std::unique_ptr<Communicator> activations_;
  std::unique_ptr<Communicator> gradients_;
};

TEST_F(PipelineExecutorTest, GPipeHoldsAllMicroBatches) {
  for (int m : {4, 8}) {
    const PipelineStepResult r = RunAndCompare(ScheduleKind::kGPipe, m, 1);
    EXPECT_EQ(r.max_in_flight, m);
  }
}

TEST_F(PipelineExecutorTest, OneFOneBHoldsAtMostItsBound) {
  for (int m : {4, 8}) {
    const PipelineStepResult r = RunAndCompare(ScheduleKind::kOneFOneB, m, 1);
    // 1F1B's bound: stage s holds at most pp - s micro-batches.
    EXPECT_EQ(r.max_in_flight, std::min(stages() - stage(), m));
  }
}

TEST_F(PipelineExecutorTest, ZeroBubbleH1MatchesReference) {
  for (int m : {4, 8}) RunAndCompare(ScheduleKind::kZeroBubbleH1, m, 1);
}

TEST_F(PipelineExecutorTest, InterleavedMatchesReference) {
  for (int m : {4, 8}) {
    if (m % stages() != 0) continue;
    const PipelineStepResult r = RunAndCompare(ScheduleKind::kInterleaved1F1B, m, 2);
    EXPECT_LE(r.max_in_flight, 2 * m);
  }
}

// The generators of schedule.h, every kind; 1F1B's in-flight count is the
// simulator's.
TEST_F(PipelineExecutorTest, BuiltSchedulesMatchReference) {
  for (int m : {4, 8}) {
    for (ScheduleKind kind : {ScheduleKind::kGPipe, ScheduleKind::kOneFOneB,
                              ScheduleKind::kZeroBubbleH1, ScheduleKind::kInterleaved1F1B}) {
      const int v = kind == ScheduleKind::kInterleaved1F1B ? 2 : 1;
      if (!CheckScheduleShape(kind, {stages(), m, v}).ok()) continue;
      const PipelineStepResult r = RunAndCompare(kind, m, v, /*built=*/true);
      auto schedule = BuildSchedule(kind, {stages(), m, v});
      ASSERT_TRUE(schedule.ok());
      auto sim = SimulateSchedule(*schedule);
      ASSERT_TRUE(sim.ok()) << sim.status();
      // In flight depends on the list order only: the simulator's count.
      EXPECT_EQ(r.max_in_flight, sim->stages[stage()].max_in_flight) << ScheduleName(kind);
    }
  }
}

TEST_F(PipelineExecutorTest, RunTwiceAccumulates) {
  // Two steps without zeroing: gradients double (the executor keeps nothing
  // between steps).
  const ScheduleShape shape{stages(), 4, 1};
  ToyModel model(stages(), 4);
  ToyStageModel stage_model(model, stage(), stages());
  PipelineExecutor executor(testing::TestSchedule(ScheduleKind::kOneFOneB, shape), stage(),
                            {activations_.get(), gradients_.get()});
  const PipelineStepResult first = executor.Run(stage_model);
  EXPECT_TRUE(first.timings.empty());
  const torch::Tensor once = stage_model.ChunkParameters(0).back().grad().clone();
  executor.Run(stage_model);
  EXPECT_TRUE(torch::allclose(stage_model.ChunkParameters(0).back().grad(), once * 2, 1e-6, 1e-6));
}

}  // namespace
}  // namespace fulcrum::parallel::pipeline
