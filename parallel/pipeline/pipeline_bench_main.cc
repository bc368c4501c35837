// fulcrum_bench_pipeline: the measured bubble of every schedule next to its
// theory, and the activation memory each schedule holds
// (scripts/bench_pipeline.sh).
//
//   mpirun -np PP fulcrum_bench_pipeline [micro_batches] [steps]
//
// The world is one pipeline of PP stages. Each virtual stage is a stack of
// bias-free Linear(H, H) + tanh blocks on [rows, H] activations, so a
// forward, an input-gradient and a weight-gradient pass cost one GEMM each
// per block (F = B = W, the zero-bubble paper's assumption). For every
// schedule: one warm-up step, then `steps` measured steps. The step is the
// pipeline's: from the first stage's start to the last stage's end (the
// stages start together after a barrier; one machine's monotonic clock is
// shared). Per stage the bubble is 1 - (time inside compute actions) /
// (step time), from the executor's timestamps of each action, averaged over
// stages and steps. Next to it: the textbook theory
// (TheoreticalBubbleFraction; zb_h1's formula with this run's F, B, W) and
// the ideal, the simulated bubble of the same action lists with each stage's
// measured F, B, Bi, W of this run and free communication (the reference
// when costs are unequal: W > Bi on CPU, and the first stage has no input
// gradient: its input phase runs down to the first block's output, the
// split point, and its W also holds that block's backward).
// Activation memory: the most (micro-batch, chunk) activations a stage held
// at once, and the peak growth of the process heap (glibc mallinfo2) during
// the step over its start, the worst stage.
//
// glibc returns large freed blocks to the kernel, so every step would fault
// its activations in again, and more so the more a schedule holds (GPipe);
// the bench keeps freed memory in the process, as a caching allocator does
// on a GPU, so the compute times measure compute.
#include <malloc.h>
#include <mpi.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "core/check.h"
#include "parallel/comm/communicator_factory.h"
#include "parallel/pipeline/pipeline_executor.h"
#include "parallel/pipeline/schedule.h"
#include "parallel/pipeline/schedule_simulator.h"
#include "parallel/runtime/mpi_check.h"

namespace fulcrum::parallel::pipeline {
namespace {

constexpr int64_t kHidden = 512;
constexpr int64_t kRows = 1024;      // tokens per micro-batch
constexpr int kBlocksPerStage = 16;  // per pipeline stage (split over its chunks)

int64_t HeapInUse() {
  const struct mallinfo2 info = mallinfo2();
  return static_cast<int64_t>(info.uordblks + info.hblkhd);
}

// A stage of the synthetic model: `blocks` Linear + tanh blocks per chunk.
class BenchStage : public StageModel {
 public:
  BenchStage(int stage, int stages, int chunks, bool keep_split_points)
      : keep_split_points_(keep_split_points) {
    const int blocks = std::max(1, kBlocksPerStage / chunks);
    for (int c = 0; c < chunks; ++c) {
      std::vector<torch::Tensor> weights;
      for (int b = 0; b < blocks; ++b) {
        weights.push_back(
            (torch::randn({kHidden, kHidden}) / std::sqrt(static_cast<double>(kHidden)))
                .requires_grad_(true));
      }
      weights_.push_back(weights);
      last_.push_back(c * stages + stage == chunks * stages - 1);
      first_.push_back(c * stages + stage == 0);
    }
    input_ = torch::randn({kRows, kHidden});
  }

  torch::Tensor Forward(int chunk, int micro_batch, const torch::Tensor& input) override {
    const bool first = first_[static_cast<size_t>(chunk)];
    torch::Tensor h = first ? input_ : input;
    const std::vector<torch::Tensor>& weights = weights_[static_cast<size_t>(chunk)];
    for (size_t i = 0; i < weights.size(); ++i) {
      h = torch::tanh(torch::mm(h, weights[i]));
      // The first block plays the embedding: zb_h1's input phase on the
      // first stage runs down to its output.
      if (first && keep_split_points_ && i == 0) split_points_[micro_batch] = h;
    }
    peak_heap_ = std::max(peak_heap_, HeapInUse());
    if (last_[static_cast<size_t>(chunk)]) return h.pow(2).mean();
    return h;
  }
  std::vector<int64_t> ActivationShape(int, int) const override { return {kRows, kHidden}; }
  torch::TensorOptions ActivationOptions() const override {
    return torch::TensorOptions().dtype(torch::kFloat);
  }
  std::vector<torch::Tensor> ChunkParameters(int chunk) const override {
    return weights_[static_cast<size_t>(chunk)];
  }
  torch::Tensor TakeSplitPoint(int /*chunk*/, int micro_batch) override {
    auto it = split_points_.find(micro_batch);
    if (it == split_points_.end()) return torch::Tensor();
    torch::Tensor t = std::move(it->second);
    split_points_.erase(it);
    return t;
  }
  void ZeroGrads() {
    for (auto& chunk : weights_) {
      for (auto& w : chunk) w.mutable_grad() = torch::Tensor();
    }
  }
  void ResetPeak() { peak_heap_ = HeapInUse(); }
  int64_t peak_heap() const { return peak_heap_; }
  int blocks_per_chunk() const { return static_cast<int>(weights_.front().size()); }

