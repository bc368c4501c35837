// End to end through the `fulcrum` binary: the score contract against the HF
// fixtures, export round trips (hf, merged, peft), and exports streamed from
// sharded training checkpoints with their logits self-check.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "tests/integration/fixture_compare.h"
#include "tests/integration/layout_compare.h"
#include "tests/integration/train_recipes.h"
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

// Trains `family` with LayoutRecipe(method) under `overrides` on `ranks`
// ranks in dir/run, saving at step 10; -> the checkpoint directory.
std::string TrainCheckpoint(const std::string& dir, const std::string& family,
                            const std::string& method, const std::string& overrides, int ranks) {
  WriteTinyData(dir + "/data.jsonl", 64, 512);
  fs::create_directories(dir + "/run");
  TrainLayout(Fixture(family, "model"), dir + "/data.jsonl", method, dir + "/run",
              "checkpoint.dir=" + dir + "/run/ckpt checkpoint.every=10 " + overrides, ranks);
  return dir + "/run/ckpt";
}

// The self-check's figures from an export's output ("max |diff| X (largest
// logit Y, ..."): X / max(1, Y), the difference relative to the logits' scale.
double SelfCheckDiff(const std::string& output) {
  double figures[2] = {INFINITY, 0.0};
  const char* keys[2] = {"max |diff| ", "(largest logit "};
  for (int i = 0; i < 2; ++i) {
    const size_t at = output.find(keys[i]);
    EXPECT_NE(at, std::string::npos) << output;
    if (at == std::string::npos) return INFINITY;
    const size_t begin = at + strlen(keys[i]);
    const size_t end = output.find_first_of(" ,", begin);
    EXPECT_TRUE(absl::SimpleAtod(output.substr(begin, end - begin), &figures[i])) << output;
  }
  return figures[0] / std::max(1.0, figures[1]);
}

std::string DtypeOf(const std::string& dir, const std::string& name) {
  auto weights = checkpoint::HfWeights::Open(dir);
  EXPECT_TRUE(weights.ok()) << weights.status();
  return weights.ok() ? weights->Entry(name)->dtype : "";
}

// A LoRA run under tp 2: merged export in fp32 and shards of at most 100 kB,
// each weight equal to base + (alpha / r) B A from the checkpoint's
// gathered adapters, and the self-check within 1e-5; then bf16 and PEFT.
TEST(CheckpointExportTest, LoraRunExportsMergedShardedBf16AndPeft) {
  const std::string dir = ScratchDir();
  const std::string ckpt = TrainCheckpoint(dir, "llama", "lora", "parallel.tp=2", 2);
  CommandResult r = RunFulcrum("export --checkpoint " + ckpt +
                               " --format merged --max-shard-size 100000 --out " + dir + "/merged");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_LE(SelfCheckDiff(r.output), 1e-5);
  EXPECT_TRUE(fs::exists(dir + "/merged/model.safetensors.index.json"));
  int shards = 0;
  for (const auto& entry : fs::directory_iterator(dir + "/merged")) {
    shards += entry.path().extension() == ".safetensors";
  }
  EXPECT_GE(shards, 4);  // 550 kB in files of at most 100 kB (the embedding alone is 131 kB)
  const nlohmann::json config = nlohmann::json::parse(ReadFile(dir + "/merged/config.json"));
  EXPECT_EQ(config.value("torch_dtype", config.value("dtype", "")), "float32");

  const Tensors trained = ReadCheckpointTensors(ckpt + "/step-00000010");
  const Tensors base = ReadTensors(Fixture("llama", "model/model.safetensors"));
  auto merged = checkpoint::HfWeights::Open(dir + "/merged");
  ASSERT_TRUE(merged.ok()) << merged.status();
  ASSERT_EQ(merged->Names().size(), base.size());
  int64_t adapted = 0;
  for (const auto& [name, weight] : base) {
    torch::Tensor expected = weight;
    const std::string module = name.substr(0, name.size() - std::string(".weight").size());
    if (trained.count("model/" + module + ".lora_A.weight")) {
      expected = weight + 2.0 * torch::matmul(trained.at("model/" + module + ".lora_B.weight"),
                                              trained.at("model/" + module + ".lora_A.weight"));
      ++adapted;
    }
    auto view = merged->View(name);
    ASSERT_TRUE(view.ok()) << name;
    EXPECT_LE((*view - expected).abs().max().item<double>(), 1e-6) << name;
  }
  EXPECT_EQ(adapted, 14);  // 7 linears x 2 layers

  r = RunFulcrum("export --checkpoint " + ckpt + " --format merged --dtype bf16 --out " + dir +
                 "/bf16");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_GT(SelfCheckDiff(r.output), 0.0);  // bf16 rounds
  EXPECT_EQ(DtypeOf(dir + "/bf16", "model.layers.0.mlp.up_proj.weight"), "BF16");
  EXPECT_EQ(nlohmann::json::parse(ReadFile(dir + "/bf16/config.json")).value("dtype", ""),
            "bfloat16");

  r = RunFulcrum("export --checkpoint " + ckpt + " --format peft --out " + dir + "/peft");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_LE(SelfCheckDiff(r.output), 1e-5);
  const Tensors adapter = ReadTensors(dir + "/peft/adapter_model.safetensors");
  EXPECT_EQ(adapter.size(), 28u);
  EXPECT_TRUE(
      torch::equal(adapter.at("base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight"),
                   trained.at("model/model.layers.1.self_attn.o_proj.lora_B.weight")));
  const nlohmann::json peft = nlohmann::json::parse(ReadFile(dir + "/peft/adapter_config.json"));
  EXPECT_EQ(peft.at("r"), 4);
  EXPECT_EQ(peft.at("base_model_name_or_path"), Fixture("llama", "model"));

  r = RunFulcrum("export --checkpoint " + ckpt + " --format hf --out " + dir + "/hf");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--format merged"), std::string::npos) << r.output;
  r = RunFulcrum("export --checkpoint " + ckpt + " --format merged --self-check maybe --out " +
                 dir + "/x");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--self-check"), std::string::npos) << r.output;
}

