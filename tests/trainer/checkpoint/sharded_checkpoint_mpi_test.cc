// Sharded checkpoints under mpirun (2, 3, 4 ranks): the CRC-32C, the region
// arithmetic that reshards, the per-rank files with their block checksums,
// and the collective save: every piece written once, spread over the ranks,
// readable by any other split, corruption found and named.
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/crc32c.h"
#include "parallel/runtime/world.h"
#include "tests/test_support.h"
#include "trainer/checkpoint/shard_file.h"
#include "trainer/checkpoint/shard_region.h"
#include "trainer/checkpoint/sharded_checkpoint.h"

namespace fulcrum::checkpoint {
namespace {

namespace fs = std::filesystem;

// A directory all ranks share: rank 0's scratch directory, broadcast.
std::string SharedScratch() {
  std::string dir = testing::MpiTestWorld().is_root() ? testing::ScratchDir() : std::string();
  return testing::MpiTestWorld().AllGatherStrings(dir).front();
}

// The elements of `region` of `full`, in region order.
torch::Tensor Cut(const torch::Tensor& full, const ShardRegion& region) {
  torch::Tensor box = full;
  for (size_t d = 0; d < region.offsets.size(); ++d) {
    box = box.narrow(static_cast<int64_t>(d), region.offsets[d], region.lengths[d]);
  }
  return box.contiguous().reshape({-1}).narrow(0, region.flat_begin, region.numel()).clone();
}

TEST(Crc32cTest, KnownValuesChainingAndBothImplementations) {
  const std::string digits = "123456789";
  EXPECT_EQ(Crc32c(digits.data(), digits.size()), 0xe3069283u);  // RFC 3720's check value
  EXPECT_EQ(Crc32cPortable(digits.data(), digits.size()), 0xe3069283u);
  EXPECT_EQ(Crc32c(digits.data() + 4, 5, Crc32c(digits.data(), 4)), 0xe3069283u);
  std::mt19937 random(7);
  std::vector<uint8_t> bytes(10007);
  for (uint8_t& b : bytes) b = static_cast<uint8_t>(random());
  for (size_t n : {0, 1, 7, 8, 9, 4096, 10007}) {
    EXPECT_EQ(Crc32c(bytes.data(), n), Crc32cPortable(bytes.data(), n)) << n;
  }
  const uint32_t before = Crc32c(bytes.data(), bytes.size());
  bytes[5000] ^= 0x10;
  EXPECT_NE(Crc32c(bytes.data(), bytes.size()), before);
}

TEST(ShardRegionTest, OverlapOfColumnAndRowSplits) {
  // [4, 6] split by columns (tp 2 along dim 1) read by rows (along dim 0).
  const ShardRegion right = ShardRegion::Box({0, 3}, {4, 3});
  const ShardRegion bottom = ShardRegion::Box({2, 0}, {2, 6});
  const std::vector<CopyRun> runs = OverlapRuns(right, bottom);
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].src, 6);  // row 2 of the right half
  EXPECT_EQ(runs[0].dst, 3);  // row 0 of the bottom, column 3
  EXPECT_EQ(runs[0].count, 3);
  EXPECT_EQ(runs[1].src, 9);
  EXPECT_EQ(runs[1].dst, 9);
  EXPECT_TRUE(OverlapRuns(ShardRegion::Box({0, 0}, {2, 3}), bottom).empty());
  // Whole rows of both merge into one run.
  const std::vector<CopyRun> merged =
      OverlapRuns(ShardRegion::Whole({4, 6}), ShardRegion::Box({1, 0}, {2, 6}));
  ASSERT_EQ(merged.size(), 1u);
  EXPECT_EQ(merged[0].src, 6);
  EXPECT_EQ(merged[0].count, 12);
  EXPECT_NE(ShardRegion::Box({3, 0}, {2, 6}).Invalid({4, 6}), "");
  // A scalar.
  EXPECT_EQ(OverlapRuns(ShardRegion::Whole({}), ShardRegion::Whole({})).size(), 1u);
}

