#include "data/dataset/loader.h"

#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "data/dataset/prefetching_loader.h"
#include "data/dataset/sampler.h"
#include "tests/test_support.h"

namespace fulcrum::data {
namespace {

using Ids = std::vector<int64_t>;

// 13 samples of lengths 1..7 with distinct ids (id = 100 * sample + token),
// some with a masked prompt, 49 tokens in all.
std::vector<Sample> MakeSamples() {
  std::vector<Sample> samples;
  for (int64_t s = 0; s < 13; ++s) {
    Sample sample;
    const int64_t length = 1 + s % 7;
    for (int64_t t = 0; t < length; ++t) {
      sample.input_ids.push_back(100 * s + t);
      sample.labels.push_back(s % 3 == 0 && t < 2 ? kIgnoreIndex : 100 * s + t);
    }
    samples.push_back(sample);
  }
  return samples;
}

LoaderOptions Options(int64_t global_batch, int64_t micro_batch, int64_t dp_rank, int64_t dp_size) {
  LoaderOptions options;
  options.global_batch = global_batch;
  options.micro_batch = micro_batch;
  options.seq_len = 8;
  options.seed = 99;
  options.dp_rank = dp_rank;
  options.dp_size = dp_size;
  return options;
}

DataLoader MakeLoader(const LoaderOptions& options) {
  auto loader = DataLoader::Create(MakeSamples(), options);
  EXPECT_TRUE(loader.ok()) << loader.status();
  return *std::move(loader);
}

// All rows of a step on this rank, in order, as [rows, seq_len] tensors.
torch::Tensor Cat(const StepBatch& batch, torch::Tensor MicroBatch::*field) {
  std::vector<torch::Tensor> parts;
  for (const MicroBatch& mb : batch.micro_batches) parts.push_back(mb.*field);
  return torch::cat(parts, 0);
}

void ExpectSameBatch(const StepBatch& a, const StepBatch& b) {
  ASSERT_EQ(a.micro_batches.size(), b.micro_batches.size());
  EXPECT_EQ(a.global_num_targets, b.global_num_targets);
  EXPECT_EQ(a.epoch, b.epoch);
  for (size_t m = 0; m < a.micro_batches.size(); ++m) {
    const MicroBatch& x = a.micro_batches[m];
    const MicroBatch& y = b.micro_batches[m];
    EXPECT_TRUE(torch::equal(x.input_ids, y.input_ids));
    EXPECT_TRUE(torch::equal(x.labels, y.labels));
    EXPECT_TRUE(torch::equal(x.attention_mask, y.attention_mask));
    EXPECT_TRUE(torch::equal(x.position_ids, y.position_ids));
    EXPECT_TRUE(torch::equal(x.document_ids, y.document_ids));
    EXPECT_EQ(x.num_targets, y.num_targets);
  }
}

TEST(DataLoaderTest, RejectsBadOptionsWithTheArithmetic) {
  const auto expect_error = [](const LoaderOptions& options, const std::string& what) {
    auto loader = DataLoader::Create(MakeSamples(), options);
    ASSERT_FALSE(loader.ok());
    EXPECT_EQ(loader.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(loader.status().message().find(what), std::string::npos) << loader.status();
  };
  expect_error(Options(6, 2, 0, 2),
               "global_batch (6) must be divisible by micro_batch (2) x "
               "dp_size (2) = 4");
  expect_error(Options(0, 1, 0, 1), "must be positive");
  expect_error(Options(4, 0, 0, 1), "must be positive");
  expect_error(Options(4, 1, 0, 0), "must be positive");
  expect_error(Options(4, 1, 2, 2), "dp_rank 2 is outside [0, dp_size 2)");
  expect_error(Options(4, 1, -1, 2), "dp_rank -1");
  LoaderOptions short_rows = Options(4, 1, 0, 1);
  short_rows.seq_len = 1;
  expect_error(short_rows, "seq_len must be >= 2");

  EXPECT_FALSE(DataLoader::Create({}, Options(4, 1, 0, 1)).ok());
  EXPECT_FALSE(DataLoader::Create({Sample{{1, 2}, {1}, 3}}, Options(4, 1, 0, 1)).ok());
  EXPECT_FALSE(DataLoader::Create({Sample{{}, {}, 3}}, Options(4, 1, 0, 1)).ok());
}

TEST(DataLoaderTest, MicroBatchShapesAndTargetCounts) {
  DataLoader loader = MakeLoader(Options(4, 2, 0, 1));
  EXPECT_EQ(loader.rows_per_epoch(), 7);  // ceil(49 / 8)
  EXPECT_EQ(loader.grad_accumulation(), 2);
  const StepBatch batch = loader.Next();
  EXPECT_EQ(loader.step(), 1);
  ASSERT_EQ(batch.micro_batches.size(), 2u);
  int64_t targets = 0;
  for (const MicroBatch& mb : batch.micro_batches) {
    for (const torch::Tensor& t :
         {mb.input_ids, mb.labels, mb.attention_mask, mb.position_ids, mb.document_ids}) {
      EXPECT_EQ(t.sizes(), (std::vector<int64_t>{2, 8}));
      EXPECT_EQ(t.scalar_type(), torch::kInt64);
    }
    const int64_t expected = mb.labels.slice(1, 1).ne(kIgnoreIndex).sum().item<int64_t>();
    EXPECT_EQ(mb.num_targets, expected);
    EXPECT_GT(mb.num_targets, 0);
    targets += mb.num_targets;
  }
  // With one rank the global batch is this rank's batch.
  EXPECT_EQ(batch.global_num_targets, targets);
}

TEST(DataLoaderTest, StepRowsAreTheEpochRowsInOrder) {
  const std::vector<Sample> samples = MakeSamples();
  LoaderOptions options = Options(4, 1, 0, 1);
  DataLoader loader = MakeLoader(options);
  const std::vector<Row> epoch0 = BuildRows(samples, ShuffledOrder(13, 99, 0), {8, true});
  const std::vector<Row> epoch1 = BuildRows(samples, ShuffledOrder(13, 99, 1), {8, true});
  ASSERT_EQ(epoch0.size(), 7u);
  // Step 1 = global rows 4..7: epoch 0 rows 4, 5, 6 then epoch 1 row 0 (rollover).
  loader.SetStep(1);
  const StepBatch batch = loader.Next();
  EXPECT_EQ(batch.epoch, 0);
  const std::vector<const Row*> expected = {&epoch0[4], &epoch0[5], &epoch0[6], &epoch1[0]};
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(Ids(batch.micro_batches[i].input_ids.data_ptr<int64_t>(),
                  batch.micro_batches[i].input_ids.data_ptr<int64_t>() + 8),
              expected[i]->input_ids)
        << i;
    EXPECT_EQ(Ids(batch.micro_batches[i].document_ids.data_ptr<int64_t>(),
                  batch.micro_batches[i].document_ids.data_ptr<int64_t>() + 8),
              expected[i]->document_ids)
        << i;
  }
  // Step 2 = global rows 8..11 = epoch 1 rows 1..4.
  EXPECT_EQ(loader.Next().epoch, 1);
}

TEST(DataLoaderTest, EpochsAreReshuffledOrRepeated) {
  // global_batch 7 = rows_per_epoch: step e is exactly epoch e.
  for (const bool shuffle : {true, false}) {
    LoaderOptions options = Options(7, 7, 0, 1);
    options.shuffle = shuffle;
    DataLoader loader = MakeLoader(options);
    const StepBatch e0 = loader.Next();
    const StepBatch e1 = loader.Next();
    EXPECT_EQ(e0.epoch, 0);
    EXPECT_EQ(e1.epoch, 1);
    const torch::Tensor a = e0.micro_batches[0].input_ids;
    const torch::Tensor b = e1.micro_batches[0].input_ids;
    EXPECT_EQ(torch::equal(a, b), !shuffle);
    // Same tokens either way: each epoch covers every sample once.
    EXPECT_TRUE(torch::equal(std::get<0>(a.flatten().sort()), std::get<0>(b.flatten().sort())));
    EXPECT_EQ(a.ne(0).sum().item<int64_t>(), 49 - 1);  // every token but id 0 (sample 0, token 0)
  }
}

TEST(DataLoaderTest, UnionOfDpRanksEqualsSingleRank) {
  for (int64_t step = 0; step < 5; ++step) {
    DataLoader single = MakeLoader(Options(4, 1, 0, 1));
    single.SetStep(step);
    const StepBatch reference = single.Next();
    std::vector<StepBatch> ranks;
    for (int64_t rank = 0; rank < 2; ++rank) {
      DataLoader loader = MakeLoader(Options(4, 2, rank, 2));
      loader.SetStep(step);
      ranks.push_back(loader.Next());
      ASSERT_EQ(ranks.back().micro_batches.size(), 1u);
      EXPECT_EQ(ranks.back().global_num_targets, reference.global_num_targets);
      EXPECT_EQ(ranks.back().epoch, reference.epoch);
    }
    for (torch::Tensor MicroBatch::*field :
         {&MicroBatch::input_ids, &MicroBatch::labels, &MicroBatch::attention_mask,
          &MicroBatch::position_ids, &MicroBatch::document_ids}) {
      const torch::Tensor both = torch::cat({Cat(ranks[0], field), Cat(ranks[1], field)}, 0);
      EXPECT_TRUE(torch::equal(both, Cat(reference, field))) << "step " << step;
    }
    EXPECT_EQ(ranks[0].micro_batches[0].num_targets + ranks[1].micro_batches[0].num_targets,
              reference.global_num_targets);
  }
}

TEST(DataLoaderTest, SetStepResumesIdentically) {
  DataLoader uninterrupted = MakeLoader(Options(4, 2, 1, 2));
  std::vector<StepBatch> expected;
  for (int i = 0; i < 6; ++i) expected.push_back(uninterrupted.Next());
  DataLoader resumed = MakeLoader(Options(4, 2, 1, 2));
  resumed.SetStep(3);
  for (int i = 3; i < 6; ++i) ExpectSameBatch(resumed.Next(), expected[i]);
  // Going back works too (the cache holds another epoch by now).
  resumed.SetStep(0);
  ExpectSameBatch(resumed.Next(), expected[0]);
  EXPECT_EQ(resumed.step(), 1);
}

// One step ahead on a background thread, the same batches in the same order
// across epochs; step() and SetStep() as DataLoader's, so checkpoints record
// the same data position; `prepare` sees each batch before it is handed out.
TEST(PrefetchingLoaderTest, SameBatchesStepsAndResume) {
  DataLoader plain = MakeLoader(Options(4, 2, 1, 2));
  std::vector<StepBatch> expected;
  for (int i = 0; i < 12; ++i) expected.push_back(plain.Next());  // several epochs
  int prepared = 0;
  PrefetchingLoader prefetching(MakeLoader(Options(4, 2, 1, 2)), [&](StepBatch& batch) {
    ++prepared;
    batch.micro_batches[0].input_ids = batch.micro_batches[0].input_ids.clone();
  });
  EXPECT_EQ(prefetching.step(), 0);
  for (int i = 0; i < 7; ++i) {
    ExpectSameBatch(prefetching.Next(), expected[i]);
    EXPECT_EQ(prefetching.step(), i + 1);
  }
  prefetching.SetStep(3);  // drops the prefetched step 7
  EXPECT_EQ(prefetching.step(), 3);
  for (int i = 3; i < 12; ++i) ExpectSameBatch(prefetching.Next(), expected[i]);
  EXPECT_EQ(prefetching.step(), 12);
  EXPECT_GE(prepared, 16);  // every batch handed out, and the prefetched ones
  EXPECT_EQ(prefetching.rows_per_epoch(), plain.rows_per_epoch());
}

TEST(DataLoaderTest, NoPackRowsAreSamples) {
  LoaderOptions options = Options(13, 13, 0, 1);
  options.pack = false;
  options.shuffle = false;
  options.seq_len = 4;
  DataLoader loader = MakeLoader(options);
  EXPECT_EQ(loader.rows_per_epoch(), 13);
  const MicroBatch mb = loader.Next().micro_batches[0];
  // Sample 6 (7 tokens) truncated to 4; sample 1 (2 tokens) padded.
  EXPECT_TRUE(torch::equal(mb.input_ids[6], torch::tensor({600, 601, 602, 603}, torch::kInt64)));
  EXPECT_TRUE(torch::equal(mb.attention_mask[1], torch::tensor({1, 1, 0, 0}, torch::kInt64)));
  EXPECT_TRUE(torch::equal(mb.labels[3], torch::tensor({-100, -100, 302, 303}, torch::kInt64)));
}

TEST(DataLoaderTest, GlobalBatchLargerThanAnEpoch) {
  LoaderOptions options = Options(16, 4, 0, 1);  // 16 rows > 7 rows per epoch
  DataLoader loader = MakeLoader(options);
  const StepBatch s0 = loader.Next();
  const StepBatch s1 = loader.Next();
  EXPECT_EQ(s0.epoch, 0);
  EXPECT_EQ(s1.epoch, 2);  // first row 16 = epoch 2, row 2
  EXPECT_EQ(s0.micro_batches.size(), 4u);
  EXPECT_GT(s1.global_num_targets, 0);
}

// Reads an I64 tensor from a safetensors file: u64 header length, JSON header,
// then the raw little-endian data (enough for the fixture; the real reader is
// trainer/checkpoint's).
torch::Tensor ReadI64(const std::string& file, const std::string& name) {
  const std::string bytes = testing::ReadFile(file);
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), sizeof(header_size));
  const nlohmann::json header = nlohmann::json::parse(bytes.substr(8, header_size));
  const nlohmann::json& entry = header.at(name);
  EXPECT_EQ(entry.at("dtype"), "I64");
  const auto shape = entry.at("shape").get<std::vector<int64_t>>();
  const auto offsets = entry.at("data_offsets").get<std::vector<size_t>>();
  torch::Tensor tensor = torch::empty(shape, torch::kInt64);
  EXPECT_EQ(offsets[1] - offsets[0], static_cast<size_t>(tensor.numel()) * sizeof(int64_t));
  std::memcpy(tensor.data_ptr<int64_t>(), bytes.data() + 8 + header_size + offsets[0],
              offsets[1] - offsets[0]);
  return tensor;
}