// Two same-shaped tensors written in each other's place: the self-check
// names the difference, the export fails and leaves nothing behind.
TEST(CheckpointExportTest, BrokenExportFailsItsSelfCheck) {
  const std::string dir = ScratchDir();
  const std::string ckpt = TrainCheckpoint(dir, "llama", "lora", "", 1);
  const std::string swap =
      "FULCRUM_TEST_EXPORT_SWAP=model.layers.0.self_attn.q_proj.weight,"
      "model.layers.0.self_attn.o_proj.weight ";
  CommandResult r = RunCommand(swap + FulcrumBinary() + " export --checkpoint " + ckpt +
                               " --format merged --out " + dir + "/broken");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("export self-check failed"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir + "/broken"));
  for (const auto& entry : fs::directory_iterator(dir)) {
    EXPECT_EQ(entry.path().filename().string().find("broken"), std::string::npos) << entry.path();
  }
  // Unchecked, the broken export is written: the check is what caught it.
  r = RunCommand(swap + FulcrumBinary() + " export --checkpoint " + ckpt +
                 " --format merged --self-check false --out " + dir + "/unchecked");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.find("self-check"), std::string::npos) << r.output;
}

// A full fine-tune under pp 2 with tied embeddings: the hf export holds the
// checkpoint's parameters bit for bit (no lm_head: tied).
TEST(CheckpointExportTest, FullFineTuneExportHoldsTheCheckpointsParameters) {
  const std::string dir = ScratchDir();
  const std::string ckpt = TrainCheckpoint(dir, "llama_tied", "full", "parallel.pp=2", 2);
  const CommandResult r =
      RunFulcrum("export --checkpoint " + ckpt + " --format hf --out " + dir + "/hf", 2);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_LE(SelfCheckDiff(r.output), 1e-5);
  const Tensors exported = ReadTensors(dir + "/hf/model.safetensors");
  const Tensors trained = ReadCheckpointTensors(ckpt + "/step-00000010");
  EXPECT_FALSE(exported.count("lm_head.weight"));
  int64_t compared = 0;
  for (const auto& [name, tensor] : exported) {
    ASSERT_TRUE(trained.count("model/" + name)) << name;
    EXPECT_TRUE(torch::equal(tensor, trained.at("model/" + name))) << name;
    ++compared;
  }
  int64_t saved = 0;
  for (const auto& [name, tensor] : trained) saved += name.rfind("model/", 0) == 0;
  EXPECT_EQ(compared, saved);
  EXPECT_GT(compared, 10);
}

// LoRA on a randomly initialised model (model.config): the export draws the
// frozen base again from the recipe's seed, as `fulcrum init` does.
TEST(CheckpointExportTest, RandomInitBaseIsDrawnAgainFromTheSeed) {
  const std::string dir = ScratchDir();
  WriteTinyData(dir + "/data.jsonl", 64, 512);
  fs::create_directories(dir + "/run");
  const std::string config = Fixture("llama", "model/config.json");
  std::string recipe =
      LayoutRecipe(Fixture("llama", "model"), dir + "/data.jsonl", "lora", dir + "/run");
  const std::string path_line = "path: " + Fixture("llama", "model") + "\n";
  recipe.replace(recipe.find(path_line), path_line.size(), "config: " + config + "\n");
  WriteFile(dir + "/run/recipe.yaml", recipe);
  CommandResult r = RunFulcrum("train " + dir + "/run/recipe.yaml checkpoint.dir=" + dir +
                               "/run/ckpt checkpoint.every=10");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = RunFulcrum("export --checkpoint " + dir + "/run/ckpt --format merged --out " + dir +
                 "/merged");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_LE(SelfCheckDiff(r.output), 1e-5);
  r = RunFulcrum("init --config " + config + " --seed 5 --out " + dir + "/init");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Tensors merged = ReadTensors(dir + "/merged/model.safetensors");
  const Tensors init = ReadTensors(dir + "/init/model.safetensors");
  EXPECT_TRUE(
      torch::equal(merged.at("model.embed_tokens.weight"), init.at("model.embed_tokens.weight")));
  EXPECT_TRUE(torch::equal(merged.at("lm_head.weight"), init.at("lm_head.weight")));
  EXPECT_FALSE(torch::equal(merged.at("model.layers.1.mlp.down_proj.weight"),
                            init.at("model.layers.1.mlp.down_proj.weight")));
}

}  // namespace
}  // namespace fulcrum::testing
