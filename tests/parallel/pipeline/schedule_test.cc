#include "parallel/pipeline/schedule.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <string>
#include <tuple>
#include <vector>

namespace fulcrum::parallel::pipeline {
namespace {

constexpr ScheduleKind kAllKinds[] = {ScheduleKind::kGPipe, ScheduleKind::kOneFOneB,
                                      ScheduleKind::kInterleaved1F1B, ScheduleKind::kZeroBubbleH1};

bool IsCompute(ActionType t) {
  return t == ActionType::kForward || t == ActionType::kBackward ||
         t == ActionType::kBackwardInput || t == ActionType::kBackwardWeight;
}

// Every valid shape with p in 1..6, m in 1..16 (and v in 2..3 for interleaved).
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

std::string Compact(const std::vector<Action>& actions) {
  std::string out;
  for (const Action& a : actions) out += (out.empty() ? "" : " ") + ToString(a);
  return out;
}

std::vector<Action> ComputeOnly(const std::vector<Action>& actions) {
  std::vector<Action> out;
  for (const Action& a : actions) {
    if (IsCompute(a.type)) out.push_back(a);
  }
  return out;
}

TEST(ScheduleKindTest, ParsesEveryNameAndRoundTrips) {
  for (ScheduleKind kind : kAllKinds) {
    absl::StatusOr<ScheduleKind> parsed = ParseScheduleKind(ScheduleName(kind));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, kind);
  }
  EXPECT_STREQ(ScheduleName(ScheduleKind::kInterleaved1F1B), "interleaved_1f1b");
}

TEST(ScheduleKindTest, BadNameListsTheValidOnes) {
  absl::StatusOr<ScheduleKind> parsed = ParseScheduleKind("1F1B-interleaved");
  ASSERT_FALSE(parsed.ok());
  const std::string message(parsed.status().message());
  EXPECT_NE(message.find("1F1B-interleaved"), std::string::npos) << message;
  for (const char* name : {"gpipe", "1f1b", "interleaved_1f1b", "zb_h1"}) {
    EXPECT_NE(message.find(name), std::string::npos) << message;
  }
}

TEST(ActionTest, ToStringAndEquality) {
  EXPECT_EQ(ToString({ActionType::kForward, 3, 1}), "F3.1");
  EXPECT_EQ(ToString({ActionType::kBackwardInput, 0, 0}), "Bi0.0");
  EXPECT_EQ(ToString({ActionType::kBackwardWeight, 2, 0}), "W2.0");
  EXPECT_EQ(ToString({ActionType::kSendGrad, 4, 2}), "SG4.2");
  EXPECT_EQ(ToString({ActionType::kRecvActivation, 1, 0}), "RA1.0");
  EXPECT_EQ((Action{ActionType::kForward, 1, 0}), (Action{ActionType::kForward, 1, 0}));
  EXPECT_NE((Action{ActionType::kForward, 1, 0}), (Action{ActionType::kForward, 1, 1}));
  EXPECT_NE((Action{ActionType::kForward, 1, 0}), (Action{ActionType::kBackward, 1, 0}));
}

TEST(CheckScheduleShapeTest, AcceptsValidShapes) {
  EXPECT_TRUE(CheckScheduleShape(ScheduleKind::kGPipe, {4, 2, 1}).ok());
  EXPECT_TRUE(CheckScheduleShape(ScheduleKind::kOneFOneB, {4, 4, 1}).ok());
  EXPECT_TRUE(CheckScheduleShape(ScheduleKind::kInterleaved1F1B, {4, 8, 2}).ok());
  EXPECT_TRUE(CheckScheduleShape(ScheduleKind::kZeroBubbleH1, {4, 5, 1}).ok());
}

TEST(CheckScheduleShapeTest, RejectsWhatTheScheduleCannotRun) {
  struct Case {
    ScheduleKind kind;
    ScheduleShape shape;
    std::vector<std::string> words;  // each must appear in the message
  };
  const std::vector<Case> cases = {
      {ScheduleKind::kInterleaved1F1B, {4, 6, 2}, {"interleaved_1f1b", "6 % 4 = 2"}},
      {ScheduleKind::kInterleaved1F1B, {4, 8, 1}, {"parallel.pp_virtual >= 2"}},
      {ScheduleKind::kInterleaved1F1B, {4, 2, 2}, {"2 < parallel.pp (4)"}},
      {ScheduleKind::kOneFOneB, {4, 3, 1}, {"1f1b", "3 < parallel.pp (4)"}},
      {ScheduleKind::kZeroBubbleH1, {3, 2, 1}, {"zb_h1", "2 < parallel.pp (3)"}},
      {ScheduleKind::kOneFOneB, {2, 4, 2}, {"1f1b", "parallel.pp_virtual is 2"}},
      {ScheduleKind::kZeroBubbleH1, {2, 4, 2}, {"zb_h1", "parallel.pp_virtual is 2"}},
      {ScheduleKind::kGPipe, {0, 4, 1}, {"must all be >= 1"}},
      {ScheduleKind::kOneFOneB, {2, 0, 1}, {"must all be >= 1"}},
  };
  for (const Case& c : cases) {
    absl::Status status = CheckScheduleShape(c.kind, c.shape);
    ASSERT_FALSE(status.ok()) << ScheduleName(c.kind) << " p" << c.shape.stages;
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    for (const std::string& word : c.words) {
      EXPECT_NE(status.message().find(word), std::string::npos) << status.message();
    }
    EXPECT_FALSE(BuildSchedule(c.kind, c.shape).ok());
  }
  // GPipe has no warm-up to fill, so fewer micro-batches than stages is fine.
  EXPECT_TRUE(CheckScheduleShape(ScheduleKind::kGPipe, {4, 1, 1}).ok());
}

TEST(GeneratorTest, GPipeRunsAllForwardsThenAllBackwards) {
  absl::StatusOr<Schedule> s = BuildSchedule(ScheduleKind::kGPipe, {2, 3, 1});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(Compact(s->stages[0]),
            "F0.0 SA0.0 F1.0 SA1.0 RG0.0 F2.0 SA2.0 RG1.0 B0.0 RG2.0 B1.0 B2.0");
  EXPECT_EQ(Compact(s->stages[1]),
            "RA0.0 RA1.0 F0.0 RA2.0 F1.0 F2.0 B0.0 SG0.0 B1.0 SG1.0 B2.0 SG2.0");
}

// Virtual stages: every micro-batch through chunk 0, then chunk 1; stage 0's
// chunk 1 receives what stage 1's chunk 0 sends, and backwards run from the
// last chunk down.
TEST(GeneratorTest, GPipeLoopsChunksBreadthFirst) {
  absl::StatusOr<Schedule> s = BuildSchedule(ScheduleKind::kGPipe, {2, 2, 2});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(Compact(ComputeOnly(s->stages[0])), "F0.0 F1.0 F0.1 F1.1 B0.1 B1.1 B0.0 B1.0");
  EXPECT_EQ(Compact(ComputeOnly(s->stages[1])), "F0.0 F1.0 F0.1 F1.1 B0.1 B1.1 B0.0 B1.0");
}

TEST(GeneratorTest, OneFOneBWarmsUpThenAlternates) {
  absl::StatusOr<Schedule> s = BuildSchedule(ScheduleKind::kOneFOneB, {3, 4, 1});
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(Compact(ComputeOnly(s->stages[0])), "F0.0 F1.0 F2.0 B0.0 F3.0 B1.0 B2.0 B3.0");
  EXPECT_EQ(Compact(ComputeOnly(s->stages[1])), "F0.0 F1.0 B0.0 F2.0 B1.0 F3.0 B2.0 B3.0");
  EXPECT_EQ(Compact(ComputeOnly(s->stages[2])), "F0.0 B0.0 F1.0 B1.0 F2.0 B2.0 F3.0 B3.0");
  // Communication: the middle stage receives, computes, sends.
  EXPECT_EQ(Compact(s->stages[1]),
            "RA0.0 RA1.0 F0.0 SA0.0 RG0.0 F1.0 SA1.0 RA2.0 B0.0 SG0.0 RG1.0 F2.0 SA2.0 RA3.0 B1.0 "
            "SG1.0 RG2.0 F3.0 SA3.0 RG3.0 B2.0 SG2.0 B3.0 SG3.0");
}

TEST(GeneratorTest, InterleavedFollowsMegatronsVirtualMicroSteps) {
  absl::StatusOr<Schedule> s = BuildSchedule(ScheduleKind::kInterleaved1F1B, {2, 4, 2});
  ASSERT_TRUE(s.ok()) << s.status();
  // Forward micro-steps: (mb 0, 1) on chunk 0, (0, 1) on chunk 1, (2, 3) on
  // chunk 0, (2, 3) on chunk 1; backwards the same with chunks reversed.
  // Stage 0 warms up (2-0-1)*2 + (2-1)*2 = 4 forward micro-steps.
  EXPECT_EQ(Compact(ComputeOnly(s->stages[0])),
            "F0.0 F1.0 F0.1 F1.1 F2.0 B0.1 F3.0 B1.1 F2.1 B0.0 F3.1 B1.0 B2.1 B3.1 B2.0 B3.0");
  // Stage 1 warms up 2.
  EXPECT_EQ(Compact(ComputeOnly(s->stages[1])),
            "F0.0 F1.0 F0.1 B0.1 F1.1 B1.1 F2.0 B0.0 F3.0 B1.0 F2.1 B2.1 F3.1 B3.1 B2.0 B3.0");
}

TEST(GeneratorTest, ZeroBubbleH1DefersStageSWeightPasses) {
  absl::StatusOr<Schedule> s = BuildSchedule(ScheduleKind::kZeroBubbleH1, {3, 4, 1});
  ASSERT_TRUE(s.ok()) << s.status();
  // Stage s: 1F1B's warm-up, then W of micro-batch j after Bi of j + s.
  EXPECT_EQ(Compact(ComputeOnly(s->stages[0])),
            "F0.0 F1.0 F2.0 Bi0.0 W0.0 F3.0 Bi1.0 W1.0 Bi2.0 W2.0 Bi3.0 W3.0");
  EXPECT_EQ(Compact(ComputeOnly(s->stages[1])),
            "F0.0 F1.0 Bi0.0 F2.0 Bi1.0 W0.0 F3.0 Bi2.0 W1.0 Bi3.0 W2.0 W3.0");
  EXPECT_EQ(Compact(ComputeOnly(s->stages[2])),
            "F0.0 Bi0.0 F1.0 Bi1.0 F2.0 Bi2.0 W0.0 F3.0 Bi3.0 W1.0 W2.0 W3.0");
  // The weight pass sends nothing; Bi sends the input gradient.
  EXPECT_EQ(Compact(s->stages[1]),
            "RA0.0 RA1.0 F0.0 SA0.0 RG0.0 F1.0 SA1.0 RA2.0 Bi0.0 SG0.0 RG1.0 F2.0 SA2.0 Bi1.0 "
            "SG1.0 RA3.0 W0.0 RG2.0 F3.0 SA3.0 Bi2.0 SG2.0 RG3.0 W1.0 Bi3.0 SG3.0 W2.0 W3.0");
}

// For every kind and shape: each (micro-batch, chunk) is forwarded once and
// backed once (whole, or Bi then W) after its forward, on every stage.
TEST(GeneratorTest, EveryForwardPrecedesItsBackwardOnEveryStage) {
  for (ScheduleKind kind : kAllKinds) {
    const std::vector<ScheduleShape> shapes = ValidShapes(kind);
    ASSERT_FALSE(shapes.empty());
    for (const ScheduleShape& shape : shapes) {
      absl::StatusOr<Schedule> s = BuildSchedule(kind, shape);
      ASSERT_TRUE(s.ok()) << s.status();
      ASSERT_EQ(static_cast<int>(s->stages.size()), shape.stages);
      for (int stage = 0; stage < shape.stages; ++stage) {
        // (mb, chunk) -> the position of its F, B/Bi and W.
        std::map<std::pair<int, int>, std::vector<int>> seen;
        const std::vector<Action> compute = ComputeOnly(s->stages[stage]);
        for (int i = 0; i < static_cast<int>(compute.size()); ++i) {
          const Action& a = compute[i];
          std::vector<int>& pos = seen[{a.micro_batch, a.chunk}];
          pos.resize(3, -1);
          const int slot = a.type == ActionType::kForward          ? 0
                           : a.type == ActionType::kBackwardWeight ? 2
                                                                   : 1;
          ASSERT_EQ(pos[slot], -1) << ToString(a) << " twice on stage " << stage;
          pos[slot] = i;
        }
        const std::string where =
            std::string(ScheduleName(kind)) + " p" + std::to_string(shape.stages) + " m" +
            std::to_string(shape.micro_batches) + " stage " + std::to_string(stage);
        ASSERT_EQ(static_cast<int>(seen.size()), shape.micro_batches * shape.virtual_stages)
            << where;
        for (const auto& [key, pos] : seen) {
          EXPECT_GE(pos[0], 0) << where;
          EXPECT_GT(pos[1], pos[0]) << where << " mb " << key.first;
          if (kind == ScheduleKind::kZeroBubbleH1) {
            EXPECT_GT(pos[2], pos[1]) << where << " mb " << key.first;
          } else {
            EXPECT_EQ(pos[2], -1) << where;
          }
        }
      }
    }
  }
}

// AddCommunication's placement: a send right after its compute, a receive one
// compute ahead of its consumer (first in the list for compute 0).
TEST(AddCommunicationTest, ReceivesOneComputeAheadSendsRightAfter) {
  for (ScheduleKind kind : kAllKinds) {
    for (const ScheduleShape& shape : ValidShapes(kind)) {
      absl::StatusOr<Schedule> s = BuildSchedule(kind, shape);
      ASSERT_TRUE(s.ok()) << s.status();
      for (int stage = 0; stage < shape.stages; ++stage) {
        const std::vector<Action>& list = s->stages[stage];
        for (size_t i = 0; i < list.size(); ++i) {
          const Action& a = list[i];
          if (a.type == ActionType::kSendActivation || a.type == ActionType::kSendGrad) {
            // Walk back over other sends to the producing compute.
            size_t j = i;
            while (j > 0 && !IsCompute(list[j - 1].type)) --j;
            ASSERT_GT(j, 0u) << ToString(a);
            const Action& producer = list[j - 1];
            EXPECT_EQ(producer.micro_batch, a.micro_batch);
            EXPECT_EQ(producer.chunk, a.chunk);
            EXPECT_EQ(producer.type == ActionType::kForward, a.type == ActionType::kSendActivation);
          } else if (a.type == ActionType::kRecvActivation || a.type == ActionType::kRecvGrad) {
            // Posted before compute max(c - 1, 0), c the consumer's compute index.
            int computes_before = 0;
            for (size_t j = 0; j < i; ++j) computes_before += IsCompute(list[j].type);
            const bool activation = a.type == ActionType::kRecvActivation;
            int c = 0;
            bool found = false;
            for (const Action& b : list) {
              if (!IsCompute(b.type)) continue;
              const bool consumes = activation ? b.type == ActionType::kForward
                                               : (b.type == ActionType::kBackward ||
                                                  b.type == ActionType::kBackwardInput);
              if (consumes && b.micro_batch == a.micro_batch && b.chunk == a.chunk) {
                found = true;
                break;
              }
              ++c;
            }
            ASSERT_TRUE(found) << ToString(a);
            EXPECT_EQ(computes_before, std::max(c - 1, 0)) << ToString(a);
          }
        }
      }
    }
  }
}

TEST(AddCommunicationTest, EndsOfThePipelineNeitherReceiveNorSendOutward) {
  // 3 stages x 2 chunks: stage 0 chunk 0 is the first virtual stage and stage 2
  // chunk 1 the last; stage 2 chunk 0 sends to stage 0 chunk 1 (the wrap).
  absl::StatusOr<Schedule> s = BuildSchedule(ScheduleKind::kInterleaved1F1B, {3, 3, 2});
  ASSERT_TRUE(s.ok()) << s.status();
  for (const Action& a : s->stages[0]) {
    EXPECT_FALSE(a.type == ActionType::kRecvActivation && a.chunk == 0) << ToString(a);
    EXPECT_FALSE(a.type == ActionType::kSendGrad && a.chunk == 0) << ToString(a);
  }
  int wrap_sends = 0;
  for (const Action& a : s->stages[2]) {
    EXPECT_FALSE(a.type == ActionType::kSendActivation && a.chunk == 1) << ToString(a);
    EXPECT_FALSE(a.type == ActionType::kRecvGrad && a.chunk == 1) << ToString(a);
    wrap_sends += a.type == ActionType::kSendActivation && a.chunk == 0;
  }
  EXPECT_EQ(wrap_sends, 3);
  // A single stage without chunks talks to nobody.
  absl::StatusOr<Schedule> one = BuildSchedule(ScheduleKind::kOneFOneB, {1, 3, 1});
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(Compact(one->stages[0]), "F0.0 B0.0 F1.0 B1.0 F2.0 B2.0");
}

}  // namespace
}  // namespace fulcrum::parallel::pipeline