 private:
  bool keep_split_points_;
  std::map<int, torch::Tensor> split_points_;  // by micro-batch, until taken
  std::vector<std::vector<torch::Tensor>> weights_;
  std::vector<bool> first_, last_;
  torch::Tensor input_;
  int64_t peak_heap_ = 0;
};

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double WorldReduce(double value, MPI_Op op) {
  double out = 0.0;
  FULCRUM_MPI_CHECK(MPI_Allreduce(&value, &out, 1, MPI_DOUBLE, op, MPI_COMM_WORLD));
  return out;
}

struct Measured {
  double bubble = 0.0;  // this stage's, mean over steps
  double forward = 0.0, backward = 0.0, backward_input = 0.0, backward_weight = 0.0;  // per block
  int max_in_flight = 0;                                                              // worst stage
  double peak_heap_mib = 0.0;  // worst stage, growth over the step's start
  double step_seconds = 0.0;   // the pipeline's
};

double Mean(const std::vector<double>& v) {
  double sum = 0.0;
  for (double x : v) sum += x;
  return v.empty() ? 0.0 : sum / static_cast<double>(v.size());
}

Measured Run(ScheduleKind kind, const ScheduleShape& shape, int stage, PipelineChannels channels,
             int steps) {
  absl::StatusOr<Schedule> schedule = BuildSchedule(kind, shape);
  FULCRUM_CHECK(schedule.ok(), schedule.status().ToString());
  PipelineExecutor executor(*schedule, stage, channels, /*record_timings=*/true);
  BenchStage model(stage, shape.stages, shape.virtual_stages,
                   /*keep_split_points=*/kind == ScheduleKind::kZeroBubbleH1);
  const double blocks = model.blocks_per_chunk();
  std::vector<double> bubbles, f, b, bi, w, step_times;
  int max_in_flight = 0;
  int64_t peak = 0;
  for (int s = 0; s <= steps; ++s) {
    model.ZeroGrads();
    FULCRUM_MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    const int64_t start_heap = HeapInUse();
    model.ResetPeak();
    const double begin = Now();
    const PipelineStepResult r = executor.Run(model);
    const double end = Now();
    const double step = WorldReduce(end, MPI_MAX) - WorldReduce(begin, MPI_MIN);
    if (s == 0) continue;  // warm-up
    double busy = 0.0;
    for (const ActionTiming& t : r.timings) {
      const double d = t.end - t.start;
      busy += d;  // the executor times compute actions only
      switch (t.action.type) {
        case ActionType::kForward:
          f.push_back(d / blocks);
          break;
        case ActionType::kBackward:
          b.push_back(d / blocks);
          break;
        case ActionType::kBackwardInput:
          bi.push_back(d / blocks);
          break;
        case ActionType::kBackwardWeight:
          w.push_back(d / blocks);
          break;
        default:
          break;
      }
    }
    if (std::getenv("FULCRUM_BENCH_TIMELINE") != nullptr && s == steps) {
      // The last step's actions of this stage, for seeing where idle time goes.
      std::string line = std::string(ScheduleName(kind)) + " stage " + std::to_string(stage) + ":";
      for (const ActionTiming& t : r.timings) {
        char buf[96];
        std::snprintf(buf, sizeof(buf), " %s[%.1f-%.1f]", ToString(t.action).c_str(), 1e3 * t.start,
                      1e3 * t.end);
        line += buf;
      }
      std::printf("%s (stage %.0f ms, pipeline %.0f ms)\n", line.c_str(), 1e3 * r.step_seconds,
                  1e3 * step);
    }
    bubbles.push_back(1.0 - busy / step);
    step_times.push_back(step);
    max_in_flight = std::max(max_in_flight, r.max_in_flight);
    peak = std::max(peak, model.peak_heap() - start_heap);
  }
  Measured m;
  m.bubble = Mean(bubbles);
  m.forward = Mean(f);
  m.backward = Mean(b);
  m.backward_input = Mean(bi);
  m.backward_weight = Mean(w);
  m.max_in_flight = max_in_flight;
  m.peak_heap_mib = static_cast<double>(peak) / (1 << 20);
  m.step_seconds = Mean(step_times);
  return m;
}

// The mean of `value` over the world's ranks (the stages).
double WorldMean(double value) {
  int size = 1;
  FULCRUM_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
  return WorldReduce(value, MPI_SUM) / size;
}

// Every stage's value, in stage order.
std::vector<double> WorldGather(double value) {
  int size = 1;
  FULCRUM_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
  std::vector<double> all(static_cast<size_t>(size));
  FULCRUM_MPI_CHECK(
      MPI_Allgather(&value, 1, MPI_DOUBLE, all.data(), 1, MPI_DOUBLE, MPI_COMM_WORLD));
  return all;
}

int Main(int argc, char** argv) {
  // Keep freed blocks (see the header comment): no mmap per tensor, no trim.
  FULCRUM_CHECK(mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1,
                "mallopt");
  const int micro_batches = argc > 1 ? std::atoi(argv[1]) : 8;
  const int steps = argc > 2 ? std::atoi(argv[2]) : 3;
  int rank = 0, size = 1;
  FULCRUM_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  FULCRUM_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
  torch::manual_seed(1 + rank);
  CommOptions options;
  auto activations = CreateCommunicator(CommBackend::kMpi, MPI_COMM_WORLD, "pp", options);
  auto gradients = CreateCommunicator(CommBackend::kMpi, MPI_COMM_WORLD, "pp_gradients", options);
  FULCRUM_CHECK(activations.ok() && gradients.ok(), "communicators");
  const PipelineChannels channels{activations->get(), gradients->get()};
  if (rank == 0) {
    std::printf(
        "fulcrum_bench_pipeline: pp %d, %d micro-batches of [%lld, %lld], %d Linear+tanh blocks "
        "per stage, %d measured steps\n",
        size, micro_batches, static_cast<long long>(kRows), static_cast<long long>(kHidden),
        kBlocksPerStage, steps);
    std::printf("%-18s %4s %9s %9s %8s %9s %8s %10s %13s %9s\n", "schedule", "v", "bubble",
                "theory", "ratio", "ideal", "ratio", "in_flight", "peak_act_MiB", "step_s");
  }
  struct Entry {
    ScheduleKind kind;
    int virtual_stages;
  };
  const Entry entries[] = {{ScheduleKind::kGPipe, 1},
                           {ScheduleKind::kOneFOneB, 1},
                           {ScheduleKind::kInterleaved1F1B, 2},
                           {ScheduleKind::kZeroBubbleH1, 1}};
  for (const Entry& e : entries) {
    ScheduleShape shape;
    shape.stages = size;
    shape.micro_batches = micro_batches;
    shape.virtual_stages = e.virtual_stages;
    if (!CheckScheduleShape(e.kind, shape).ok()) continue;
    const Measured m = Run(e.kind, shape, rank, channels, steps);
    // The theory (the closed forms; zb_h1's with this run's mean F, B and W,
    // the others do not depend on the costs) and the ideal of this schedule
    // for each stage's measured per-chunk costs, with free communication.
    const std::vector<double> f = WorldGather(m.forward), b = WorldGather(m.backward),
                              bi = WorldGather(m.backward_input),
                              w = WorldGather(m.backward_weight);
    ActionCosts mean;
    mean.forward = WorldMean(m.forward);
    mean.backward_input = WorldMean(m.backward_input);
    mean.backward_weight = WorldMean(m.backward_weight);
    const double theory = TheoreticalBubbleFraction(e.kind, shape, mean);
    const double chunk_blocks = std::max(1, kBlocksPerStage / e.virtual_stages);
    std::vector<ActionCosts> stage_costs(f.size());
    for (size_t st = 0; st < f.size(); ++st) {
      ActionCosts& c = stage_costs[st];
      c.forward = chunk_blocks * f[st];
      c.backward = chunk_blocks * (b[st] > 0 ? b[st] : bi[st] + w[st]);
      c.backward_input = chunk_blocks * (b[st] > 0 ? b[st] / 2 : bi[st]);
      c.backward_weight = chunk_blocks * (b[st] > 0 ? b[st] / 2 : w[st]);
    }
    absl::StatusOr<Schedule> schedule = BuildSchedule(e.kind, shape);
    absl::StatusOr<Simulation> ideal = SimulateSchedule(*schedule, stage_costs);
    FULCRUM_CHECK(ideal.ok(), ideal.status().ToString());
    const double bubble = WorldMean(m.bubble);
    const double in_flight = WorldReduce(m.max_in_flight, MPI_MAX);
    const double peak = WorldReduce(m.peak_heap_mib, MPI_MAX);
    const double step = m.step_seconds;
    if (rank == 0) {
      std::printf("%-18s %4d %9.4f %9.4f %8.2f %9.4f %8.2f %10.0f %13.1f %9.3f\n",
                  ScheduleName(e.kind), e.virtual_stages, bubble, theory,
                  theory > 0 ? bubble / theory : 0.0, ideal->bubble_fraction,
                  ideal->bubble_fraction > 0 ? bubble / ideal->bubble_fraction : 0.0, in_flight,
                  peak, step);
      for (size_t st = 0; st < f.size(); ++st) {
        std::printf("%-18s stage %zu costs per block (ms): F %.3f  B %.3f  Bi %.3f  W %.3f\n", "",
                    st, 1e3 * f[st], 1e3 * b[st], 1e3 * bi[st], 1e3 * w[st]);
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace fulcrum::parallel::pipeline

int main(int argc, char** argv) {
  FULCRUM_MPI_CHECK(MPI_Init(&argc, &argv));
  const int rc = fulcrum::parallel::pipeline::Main(argc, argv);
  FULCRUM_MPI_CHECK(MPI_Finalize());
  return rc;
}
