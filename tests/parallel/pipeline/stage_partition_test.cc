// StagePartition: even and explicit splits, interleaving (the header's 8-layer
// example), the chunks of each stage with their first/last flags, and the
// messages of every bad input.
#include "parallel/pipeline/stage_partition.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/match.h"

namespace fulcrum::parallel::pipeline {
namespace {

#define EXPECT_CONTAINS(text, part)          \
  EXPECT_TRUE(absl::StrContains(text, part)) \
      << "message: " << (text) << "\nexpected part: " << (part)

void ExpectRange(const LayerRange& range, int64_t first, int64_t count) {
  EXPECT_EQ(range.first, first);
  EXPECT_EQ(range.count, count);
}

TEST(StagePartition, EvenSplit) {
  absl::StatusOr<StagePartition> p = StagePartition::Create(32, 4, 1);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->stages(), 4);
  EXPECT_EQ(p->virtual_stages(), 1);
  EXPECT_EQ(p->num_virtual_stages(), 4);
  EXPECT_EQ(p->num_layers(), 32);
  for (int vs = 0; vs < 4; ++vs) {
    ExpectRange(p->Layers(vs), 8 * vs, 8);
    EXPECT_EQ(p->StageOf(vs), vs);
    EXPECT_EQ(p->ChunkOf(vs), 0);
  }
}

TEST(StagePartition, SingleStageHoldsEverything) {
  absl::StatusOr<StagePartition> p = StagePartition::Create(5, 1, 1);
  ASSERT_TRUE(p.ok()) << p.status();
  const std::vector<StageChunk> chunks = p->ChunksOf(0);
  ASSERT_EQ(chunks.size(), 1u);
  ExpectRange(chunks[0].layers, 0, 5);
  EXPECT_TRUE(chunks[0].first);
  EXPECT_TRUE(chunks[0].last);
}

TEST(StagePartition, ExplicitList) {
  absl::StatusOr<StagePartition> p = StagePartition::Create(32, 4, 1, {7, 8, 8, 9});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->num_layers(), 32);
  ExpectRange(p->Layers(0), 0, 7);
  ExpectRange(p->Layers(1), 7, 8);
  ExpectRange(p->Layers(2), 15, 8);
  ExpectRange(p->Layers(3), 23, 9);
}

TEST(StagePartition, InterleavedEightLayers) {
  // The header's example: vs0 = 0-1 on stage 0 chunk 0, vs1 = 2-3 on stage 1
  // chunk 0, vs2 = 4-5 on stage 0 chunk 1, vs3 = 6-7 on stage 1 chunk 1.
  absl::StatusOr<StagePartition> p = StagePartition::Create(8, 2, 2);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->num_virtual_stages(), 4);
  const int stage_of[] = {0, 1, 0, 1};
  const int chunk_of[] = {0, 0, 1, 1};
  for (int vs = 0; vs < 4; ++vs) {
    ExpectRange(p->Layers(vs), 2 * vs, 2);
    EXPECT_EQ(p->StageOf(vs), stage_of[vs]) << "vs " << vs;
    EXPECT_EQ(p->ChunkOf(vs), chunk_of[vs]) << "vs " << vs;
  }
  const std::vector<StageChunk> stage0 = p->ChunksOf(0);
  ASSERT_EQ(stage0.size(), 2u);
  EXPECT_EQ(stage0[0].virtual_stage, 0);
  ExpectRange(stage0[0].layers, 0, 2);
  EXPECT_TRUE(stage0[0].first);
  EXPECT_FALSE(stage0[0].last);
  EXPECT_EQ(stage0[1].virtual_stage, 2);
  ExpectRange(stage0[1].layers, 4, 2);
  EXPECT_FALSE(stage0[1].first);
  EXPECT_FALSE(stage0[1].last);

  const std::vector<StageChunk> stage1 = p->ChunksOf(1);
  ASSERT_EQ(stage1.size(), 2u);
  EXPECT_EQ(stage1[0].virtual_stage, 1);
  ExpectRange(stage1[0].layers, 2, 2);
  EXPECT_FALSE(stage1[0].first);
  EXPECT_FALSE(stage1[0].last);
  EXPECT_EQ(stage1[1].virtual_stage, 3);
  ExpectRange(stage1[1].layers, 6, 2);
  EXPECT_FALSE(stage1[1].first);
  EXPECT_TRUE(stage1[1].last);
}