// The HF parity fixture's batch follows the same conventions as the loader:
// pad id 0 with attention_mask 0, labels = input_ids (unshifted) with -100 on
// padding, 15 + 10 = 25 shifted targets.
TEST(DataLoaderTest, NoPackBatchMatchesTheHfFixtureBatch) {
  const std::string file = testing::FixturesDir() + "/batch.safetensors";
  const torch::Tensor input_ids = ReadI64(file, "input_ids");  // [2, 16]
  const torch::Tensor attention_mask = ReadI64(file, "attention_mask");
  const torch::Tensor labels = ReadI64(file, "labels");
  ASSERT_EQ(input_ids.sizes(), (std::vector<int64_t>{2, 16}));
  std::vector<Sample> samples;
  for (int64_t r = 0; r < 2; ++r) {
    const int64_t length = attention_mask[r].sum().item<int64_t>();
    const int64_t* ids = input_ids[r].contiguous().data_ptr<int64_t>();
    samples.push_back(Sample{Ids(ids, ids + length), Ids(ids, ids + length), r + 1});
  }
  ASSERT_EQ(samples[1].input_ids.size(), 11u);
  LoaderOptions options = Options(2, 2, 0, 1);
  options.seq_len = 16;
  options.pack = false;
  options.shuffle = false;
  auto loader = DataLoader::Create(samples, options);
  ASSERT_TRUE(loader.ok()) << loader.status();
  const StepBatch batch = loader->Next();
  const MicroBatch& mb = batch.micro_batches.at(0);
  EXPECT_TRUE(torch::equal(mb.input_ids, input_ids));
  EXPECT_TRUE(torch::equal(mb.attention_mask, attention_mask));
  EXPECT_TRUE(torch::equal(mb.labels, labels));
  EXPECT_EQ(mb.num_targets, 25);
  EXPECT_EQ(batch.global_num_targets, 25);
}

}  // namespace
}  // namespace fulcrum::data