// Random tilings (tp-like boxes, each cut into ZeRO-like flat segments) read
// back by random regions: every element lands where Cut puts it.
TEST(ShardRegionTest, RandomReshardsAssembleEveryRegion) {
  std::mt19937 random(11);
  for (int trial = 0; trial < 200; ++trial) {
    const std::vector<int64_t> shape = {1 + static_cast<int64_t>(random() % 6),
                                        1 + static_cast<int64_t>(random() % 7),
                                        1 + static_cast<int64_t>(random() % 5)};
    const torch::Tensor full = torch::arange(shape[0] * shape[1] * shape[2]).reshape(shape);
    // Saved: split one dim in two boxes, each box in up to 3 flat segments.
    const int64_t dim = static_cast<int64_t>(random() % 3);
    const int64_t cut = static_cast<int64_t>(random() % (shape[dim] + 1));
    std::vector<ShardRegion> saved;
    for (int half = 0; half < 2; ++half) {
      std::vector<int64_t> offsets(3, 0), lengths = shape;
      offsets[dim] = half == 0 ? 0 : cut;
      lengths[dim] = half == 0 ? cut : shape[dim] - cut;
      ShardRegion box = ShardRegion::Box(offsets, lengths);
      const int64_t n = box.box_numel();
      const int64_t a = n == 0 ? 0 : static_cast<int64_t>(random() % (n + 1));
      const int64_t b = a + (n - a == 0 ? 0 : static_cast<int64_t>(random() % (n - a + 1)));
      for (auto [lo, hi] : {std::pair{int64_t{0}, a}, {a, b}, {b, n}}) {
        ShardRegion piece = box;
        piece.flat_begin = lo;
        piece.flat_end = hi;
        saved.push_back(piece);
      }
    }
    // Wanted: a random box with a random flat range.
    std::vector<int64_t> offsets(3), lengths(3);
    for (int d = 0; d < 3; ++d) {
      offsets[d] = static_cast<int64_t>(random() % shape[d]);
      lengths[d] = 1 + static_cast<int64_t>(random() % (shape[d] - offsets[d]));
    }
    ShardRegion wanted = ShardRegion::Box(offsets, lengths);
    wanted.flat_begin = static_cast<int64_t>(random() % wanted.box_numel());
    torch::Tensor out = torch::full({wanted.numel()}, -1, torch::kLong);
    int64_t covered = 0;
    for (const ShardRegion& piece : saved) {
      const torch::Tensor stored = Cut(full, piece);
      for (const CopyRun& run : OverlapRuns(piece, wanted)) {
        out.narrow(0, run.dst, run.count).copy_(stored.narrow(0, run.src, run.count));
        covered += run.count;
      }
    }
    ASSERT_EQ(covered, wanted.numel()) << "trial " << trial;
    ASSERT_TRUE(torch::equal(out, Cut(full, wanted))) << "trial " << trial;
  }
}