TEST(StagePartition, InterleavedExplicitListIsInVirtualStageOrder) {
  // pp 2 x virtual 2 over 10 layers: [1, 3, 3, 3] -> stage 0 holds vs0 (0) and
  // vs2 (4-6), stage 1 holds vs1 (1-3) and vs3 (7-9).
  absl::StatusOr<StagePartition> p = StagePartition::Create(10, 2, 2, {1, 3, 3, 3});
  ASSERT_TRUE(p.ok()) << p.status();
  const std::vector<StageChunk> stage0 = p->ChunksOf(0);
  ExpectRange(stage0[0].layers, 0, 1);
  ExpectRange(stage0[1].layers, 4, 3);
  const std::vector<StageChunk> stage1 = p->ChunksOf(1);
  ExpectRange(stage1[0].layers, 1, 3);
  ExpectRange(stage1[1].layers, 7, 3);
  EXPECT_TRUE(stage1[1].last);
}

TEST(StagePartition, FirstAndLastFlagsWithoutInterleaving) {
  absl::StatusOr<StagePartition> p = StagePartition::Create(12, 3, 1);
  ASSERT_TRUE(p.ok()) << p.status();
  for (int stage = 0; stage < 3; ++stage) {
    const std::vector<StageChunk> chunks = p->ChunksOf(stage);
    ASSERT_EQ(chunks.size(), 1u);
    EXPECT_EQ(chunks[0].virtual_stage, stage);
    EXPECT_EQ(chunks[0].first, stage == 0) << "stage " << stage;
    EXPECT_EQ(chunks[0].last, stage == 2) << "stage " << stage;
    ExpectRange(chunks[0].layers, 4 * stage, 4);
  }
}

struct ErrorCase {
  int64_t num_layers;
  int stages;
  int virtual_stages;
  std::vector<int64_t> counts;
  std::vector<std::string> parts;  // each must appear in the message
};

TEST(StagePartition, RejectsBadInputsWithTheArithmetic) {
  const std::vector<ErrorCase> cases = {
      {30, 4, 1, {}, {"parallel.pp:", "30 layers", "pp(4)", "30 % 4 = 2", "parallel.pp_layers"}},
      {12, 2, 4, {}, {"parallel.pp_virtual:", "pp(2) x pp_virtual(4) = 8", "12 % 8 = 4"}},
      {32, 4, 1, {7, 8, 8}, {"parallel.pp_layers: [7, 8, 8] has 3 entries", "= 4 needed"}},
      {32, 2, 2, {16, 16}, {"has 2 entries", "pp(2) x pp_virtual(2) = 4 needed"}},
      {32, 4, 1, {0, 8, 8, 16}, {"parallel.pp_layers", "entry 0 is 0", "at least one layer"}},
      {32, 4, 1, {8, -1, 9, 16}, {"entry 1 is -1"}},
      {32, 4, 1, {7, 8, 8, 8}, {"[7, 8, 8, 8] sums to 7 + 8 + 8 + 8 = 31", "has 32 layers"}},
      {32, 0, 1, {}, {"parallel.pp: must be >= 1, got 0"}},
      {32, 2, 0, {}, {"parallel.pp_virtual: must be >= 1, got 0"}},
      {0, 2, 1, {}, {"0 layers"}},
  };
  for (const ErrorCase& c : cases) {
    absl::StatusOr<StagePartition> p =
        StagePartition::Create(c.num_layers, c.stages, c.virtual_stages, c.counts);
    ASSERT_FALSE(p.ok()) << "layers " << c.num_layers << " pp " << c.stages;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    for (const std::string& part : c.parts)
      EXPECT_CONTAINS(std::string(p.status().message()), part);
  }
}

}  // namespace
}  // namespace fulcrum::parallel::pipeline
