#include "parallel/pipeline/schedule_simulator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

namespace fulcrum::parallel::pipeline {
namespace {

constexpr ScheduleKind kAllKinds[] = {ScheduleKind::kGPipe, ScheduleKind::kOneFOneB,
                                      ScheduleKind::kInterleaved1F1B, ScheduleKind::kZeroBubbleH1};

// Unit forward, input-gradient and weight passes; a whole backward is both.
constexpr ActionCosts kUnitCosts{1.0, 2.0, 1.0, 1.0};

std::vector<ScheduleShape> ValidShapes(ScheduleKind kind) {
  std::vector<ScheduleShape> shapes;
  for (int p = 1; p <= 6; ++p) {
    for (int m = 1; m <= 16; ++m) {
      for (int v = 1; v <= 3; ++v) {
        ScheduleShape shape{p, m, v};
        if (CheckScheduleShape(kind, shape).ok()) shapes.push_back(shape);
      }
    }
  }
  return shapes;
}

std::string Name(ScheduleKind kind, const ScheduleShape& shape) {
  return std::string(ScheduleName(kind)) + " p" + std::to_string(shape.stages) + " m" +
         std::to_string(shape.micro_batches) + " v" + std::to_string(shape.virtual_stages);
}

Simulation MustSimulate(ScheduleKind kind, const ScheduleShape& shape,
                        const ActionCosts& costs = kUnitCosts) {
  absl::StatusOr<Schedule> schedule = BuildSchedule(kind, shape);
  EXPECT_TRUE(schedule.ok()) << Name(kind, shape) << ": " << schedule.status();
  if (!schedule.ok()) return {};
  absl::StatusOr<Simulation> sim = SimulateSchedule(*schedule, costs);
  EXPECT_TRUE(sim.ok()) << Name(kind, shape) << ": " << sim.status();
  return sim.ok() ? *sim : Simulation{};
}

std::string SimulationError(const Schedule& schedule) {
  absl::StatusOr<Simulation> sim = SimulateSchedule(schedule, kUnitCosts);
  EXPECT_FALSE(sim.ok());
  return sim.ok() ? "" : std::string(sim.status().message());
}

Schedule Built(ScheduleKind kind, const ScheduleShape& shape) {
  absl::StatusOr<Schedule> schedule = BuildSchedule(kind, shape);
  EXPECT_TRUE(schedule.ok()) << schedule.status();
  return schedule.ok() ? *schedule : Schedule{};
}

void Erase(std::vector<Action>& list, const Action& action) {
  auto it = std::find(list.begin(), list.end(), action);
  ASSERT_NE(it, list.end()) << ToString(action);
  list.erase(it);
}

void Swap(std::vector<Action>& list, const Action& a, const Action& b) {
  auto ia = std::find(list.begin(), list.end(), a);
  auto ib = std::find(list.begin(), list.end(), b);
  ASSERT_NE(ia, list.end());
  ASSERT_NE(ib, list.end());
  std::iter_swap(ia, ib);
}

TEST(SimulateScheduleTest, EveryKindAndShapeRunsToTheEnd) {
  for (ScheduleKind kind : kAllKinds) {
    const std::vector<ScheduleShape> shapes = ValidShapes(kind);
    ASSERT_GT(shapes.size(), 10u) << ScheduleName(kind);
    for (const ScheduleShape& shape : shapes) {
      const Simulation sim = MustSimulate(kind, shape);
      ASSERT_EQ(static_cast<int>(sim.stages.size()), shape.stages) << Name(kind, shape);
      const double per_micro_batch = 3.0 * shape.virtual_stages;  // F + B (or Bi + W)
      for (const SimulatedStage& stage : sim.stages) {
        EXPECT_DOUBLE_EQ(stage.busy, per_micro_batch * shape.micro_batches) << Name(kind, shape);
        // One stage runs one compute at a time.
        for (size_t i = 1; i < stage.compute.size(); ++i) {
          EXPECT_GE(stage.compute[i].start, stage.compute[i - 1].end) << Name(kind, shape);
        }
      }
    }
  }
}

// Each schedule's bound on micro-batch chunks held (forward done, activations
// not yet released), per stage s.
TEST(SimulateScheduleTest, InFlightBounds) {
  for (ScheduleKind kind : kAllKinds) {
    for (const ScheduleShape& shape : ValidShapes(kind)) {
      const Simulation sim = MustSimulate(kind, shape);
      const int p = shape.stages;
      const int m = shape.micro_batches;
      const int v = shape.virtual_stages;
      for (int s = 0; s < p; ++s) {
        const int in_flight = sim.stages[s].max_in_flight;
        switch (kind) {
          case ScheduleKind::kGPipe:
            EXPECT_EQ(in_flight, m * v) << Name(kind, shape);
            break;
          case ScheduleKind::kOneFOneB:
            EXPECT_EQ(in_flight, std::min(p - s, m)) << Name(kind, shape) << " stage " << s;
            EXPECT_LE(in_flight, p);
            break;
          case ScheduleKind::kInterleaved1F1B:
            // Megatron's: warm-up (p-s-1)*2 + (v-1)*p forward micro-steps
            // plus the steady state's one, at most all m*v.
            EXPECT_EQ(in_flight, std::min((p - s - 1) * 2 + (v - 1) * p + 1, m * v))
                << Name(kind, shape) << " stage " << s;
            break;
          case ScheduleKind::kZeroBubbleH1:
            // 1F1B's bound of stage 0 on every stage: the deferred W's keep
            // later stages' activations up to p.
            EXPECT_LE(in_flight, p) << Name(kind, shape) << " stage " << s;
            EXPECT_GE(in_flight, std::min(p - s, m)) << Name(kind, shape) << " stage " << s;
            break;
        }
      }
      if (kind == ScheduleKind::kZeroBubbleH1) {
        EXPECT_EQ(sim.stages[p - 1].max_in_flight, p);
      }
    }
  }
}

TEST(SimulateScheduleTest, UnitCostBubbleEqualsTheory) {
  for (ScheduleKind kind :
       {ScheduleKind::kGPipe, ScheduleKind::kOneFOneB, ScheduleKind::kZeroBubbleH1}) {
    for (const ScheduleShape& shape : ValidShapes(kind)) {
      const Simulation sim = MustSimulate(kind, shape);
      EXPECT_NEAR(sim.bubble_fraction, TheoreticalBubbleFraction(kind, shape, kUnitCosts), 1e-12)
          << Name(kind, shape);
      // The makespans behind it: (m+p-1)(F+B), for gpipe over v chunks
      // ((v-1) max(m, p) + m+p-1)(F+B), and (p-1)(F+B-W) + m(F+B+W).
      const double p = shape.stages;
      const double m = shape.micro_batches;
      const double v = shape.virtual_stages;
      const double expected = kind == ScheduleKind::kZeroBubbleH1
                                  ? (p - 1) + 3 * m
                                  : 3 * ((v - 1) * std::max(m, p) + m + p - 1);
      EXPECT_DOUBLE_EQ(sim.makespan, expected) << Name(kind, shape);
    }
  }
}

// GPipe's and 1F1B's bubble does not depend on the F : B ratio.
TEST(SimulateScheduleTest, OneFOneBBubbleHoldsForOtherCosts) {
  const ActionCosts costs{0.5, 1.75, 1.0, 0.75};
  for (ScheduleKind kind : {ScheduleKind::kGPipe, ScheduleKind::kOneFOneB}) {
    for (const ScheduleShape& shape : ValidShapes(kind)) {
      const Simulation sim = MustSimulate(kind, shape, costs);
      EXPECT_NEAR(sim.bubble_fraction, TheoreticalBubbleFraction(kind, shape, costs), 1e-12)
          << Name(kind, shape);
    }
  }
}

// With F = 1, B = 2 per chunk, no schedule can beat (p-1)/(v m + p-1): every
// stage does v m (F+B) work; the last stage cannot start before p-1 forwards
// ran ahead of it, and after its last backward p-1 more backwards must run on
// the stages before it, so makespan >= v m (F+B) + (p-1)(F+B). The simulated
// interleaved schedule reaches that bound exactly for every shape tested.
TEST(SimulateScheduleTest, InterleavedBubbleReachesItsLowerBound) {
  for (const ScheduleShape& shape : ValidShapes(ScheduleKind::kInterleaved1F1B)) {
    const Simulation sim = MustSimulate(ScheduleKind::kInterleaved1F1B, shape);
    const double theory =
        TheoreticalBubbleFraction(ScheduleKind::kInterleaved1F1B, shape, kUnitCosts);
    EXPECT_GE(sim.bubble_fraction, theory - 1e-12) << Name(ScheduleKind::kInterleaved1F1B, shape);
    EXPECT_NEAR(sim.bubble_fraction, theory, 1e-12) << Name(ScheduleKind::kInterleaved1F1B, shape);
    // And below plain 1F1B's for the same stages and micro-batches.
    if (shape.stages > 1) {
      ScheduleShape flat = shape;
      flat.virtual_stages = 1;
      EXPECT_LT(sim.bubble_fraction,
                TheoreticalBubbleFraction(ScheduleKind::kOneFOneB, flat, kUnitCosts));
    }
  }
}

TEST(SimulateScheduleTest, ZeroBubbleH1BubbleIsBelowOneFOneB) {
  for (const ScheduleShape& shape : ValidShapes(ScheduleKind::kZeroBubbleH1)) {
    if (shape.stages == 1) continue;  // no bubble to shrink
    const double zb = MustSimulate(ScheduleKind::kZeroBubbleH1, shape).bubble_fraction;
    const double one_f_one_b = MustSimulate(ScheduleKind::kOneFOneB, shape).bubble_fraction;
    EXPECT_LT(zb, one_f_one_b) << Name(ScheduleKind::kZeroBubbleH1, shape);
    // Idle time is a third of 1F1B's: (p-1) vs 3(p-1) units.
    const double m = shape.micro_batches;
    const double p = shape.stages;
    EXPECT_NEAR(zb * (3 * m + p - 1), (one_f_one_b * (3 * m + 3 * (p - 1))) / 3, 1e-9);
  }
}

TEST(SimulateScheduleTest, TimingOfASmallOneFOneB) {
  // p = 2, m = 2, F = 1, B = 2: stage 1 runs F0 [1,2] B0 [2,4] F1 [4,5] B1 [5,7];
  // stage 0 runs F0 [0,1] F1 [1,2] B0 [4,6] B1 [7,9].
  const Simulation sim = MustSimulate(ScheduleKind::kOneFOneB, {2, 2, 1});
  EXPECT_DOUBLE_EQ(sim.makespan, 9.0);
  ASSERT_EQ(sim.stages[0].compute.size(), 4u);
  EXPECT_EQ(sim.stages[0].compute[2].action, (Action{ActionType::kBackward, 0, 0}));
  EXPECT_DOUBLE_EQ(sim.stages[0].compute[2].start, 4.0);
  EXPECT_DOUBLE_EQ(sim.stages[0].compute[3].start, 7.0);
  EXPECT_DOUBLE_EQ(sim.stages[1].compute[2].start, 4.0);
  EXPECT_DOUBLE_EQ(sim.stages[0].busy, 6.0);
  EXPECT_NEAR(sim.bubble_fraction, 3.0 / 9.0, 1e-12);
}

TEST(TheoreticalBubbleFractionTest, ClosedForms) {
  EXPECT_DOUBLE_EQ(TheoreticalBubbleFraction(ScheduleKind::kOneFOneB, {4, 8, 1}), 3.0 / 11.0);
  EXPECT_DOUBLE_EQ(TheoreticalBubbleFraction(ScheduleKind::kGPipe, {4, 8, 1}), 3.0 / 11.0);
  // Looped over 2 chunks: with m >= p interleaving's (p-1)/(vm+p-1); with
  // m < p each round waits for micro-batch 0 to wrap round: 1 - 4/(4+2+4-1).
  EXPECT_DOUBLE_EQ(TheoreticalBubbleFraction(ScheduleKind::kGPipe, {4, 8, 2}), 3.0 / 19.0);
  EXPECT_DOUBLE_EQ(TheoreticalBubbleFraction(ScheduleKind::kGPipe, {4, 2, 2}), 1.0 - 4.0 / 9.0);
  EXPECT_DOUBLE_EQ(TheoreticalBubbleFraction(ScheduleKind::kInterleaved1F1B, {4, 8, 2}),
                   3.0 / 19.0);
  // (p-1)(F+B-W) / (m(F+B+W) + (p-1)(F+B-W)) with F=1, B=1, W=1: 3 / 27.
  EXPECT_DOUBLE_EQ(TheoreticalBubbleFraction(ScheduleKind::kZeroBubbleH1, {4, 8, 1}), 3.0 / 27.0);
  const ActionCosts uneven{1.0, 3.0, 2.0, 1.0};
  EXPECT_DOUBLE_EQ(TheoreticalBubbleFraction(ScheduleKind::kZeroBubbleH1, {3, 4, 1}, uneven),
                   4.0 / 20.0);
  EXPECT_DOUBLE_EQ(TheoreticalBubbleFraction(ScheduleKind::kOneFOneB, {1, 4, 1}), 0.0);
}

// ---- Broken schedules are rejected, naming the stage and the action. ----

TEST(SimulateScheduleErrorsTest, BackwardBeforeItsForward) {
  Schedule s = Built(ScheduleKind::kOneFOneB, {2, 2, 1});
  Swap(s.stages[1], {ActionType::kForward, 0, 0}, {ActionType::kBackward, 0, 0});
  const std::string message = SimulationError(s);
  EXPECT_NE(message.find("stage 1 action 1 (B0.0)"), std::string::npos) << message;
  EXPECT_NE(message.find("before its forward"), std::string::npos) << message;
}

TEST(SimulateScheduleErrorsTest, SwappedReceivesMismatchTheFifoOrder) {
  Schedule s = Built(ScheduleKind::kOneFOneB, {2, 2, 1});
  // Stage 1 posts micro-batch 1's receive first: it pairs with stage 0's
  // first send, micro-batch 0's activation.
  Swap(s.stages[1], {ActionType::kRecvActivation, 0, 0}, {ActionType::kRecvActivation, 1, 0});
  const std::string message = SimulationError(s);
  EXPECT_NE(message.find("activation channel from stage 0 to stage 1"), std::string::npos)
      << message;
  EXPECT_NE(message.find("stage 0 action 1 (SA0.0)"), std::string::npos) << message;
  EXPECT_NE(message.find("stage 1 action 0 (RA1.0)"), std::string::npos) << message;
}

TEST(SimulateScheduleErrorsTest, SwappedSendsMismatchTheFifoOrder) {
  // GPipe stage 0 sends SA0 SA1 after F1; swapping them sends 1 before 0.
  Schedule s = Built(ScheduleKind::kGPipe, {2, 2, 1});
  std::vector<Action>& list = s.stages[0];
  Erase(list, {ActionType::kSendActivation, 0, 0});
  const auto it = std::find(list.begin(), list.end(), Action{ActionType::kSendActivation, 1, 0});
  list.insert(it + 1, Action{ActionType::kSendActivation, 0, 0});
  const std::string message = SimulationError(s);
  EXPECT_NE(message.find("SA1.0"), std::string::npos) << message;
  EXPECT_NE(message.find("stage 1 action 0 (RA0.0)"), std::string::npos) << message;
  EXPECT_NE(message.find("micro-batch 1 for virtual stage 1"), std::string::npos) << message;
}

TEST(SimulateScheduleErrorsTest, MissingReceive) {
  Schedule s = Built(ScheduleKind::kOneFOneB, {2, 2, 1});
  Erase(s.stages[1], {ActionType::kRecvActivation, 1, 0});
  const std::string message = SimulationError(s);
  EXPECT_NE(message.find("stage 1"), std::string::npos) << message;
  EXPECT_NE(message.find("(F1.0)"), std::string::npos) << message;
  EXPECT_NE(message.find("no RA1.0 was posted"), std::string::npos) << message;
}

TEST(SimulateScheduleErrorsTest, DeadlockNamesEveryStuckStage) {
  // Stage 0 waits for micro-batch 0's gradient before sending its activation;
  // stage 1 waits for that activation before it can produce the gradient.
  Schedule s;
  s.kind = ScheduleKind::kOneFOneB;
  s.shape = {2, 1, 1};
  s.stages = {
      {{ActionType::kForward, 0, 0},
       {ActionType::kRecvGrad, 0, 0},
       {ActionType::kBackward, 0, 0},
       {ActionType::kSendActivation, 0, 0}},
      {{ActionType::kRecvActivation, 0, 0},
       {ActionType::kForward, 0, 0},
       {ActionType::kBackward, 0, 0},
       {ActionType::kSendGrad, 0, 0}},
  };
  const std::string message = SimulationError(s);
  EXPECT_NE(message.find("deadlock"), std::string::npos) << message;
  EXPECT_NE(message.find("stage 0 action 2 (B0.0) waits for the gradient from stage 1"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("stage 1 action 1 (F0.0) waits for the activation from stage 0"),
            std::string::npos)
      << message;
}

TEST(SimulateScheduleErrorsTest, SendNeverMadeLeavesTheReceiverStuck) {
  Schedule s = Built(ScheduleKind::kOneFOneB, {2, 2, 1});
  Erase(s.stages[1], {ActionType::kSendGrad, 1, 0});
  const std::string message = SimulationError(s);
  EXPECT_NE(message.find("(B1.0) waits for the gradient from stage 1"), std::string::npos)
      << message;
  EXPECT_NE(message.find("stage 1 finished"), std::string::npos) << message;
}

TEST(SimulateScheduleErrorsTest, UnmatchedSendAndUnusedReceive) {
  // Micro-batch 1 dropped from stage 1 and its backward from stage 0: stage
  // 0's activation send of it is left unmatched.
  Schedule unmatched = Built(ScheduleKind::kGPipe, {2, 2, 1});
  Erase(unmatched.stages[1], {ActionType::kForward, 1, 0});
  Erase(unmatched.stages[1], {ActionType::kBackward, 1, 0});
  Erase(unmatched.stages[1], {ActionType::kSendGrad, 1, 0});
  Erase(unmatched.stages[0], {ActionType::kRecvGrad, 1, 0});
  Erase(unmatched.stages[0], {ActionType::kBackward, 1, 0});
  Erase(unmatched.stages[1], {ActionType::kRecvActivation, 1, 0});
  const std::string message = SimulationError(unmatched);
  EXPECT_NE(message.find("stage 0"), std::string::npos) << message;
  EXPECT_NE(message.find("SA1.0"), std::string::npos) << message;
  EXPECT_NE(message.find("no matching receive"), std::string::npos) << message;
  // A posted receive that no compute uses: the forward it fed is gone.
  Schedule unused = Built(ScheduleKind::kGPipe, {2, 2, 1});
  for (ActionType t : {ActionType::kForward, ActionType::kBackward, ActionType::kSendGrad}) {
    Erase(unused.stages[1], {t, 1, 0});
  }
  Erase(unused.stages[0], {ActionType::kRecvGrad, 1, 0});
  Erase(unused.stages[0], {ActionType::kBackward, 1, 0});
  const std::string unused_message = SimulationError(unused);
  EXPECT_NE(unused_message.find("stage 1: the activation received for micro-batch 1 chunk 0 "
                                "is used by no compute"),
            std::string::npos)
      << unused_message;
}

TEST(SimulateScheduleErrorsTest, WeightPassRules) {
  Schedule s = Built(ScheduleKind::kZeroBubbleH1, {2, 2, 1});
  Swap(s.stages[0], {ActionType::kBackwardInput, 0, 0}, {ActionType::kBackwardWeight, 0, 0});
  std::string message = SimulationError(s);
  EXPECT_NE(message.find("stage 0"), std::string::npos) << message;
  EXPECT_NE(message.find("(W0.0)"), std::string::npos) << message;
  EXPECT_NE(message.find("before its input-gradient pass"), std::string::npos) << message;
  Schedule missing = Built(ScheduleKind::kZeroBubbleH1, {2, 2, 1});
  Erase(missing.stages[1], {ActionType::kBackwardWeight, 1, 0});
  message = SimulationError(missing);
  EXPECT_NE(message.find("stage 1: F1.0 has no W1.0"), std::string::npos) << message;
}

TEST(SimulateScheduleErrorsTest, MissingBackwardAndBadIndices) {
  Schedule s = Built(ScheduleKind::kGPipe, {1, 2, 1});
  Erase(s.stages[0], {ActionType::kBackward, 1, 0});
  std::string message = SimulationError(s);
  EXPECT_NE(message.find("stage 0: F1.0 has no B1.0"), std::string::npos) << message;

  Schedule bad = Built(ScheduleKind::kGPipe, {1, 2, 1});
  bad.stages[0].push_back({ActionType::kForward, 5, 0});
  message = SimulationError(bad);
  EXPECT_NE(message.find("stage 0 action 4 (F5.0)"), std::string::npos) << message;
  EXPECT_NE(message.find("out of range"), std::string::npos) << message;

  Schedule first = Built(ScheduleKind::kGPipe, {2, 1, 1});
  first.stages[0].insert(first.stages[0].begin(), Action{ActionType::kRecvActivation, 0, 0});
  message = SimulationError(first);
  EXPECT_NE(message.find("stage 0 action 0 (RA0.0)"), std::string::npos) << message;
  EXPECT_NE(message.find("no previous stage"), std::string::npos) << message;

  Schedule lists = Built(ScheduleKind::kGPipe, {2, 1, 1});
  lists.stages.pop_back();
  EXPECT_FALSE(SimulateSchedule(lists).ok());
}

// ---- An ASCII chart of each schedule at pp = 4, m = 8 (for the docs). ----

// One column per time unit: the action's letter and micro-batch (lower case
// on chunk 1 of the interleaved schedule), "." when idle.
std::string Chart(const Simulation& sim) {
  std::string out;
  for (size_t s = 0; s < sim.stages.size(); ++s) {
    std::string row(static_cast<size_t>(sim.makespan) * 2, '.');
    for (const SimulatedAction& a : sim.stages[s].compute) {
      char letter = 'F';
      if (a.action.type == ActionType::kBackward || a.action.type == ActionType::kBackwardInput) {
        letter = 'B';
      } else if (a.action.type == ActionType::kBackwardWeight) {
        letter = 'W';
      }
      if (a.action.chunk % 2 == 1) letter = static_cast<char>(std::tolower(letter));
      for (int t = static_cast<int>(a.start); t < static_cast<int>(a.end); ++t) {
        row[2 * t] = letter;
        row[2 * t + 1] = static_cast<char>('0' + a.action.micro_batch % 10);
      }
    }
    out += "stage " + std::to_string(s) + " |" + row + "|\n";
  }
  return out;
}

// Stages with their own costs: GPipe p2 m4 where the second stage is twice as
// slow. Stage 1 forwards at 1..9 (each waits for stage 0's forward, then for
// its own previous one), backs 9..25; stage 0's backward i waits for stage
// 1's: 13, 17, 21, 25, each 2 long, so the pipeline ends at 27.
TEST(SimulateScheduleTest, PerStageCosts) {
  const Schedule schedule = Built(ScheduleKind::kGPipe, {2, 4, 1});
  const ActionCosts slow{2.0, 4.0, 2.0, 2.0};
  absl::StatusOr<Simulation> sim = SimulateSchedule(schedule, {kUnitCosts, slow});
  ASSERT_TRUE(sim.ok()) << sim.status();
  EXPECT_DOUBLE_EQ(sim->makespan, 27.0);
  EXPECT_DOUBLE_EQ(sim->stages[0].busy, 12.0);
  EXPECT_DOUBLE_EQ(sim->stages[1].busy, 24.0);
  EXPECT_DOUBLE_EQ(sim->bubble_fraction, ((27.0 - 12.0) / 27.0 + (27.0 - 24.0) / 27.0) / 2);

  // Equal per-stage costs are the uniform simulation.
  absl::StatusOr<Simulation> uniform = SimulateSchedule(schedule, kUnitCosts);
  absl::StatusOr<Simulation> listed = SimulateSchedule(schedule, {kUnitCosts, kUnitCosts});
  ASSERT_TRUE(uniform.ok() && listed.ok());
  EXPECT_DOUBLE_EQ(uniform->makespan, listed->makespan);

  absl::StatusOr<Simulation> wrong = SimulateSchedule(schedule, std::vector<ActionCosts>{slow});
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(std::string(wrong.status().message()).find("costs for 1 stages"), std::string::npos)
      << wrong.status();
}

TEST(ScheduleChartTest, PrintsEachKindAtPp4M8) {
  for (ScheduleKind kind : kAllKinds) {
    const ScheduleShape shape{4, 8, kind == ScheduleKind::kInterleaved1F1B ? 2 : 1};
    const Simulation sim = MustSimulate(kind, shape);
    const std::string chart = Chart(sim);
    std::cout << Name(kind, shape) << " (F=1, B=2 or Bi=1 + W=1; bubble " << sim.bubble_fraction
              << ", theory " << TheoreticalBubbleFraction(kind, shape, kUnitCosts) << ")\n"
              << chart << "\n";
    EXPECT_EQ(std::count(chart.begin(), chart.end(), '\n'), 4);
    EXPECT_EQ(chart.find("stage 0 |F0"), 0u) << chart;
  }
}

}  // namespace
}  // namespace fulcrum::parallel::pipeline