TEST(ShardFileTest, RangedReadsVerifyTheBlocksTheyTouch) {
  if (!testing::MpiTestWorld().is_root()) return;  // files of one rank
  const std::string dir = testing::ScratchDir();
  const torch::Tensor big = torch::arange(64 * 1024, torch::kFloat).reshape({64, 1024});
  const torch::Tensor small = torch::arange(5, torch::kLong);
  auto info = WriteShardFile(dir, "r.safetensors", {{"big", big}, {"small", small}});
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->bytes, fs::file_size(dir + "/r.safetensors"));
  auto reader = ShardFileReader::Open(dir, *info);
  ASSERT_TRUE(reader.ok()) << reader.status();
  // Row 10 of big: 4 KiB, at most a block more on each side, and the
  // checksum table.
  torch::Tensor row = torch::empty({1024});
  ASSERT_TRUE((*reader)
                  ->Read({{info->offsets.at("big") + 10 * 4096, 0, 4096}},
                         static_cast<uint8_t*>(row.data_ptr()))
                  .ok());
  EXPECT_TRUE(torch::equal(row, big[10]));
  const uint64_t table = (info->bytes + kChecksumBlockBytes - 1) / kChecksumBlockBytes * 4;
  EXPECT_LE((*reader)->bytes_read(), table + 4096 + 2 * kChecksumBlockBytes);

  // One flipped bit far from row 10: row 10 still reads, row 50 names the file.
  {
    std::fstream f(dir + "/r.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(info->offsets.at("big") + 50 * 4096 + 100));
    char c = 0;
    f.read(&c, 1);
    f.seekp(static_cast<std::streamoff>(info->offsets.at("big") + 50 * 4096 + 100));
    c = static_cast<char>(c ^ 0x04);
    f.write(&c, 1);
  }
  auto again = ShardFileReader::Open(dir, *info);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE((*again)
                  ->Read({{info->offsets.at("big") + 10 * 4096, 0, 4096}},
                         static_cast<uint8_t*>(row.data_ptr()))
                  .ok());
  const absl::Status corrupt = (*again)->Read({{info->offsets.at("big") + 50 * 4096, 0, 4096}},
                                              static_cast<uint8_t*>(row.data_ptr()));
  EXPECT_EQ(corrupt.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(corrupt.message().find("r.safetensors: checksum mismatch"), std::string::npos)
      << corrupt;

  // Truncated: found at open, file named.
  fs::resize_file(dir + "/r.safetensors", info->bytes - 10);
  const auto truncated = ShardFileReader::Open(dir, *info);
  ASSERT_FALSE(truncated.ok());
  EXPECT_NE(truncated.status().message().find("r.safetensors"), std::string::npos);
  EXPECT_NE(truncated.status().message().find("truncated"), std::string::npos);
  fs::remove(dir + "/r.safetensors");
  EXPECT_FALSE(ShardFileReader::Open(dir, *info).ok());
}

TEST(PlanWritesTest, EachPieceOnceSpreadOverItsHolders) {
  const ShardRegion whole = ShardRegion::Whole({8});
  // Four replicas of four tensors: each rank writes one.
  std::vector<std::vector<PieceKey>> all(4);
  for (auto& keys : all) {
    for (const char* name : {"a", "b", "c", "d"}) keys.push_back({name, whole, 32});
  }
  std::multiset<std::string> written;
  for (int r = 0; r < 4; ++r) {
    const std::vector<bool> mine = PlanWrites(all, r);
    EXPECT_EQ(std::count(mine.begin(), mine.end(), true), 1) << "rank " << r;
    for (size_t i = 0; i < mine.size(); ++i) {
      if (mine[i]) written.insert(all[r][i].tensor);
    }
  }
  EXPECT_EQ(written, (std::multiset<std::string>{"a", "b", "c", "d"}));
}

// Each rank holds: a replicated tensor, its tp-like box of a [4n, 6] matrix,
// a ZeRO-like segment of a [5, 7] one, and a tensor of its own.
std::vector<LocalPiece> RankPieces(int rank, int size, int64_t step) {
  const torch::Tensor replicated = torch::arange(10, torch::kFloat) + step;
  const torch::Tensor matrix =
      torch::arange(4 * size * 6, torch::kFloat).reshape({4 * size, 6}) * (step + 1);
  const torch::Tensor moments = torch::arange(35, torch::kDouble).reshape({5, 7}) - step;
  std::vector<LocalPiece> pieces;
  pieces.push_back({"model/norm", {10}, ShardRegion::Whole({10}), replicated});
  const ShardRegion box = ShardRegion::Box({4 * rank, 0}, {4, 6});
  pieces.push_back({"model/matrix", {4 * size, 6}, box, Cut(matrix, box)});
  ShardRegion segment = ShardRegion::Whole({5, 7});
  segment.flat_begin = 35 * rank / size;
  segment.flat_end = 35 * (rank + 1) / size;
  pieces.push_back({"optimizer/exp_avg.matrix", {5, 7}, segment, Cut(moments, segment)});
  pieces.push_back({"rng/" + std::to_string(rank),
                    {3},
                    ShardRegion::Whole({3}),
                    torch::full({3}, rank, torch::kByte)});
  return pieces;
}

TEST(ShardedCheckpointTest, SaveWritesEachPieceOnceAndAnySplitReadsItBack) {
  const parallel::World& world = testing::MpiTestWorld();
  const int rank = world.rank(), size = world.size();
  const std::string root = SharedScratch() + "/ckpt";
  CheckpointHeader header;
  header.data_step = 3;
  header.world_size = size;
  header.mesh = {{"dp", size}};
  header.recipe_yaml = "seed: 1\n";
  // What a save killed earlier leaves behind goes with the next save.
  if (rank == 0) fs::create_directories(root + "/step-00000009.tmp");
  for (int64_t step : {1, 2, 3}) {
    header.step = step;
    header.optimizer_step = step;
    auto dir = SaveShardedCheckpoint(world, root, header, RankPieces(rank, size, step), {2, ""});
    ASSERT_TRUE(dir.ok()) << dir.status();
    EXPECT_EQ(dir->dir, root + "/step-0000000" + std::to_string(step));
    EXPECT_GT(dir->bytes, 0u);
  }
  // keep_last 2: steps 2 and 3; latest names step 3.
  EXPECT_FALSE(fs::exists(root + "/step-00000001"));
  EXPECT_TRUE(fs::exists(root + "/step-00000002"));
  EXPECT_EQ(testing::ReadFile(root + "/latest"), "step-00000003\n");
  EXPECT_FALSE(fs::exists(root + "/step-00000009.tmp"));
  auto resolved = ResolveCheckpoint(root, "latest");
  ASSERT_TRUE(resolved.ok());
  auto reader = ShardedCheckpointReader::Open(*resolved);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const CheckpointMetadata& m = (*reader)->metadata();
  EXPECT_EQ(m.header.step, 3);
  EXPECT_EQ(m.header.data_step, 3);
  EXPECT_EQ(m.header.recipe_yaml, "seed: 1\n");
  EXPECT_EQ(m.files.size(), static_cast<size_t>(size));
  // The replicated tensor is written once; the boxes and segments once each.
  EXPECT_EQ(m.tensors.at("model/norm").pieces.size(), 1u);
  EXPECT_EQ(m.tensors.at("model/matrix").pieces.size(), static_cast<size_t>(size));

  // Read under another split: rows by halves of columns, segments by thirds.
  const torch::Tensor matrix =
      torch::arange(4 * size * 6, torch::kFloat).reshape({4 * size, 6}) * 4;
  const ShardRegion columns = ShardRegion::Box({0, 3 * (rank % 2)}, {4 * size, 3});
  torch::Tensor got = torch::empty({columns.numel()});
  ASSERT_TRUE((*reader)->Read("model/matrix", columns, got).ok());
  EXPECT_TRUE(torch::equal(got, Cut(matrix, columns)));
  ShardRegion third = ShardRegion::Whole({5, 7});
  third.flat_begin = 10;
  third.flat_end = 30;
  torch::Tensor moments = torch::empty({20}, torch::kDouble);
  ASSERT_TRUE((*reader)->Read("optimizer/exp_avg.matrix", third, moments).ok());
  EXPECT_TRUE(
      torch::equal(moments, Cut(torch::arange(35, torch::kDouble).reshape({5, 7}) - 3, third)));
  auto norm = (*reader)->ReadWhole("model/norm");
  ASSERT_TRUE(norm.ok());
  EXPECT_TRUE(torch::equal(*norm, torch::arange(10, torch::kFloat) + 3));
  auto own = (*reader)->ReadWhole("rng/" + std::to_string(rank));
  ASSERT_TRUE(own.ok());
  EXPECT_EQ(own->sum().item<int64_t>(), 3 * rank);
  // Only what was asked for was read, give or take a block per run.
  EXPECT_LE((*reader)->bytes_read(),
            (*reader)->bytes_needed() + 4 * size * 2 * kChecksumBlockBytes);

  // Wrong questions: an unknown tensor, a wrong dtype, a region outside.
  EXPECT_EQ((*reader)->Read("model/nope", columns, got).code(), absl::StatusCode::kNotFound);
  torch::Tensor wrong = torch::empty({columns.numel()}, torch::kDouble);
  EXPECT_EQ((*reader)->Read("model/matrix", columns, wrong).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ((*reader)->Read("model/matrix", ShardRegion::Box({0, 4}, {1, 3}), got).code(),
            absl::StatusCode::kDataLoss);
  world.Barrier();
}

TEST(ShardedCheckpointTest, CorruptedOrMissingShardIsNamedAtLoad) {
  const parallel::World& world = testing::MpiTestWorld();
  const std::string root = SharedScratch() + "/ckpt";
  CheckpointHeader header;
  header.step = 7;
  header.world_size = world.size();
  auto dir =
      SaveShardedCheckpoint(world, root, header, RankPieces(world.rank(), world.size(), 7), {});
  ASSERT_TRUE(dir.ok()) << dir.status();
  world.Barrier();
  if (world.is_root()) {
    // Flip a byte of the last rank's file (its data, past the header).
    const std::string victim = dir->dir + "/rank-" +
                               std::string(5 - std::to_string(world.size() - 1).size(), '0') +
                               std::to_string(world.size() - 1) + ".safetensors";
    const auto size = fs::file_size(victim);
    std::fstream f(victim, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(size - 2));
    f.put('\x7f');
  }
  world.Barrier();
  auto reader = ShardedCheckpointReader::Open(dir->dir);
  ASSERT_TRUE(reader.ok());
  absl::Status status;
  for (const auto& [name, tensor] : (*reader)->metadata().tensors) {
    status.Update((*reader)->ReadWhole(name).status());
  }
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(status.message().find("rank-0000" + std::to_string(world.size() - 1) +
                                  ".safetensors: checksum mismatch"),
            std::string::npos)
      << status;
  world.Barrier();
  if (world.is_root()) fs::remove(dir->dir + "/rank-00000.safetensors");
  world.Barrier();
  auto again = ShardedCheckpointReader::Open(dir->dir);
  ASSERT_TRUE(again.ok());
  const auto missing = (*again)->ReadWhole("model/norm");
  // norm may live in any file; reading every tensor meets the missing one.
  absl::Status any = missing.status();
  for (const auto& [name, tensor] : (*again)->metadata().tensors) {
    any.Update((*again)->ReadWhole(name).status());
  }
  EXPECT_NE(any.message().find("rank-00000.safetensors: cannot open"), std::string::npos) << any;
  world.Barrier();
}

}  // namespace
}  // namespace fulcrum::checkpoint
