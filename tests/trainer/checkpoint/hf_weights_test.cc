#include "trainer/checkpoint/hf_weights.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "tests/test_support.h"

namespace fulcrum::checkpoint {
namespace {

namespace fs = std::filesystem;
using ::fulcrum::testing::FixturesDir;
using ::fulcrum::testing::ReadFile;
using ::fulcrum::testing::ScratchDir;
using ::fulcrum::testing::WriteFile;

bool BitEqual(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const torch::Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.numel() * ca.element_size()) == 0;
}

// Five tensors of 64, 96, 32, 200 and 16 bytes.
std::vector<NamedTensor> Tensors() {
  torch::manual_seed(3);
  return {{"model.embed_tokens.weight", torch::randn({4, 4})},
          {"model.layers.0.w", torch::randn({6, 4})},
          {"model.layers.0.b", torch::randn({4, 4}).to(torch::kBFloat16)},
          {"model.layers.1.w", torch::randn({50})},
          {"lm_head.weight", torch::arange(2, torch::kInt64)}};
}

void ExpectSameWeights(const HfWeights& weights, const std::vector<NamedTensor>& tensors) {
  std::vector<std::string> names;
  for (const NamedTensor& t : tensors) names.push_back(t.name);
  std::sort(names.begin(), names.end());
  EXPECT_EQ(weights.Names(), names);
  for (const NamedTensor& t : tensors) {
    absl::StatusOr<torch::Tensor> read = weights.View(t.name);
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_TRUE(BitEqual(*read, t.tensor)) << t.name;
  }
}

TEST(HfWeightsTest, OpensFixtureModelDir) {
  absl::StatusOr<HfWeights> weights = HfWeights::Open(FixturesDir() + "/llama/model");
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_TRUE(weights->Contains("model.layers.1.self_attn.q_proj.weight"));
  EXPECT_EQ(weights->Entry("model.embed_tokens.weight")->shape, (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(weights->ReadSlice("lm_head.weight", 0, 0, 8)->sizes(), (std::vector<int64_t>{8, 64}));
  EXPECT_EQ(weights->dir(), FixturesDir() + "/llama/model");
  absl::StatusOr<torch::Tensor> missing = weights->View("nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("\"nope\""), std::string::npos);
}

TEST(HfWeightsTest, FixtureRoundTripsExactlyThroughShards) {
  absl::StatusOr<HfWeights> source = HfWeights::Open(FixturesDir() + "/llama/model");
  ASSERT_TRUE(source.ok()) << source.status();
  std::vector<NamedTensor> tensors;
  for (const std::string& name : source->Names()) tensors.push_back({name, *source->View(name)});
  const std::string dir = ScratchDir();
  ASSERT_TRUE(WriteHfWeights(dir, tensors, 200 * 1024).ok());  // the file is ~560 KB
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors.index.json"));
  absl::StatusOr<HfWeights> copy = HfWeights::Open(dir);
  ASSERT_TRUE(copy.ok()) << copy.status();
  ExpectSameWeights(*copy, tensors);
}

TEST(HfWeightsTest, SingleFileWhenItFits) {
  const std::string dir = ScratchDir();
  const std::vector<NamedTensor> tensors = Tensors();
  ASSERT_TRUE(WriteHfWeights(dir, tensors, 408).ok());  // exactly the total
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors.index.json"));
  absl::StatusOr<HfWeights> weights = HfWeights::Open(dir);
  ASSERT_TRUE(weights.ok()) << weights.status();
  ExpectSameWeights(*weights, tensors);
  auto reader = SafetensorsReader::Open(dir + "/model.safetensors");
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ((*reader)->Metadata().at("format"), "pt");
}

TEST(HfWeightsTest, ShardedWriteAndIndex) {
  const std::string dir = ScratchDir();
  const std::vector<NamedTensor> tensors = Tensors();
  // 160 bytes: [64+96], [32], [200 alone: larger than a shard], [16].
  ASSERT_TRUE(WriteHfWeights(dir, tensors, 160).ok());
  const nlohmann::json index =
      nlohmann::json::parse(ReadFile(dir + "/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 408);
  const nlohmann::json expected_map = {
      {"model.embed_tokens.weight", "model-00001-of-00004.safetensors"},
      {"model.layers.0.w", "model-00001-of-00004.safetensors"},
      {"model.layers.0.b", "model-00002-of-00004.safetensors"},
      {"model.layers.1.w", "model-00003-of-00004.safetensors"},
      {"lm_head.weight", "model-00004-of-00004.safetensors"}};
  EXPECT_EQ(index["weight_map"], expected_map);
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors"));
  for (int s = 1; s <= 4; ++s) {
    const std::string shard = dir + "/model-0000" + std::to_string(s) + "-of-00004.safetensors";
    auto reader = SafetensorsReader::Open(shard);
    ASSERT_TRUE(reader.ok()) << reader.status();
    EXPECT_EQ((*reader)->Metadata().at("format"), "pt");
  }
  absl::StatusOr<HfWeights> weights = HfWeights::Open(dir);
  ASSERT_TRUE(weights.ok()) << weights.status();
  ExpectSameWeights(*weights, tensors);
  EXPECT_TRUE(BitEqual(*weights->ReadSlice("model.layers.0.w", 1, 1, 2),
                       tensors[1].tensor.narrow(1, 1, 2)));
}

TEST(HfWeightsTest, RewriteRemovesStaleLayout) {
  const std::string dir = ScratchDir();
  std::vector<NamedTensor> tensors = Tensors();
  ASSERT_TRUE(WriteHfWeights(dir, tensors, 160).ok());
  WriteFile(dir + "/config.json", "{}");
  ASSERT_TRUE(WriteHfWeights(dir, tensors, 1 << 20).ok());
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir + "/model-00001-of-00004.safetensors"));
  EXPECT_TRUE(fs::exists(dir + "/config.json"));  // not ours: kept
  ASSERT_TRUE(WriteHfWeights(dir, tensors, 200, "adapter_model").ok());
  EXPECT_TRUE(fs::exists(dir + "/adapter_model.safetensors.index.json"));
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors"));  // other prefix: kept
  absl::StatusOr<HfWeights> adapter = HfWeights::Open(dir, "adapter_model");
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  ExpectSameWeights(*adapter, tensors);
}

TEST(HfWeightsTest, WriteRejectsBadArguments) {
  const std::string dir = ScratchDir();
  EXPECT_FALSE(WriteHfWeights(dir + "/absent", Tensors(), 100).ok());
  EXPECT_FALSE(WriteHfWeights(dir, Tensors(), 0).ok());
  std::vector<NamedTensor> dup = Tensors();
  dup.push_back(dup.front());
  absl::Status status = WriteHfWeights(dir, dup, 100);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("duplicate"), std::string::npos) << status;
  EXPECT_TRUE(fs::is_empty(dir));  // validated before writing anything
}

TEST(HfWeightsTest, DirWithoutWeightsNamesTheDir) {
  const std::string dir = ScratchDir();
  absl::StatusOr<HfWeights> weights = HfWeights::Open(dir);
  ASSERT_FALSE(weights.ok());
  EXPECT_NE(weights.status().message().find(dir), std::string::npos) << weights.status();
  EXPECT_NE(weights.status().message().find("model.safetensors"), std::string::npos);
}

TEST(HfWeightsTest, IndexNamingMissingShard) {
  const std::string dir = ScratchDir();
  ASSERT_TRUE(WriteHfWeights(dir, Tensors(), 160).ok());
  fs::remove(dir + "/model-00003-of-00004.safetensors");
  absl::StatusOr<HfWeights> weights = HfWeights::Open(dir);
  ASSERT_FALSE(weights.ok());
  EXPECT_NE(weights.status().message().find("model-00003-of-00004.safetensors"), std::string::npos)
      << weights.status();
}

TEST(HfWeightsTest, IndexNamingTensorMissingFromShard) {
  const std::string dir = ScratchDir();
  ASSERT_TRUE(WriteHfWeights(dir, Tensors(), 160).ok());
  nlohmann::json index = nlohmann::json::parse(ReadFile(dir + "/model.safetensors.index.json"));
  index["weight_map"]["model.ghost"] = "model-00002-of-00004.safetensors";
  WriteFile(dir + "/model.safetensors.index.json", index.dump());
  absl::StatusOr<HfWeights> weights = HfWeights::Open(dir);
  ASSERT_FALSE(weights.ok());
  EXPECT_NE(weights.status().message().find("model.ghost"), std::string::npos) << weights.status();
}

TEST(HfWeightsTest, MalformedIndex) {
  const std::string dir = ScratchDir();
  WriteFile(dir + "/model.safetensors.index.json", "{\"weight_map\": ");
  EXPECT_FALSE(HfWeights::Open(dir).ok());
  WriteFile(dir + "/model.safetensors.index.json", R"({"weight_map": {"a": "../x.safetensors"}})");
  absl::StatusOr<HfWeights> weights = HfWeights::Open(dir);
  ASSERT_FALSE(weights.ok());
  EXPECT_NE(weights.status().message().find("\"a\""), std::string::npos) << weights.status();
}

}  // namespace
}  // namespace fulcrum::checkpoint
