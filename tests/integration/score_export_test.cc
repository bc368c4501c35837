// End to end through the `fulcrum` binary: the score contract against the HF
// fixtures, and export round trips (hf, merged, peft).
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "tests/integration/fixture_compare.h"
#include "tests/test_support.h"
#include "trainer/checkpoint/hf_weights.h"
#include "trainer/checkpoint/safetensors_reader.h"

namespace fulcrum::testing {
namespace {
namespace fs = std::filesystem;

std::string Fixture(const std::string& family, const std::string& sub = "") {
  return FixturesDir() + "/" + family + (sub.empty() ? "" : "/" + sub);
}

class ScoreParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ScoreParityTest, LogitsLossAndGradsMatchTransformers) {
  const std::string family = GetParam();
  const std::string out = ScratchDir() + "/score.safetensors";
  const CommandResult r =
      RunFulcrum("score --model " + Fixture(family, "model") + " --batch " + FixturesDir() +
                 "/batch.safetensors --out " + out + " --grads");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Tensors expected = ReadTensors(Fixture(family, "expected.safetensors"));
  const Tensors got = ReadTensors(out);
  ExpectLogitsClose(got.at("logits"), expected.at("logits"), expected.at("attention_mask"));
  EXPECT_NEAR(got.at("loss").item<double>(), expected.at("loss").item<double>(), 1e-5);
  int grads = 0;
  for (const auto& [name, ref] : expected) {
    if (name.rfind("grad.", 0) != 0) continue;
    ASSERT_TRUE(got.count(name)) << "missing " << name;
    ExpectGradClose(got.at(name), ref, name);
    ++grads;
  }
  EXPECT_GT(grads, 0);
}

TEST_P(ScoreParityTest, PeftAdapterGivesLoraLogitsAndGrads) {
  const std::string family = GetParam();
  const std::string out = ScratchDir() + "/score.safetensors";
  const CommandResult r = RunFulcrum("score --model " + Fixture(family, "model") + " --adapter " +
                                     Fixture(family, "lora") + " --batch " + FixturesDir() +
                                     "/batch.safetensors --out " + out + " --grads");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Tensors expected = ReadTensors(Fixture(family, "expected.safetensors"));
  const Tensors got = ReadTensors(out);
  ExpectLogitsClose(got.at("logits"), expected.at("lora_logits"), expected.at("attention_mask"));
  EXPECT_NEAR(got.at("loss").item<double>(), expected.at("lora_loss").item<double>(), 1e-5);
  int grads = 0;
  for (const auto& [name, ref] : expected) {
    if (name.rfind("lora_grad.", 0) != 0) continue;
    const std::string key = "grad." + name.substr(std::string("lora_grad.").size());
    ASSERT_TRUE(got.count(key)) << "missing " << key;
    ExpectGradClose(got.at(key), ref, key);
    ++grads;
  }
  EXPECT_GT(grads, 0);
}

INSTANTIATE_TEST_SUITE_P(Families, ScoreParityTest,
                         ::testing::Values("llama", "llama_tied", "qwen2"));

TEST(ExportTest, HfRoundTripIsBitExact) {
  for (const std::string family : {"llama", "llama_tied", "qwen2"}) {
    const std::string out = ScratchDir() + "/" + family;
    const CommandResult r =
        RunFulcrum("export --checkpoint " + Fixture(family, "model") + " --format hf --out " + out);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const Tensors original = ReadTensors(Fixture(family, "model/model.safetensors"));
    const Tensors exported = ReadTensors(out + "/model.safetensors");
    ASSERT_EQ(original.size(), exported.size()) << family;
    for (const auto& [name, tensor] : original) {
      ASSERT_TRUE(exported.count(name)) << family << ": " << name;
      EXPECT_TRUE(torch::equal(tensor, exported.at(name))) << family << ": " << name;
    }
    EXPECT_EQ(nlohmann::json::parse(ReadFile(Fixture(family, "model/config.json"))),
              nlohmann::json::parse(ReadFile(out + "/config.json")));
    EXPECT_TRUE(fs::exists(out + "/generation_config.json"));
  }
}

TEST(ExportTest, CarriesTokenizerAndGenerationFiles) {
  const std::string dir = ScratchDir();
  fs::copy(Fixture("llama", "model"), dir + "/src");
  WriteFile(dir + "/src/tokenizer.json", "{\"model\": {}}\n");
  WriteFile(dir + "/src/tokenizer_config.json", "{\"add_bos_token\": true}\n");
  const CommandResult r =
      RunFulcrum("export --checkpoint " + dir + "/src --format hf --out " + dir + "/out");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const std::string name :
       {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
    EXPECT_EQ(ReadFile(dir + "/out/" + name), ReadFile(dir + "/src/" + name)) << name;
  }
}

TEST(ExportTest, ShardedExportLoadsBack) {
  const std::string out = ScratchDir() + "/sharded";
  const CommandResult r = RunFulcrum("export --checkpoint " + Fixture("llama", "model") +
                                     " --format hf --max-shard-size 100000 --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(fs::exists(out + "/model.safetensors.index.json"));
  auto weights = checkpoint::HfWeights::Open(out);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const Tensors original = ReadTensors(Fixture("llama", "model/model.safetensors"));
  for (const auto& [name, tensor] : original) {
    auto view = weights->View(name);
    ASSERT_TRUE(view.ok()) << name;
    EXPECT_TRUE(torch::equal(tensor, *view)) << name;
  }
}

TEST(ExportTest, MergedFixtureAdapterGivesMergedLogits) {
  const std::string dir = ScratchDir();
  CommandResult r =
      RunFulcrum("export --checkpoint " + Fixture("llama", "model") + " --adapter " +
                 Fixture("llama", "lora") + " --format merged --out " + dir + "/merged");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = RunFulcrum("score --model " + dir + "/merged --batch " + FixturesDir() +
                 "/batch.safetensors --out " + dir + "/score.safetensors");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Tensors expected = ReadTensors(Fixture("llama", "expected.safetensors"));
  ExpectLogitsClose(ReadTensors(dir + "/score.safetensors").at("logits"),
                    expected.at("lora_merged_logits"), expected.at("attention_mask"));
}

TEST(ExportTest, PeftExportLoadsBackWithSameLogits) {
  const std::string dir = ScratchDir();
  CommandResult r = RunFulcrum("export --checkpoint " + Fixture("qwen2", "model") + " --adapter " +
                               Fixture("qwen2", "lora") + " --format peft --out " + dir + "/peft");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json config = nlohmann::json::parse(ReadFile(dir + "/peft/adapter_config.json"));
  EXPECT_EQ(config.at("peft_type"), "LORA");
  r = RunFulcrum("score --model " + Fixture("qwen2", "model") + " --adapter " + dir +
                 "/peft --batch " + FixturesDir() + "/batch.safetensors --out " + dir +
                 "/s.safetensors");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Tensors expected = ReadTensors(Fixture("qwen2", "expected.safetensors"));
  ExpectLogitsClose(ReadTensors(dir + "/s.safetensors").at("logits"), expected.at("lora_logits"),
                    expected.at("attention_mask"));
  const Tensors adapter = ReadTensors(dir + "/peft/adapter_model.safetensors");
  const Tensors original = ReadTensors(Fixture("qwen2", "lora/adapter_model.safetensors"));
  EXPECT_EQ(adapter.size(), original.size());
  for (const auto& [name, tensor] : original) {
    ASSERT_TRUE(adapter.count(name)) << name;
    EXPECT_TRUE(torch::equal(tensor, adapter.at(name))) << name;
  }
}

TEST(ExportTest, HfFormatRefusesAdapterAndBadFormat) {
  const std::string dir = ScratchDir();
  CommandResult r = RunFulcrum("export --checkpoint " + Fixture("llama", "model") + " --adapter " +
                               Fixture("llama", "lora") + " --format hf --out " + dir + "/x");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--format merged"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir + "/x"));
  r = RunFulcrum("export --checkpoint " + Fixture("llama", "model") + " --format gguf --out " +
                 dir + "/y");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--format"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace fulcrum::testing
