// `fulcrum plan`: the per-rank breakdown of a recipe's layout, --search's
// table of valid layouts only, bad flag values; and `fulcrum train`
// refusing a layout the same memory model says cannot fit, on every rank,
// before the model is built.
#include <gtest/gtest.h>

#include <regex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "tests/integration/train_recipes.h"
#include "tests/test_support.h"

namespace fulcrum::testing {
namespace {

class PlanTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ScratchDir();
    WriteTinyData(dir_ + "/data.jsonl", 16, 512);
    // Random init from the tiny config (4 heads, 2 kv heads, ffn 128, vocab
    // 512, 2 layers): plan reads only the config.
    WriteFile(dir_ + "/r.yaml",
              absl::StrCat("model:\n  config: ", SourceDir(), "/recipes/tiny/config.json\n",
                           "data:\n  path: ", dir_, "/data.jsonl\n", "finetune:\n  method: full\n",
                           "batch:\n  global_batch: 8\n  micro_batch: 2\n  seq_len: 32\n"
                           "train:\n  steps: 2\nlogging:\n  peak_flops: 1.0e9\n"));
  }
  std::string dir_;
};

TEST_F(PlanTest, PrintsThePerRankBreakdown) {
  const CommandResult r =
      RunFulcrum("plan " + dir_ + "/r.yaml parallel.pp=2 --gpu-tflops 0.01 --gpu-memory 4GiB");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* fragment : {"layout: tp 1 x pp 2 (1f1b) x dp 1, micro-batch 2, recompute none",
                               "worst rank = pipeline stage",
                               "parameters",
                               "gradients",
                               "optimizer states",
                               "LoRA adapters + state",
                               "activations",
                               "loss / backward peak",
                               "communication buffers",
                               "runtime (process)",
                               "total",
                               "stage 0:",
                               "stage 1:",
                               "fits: yes",
                               "of 4.00 GiB available",
                               "pipeline bubble: 20.0%",
                               "compute per rank of each stage: stage 0 ",
                               ", stage 1 ",
                               "step time:",
                               "tokens/s"}) {
    EXPECT_NE(r.output.find(fragment), std::string::npos) << fragment << "\n" << r.output;
  }
  // Too little memory: the plan says so, with the margin.
  const CommandResult small = RunFulcrum("plan " + dir_ + "/r.yaml --gpu-memory 1MiB");
  ASSERT_EQ(small.exit_code, 0) << small.output;
  EXPECT_NE(small.output.find("fits: NO"), std::string::npos) << small.output;
}

TEST_F(PlanTest, SearchRanksValidLayoutsOnly) {
  const CommandResult r =
      RunFulcrum("plan " + dir_ + "/r.yaml --search --gpus 8 --gpu-memory 80GiB --top 100");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("search: "), std::string::npos) << r.output;
  // "   1   123.4   0.123   1.2 GiB   0.0%  tp 2 x pp 2 (1f1b) x dp 2, ..."
  const std::regex row(
      R"(^\s*(\d+)\s+([\d.]+)\s+\S+\s+[\d.]+ [MG]iB\s+[\d.]+%\s+tp (\d+) x pp (\d+).* x dp (\d+))");
  std::istringstream lines(r.output);
  std::string line;
  int rows = 0;
  double previous = 1e300;
  while (std::getline(lines, line)) {
    std::smatch m;
    if (!std::regex_search(line, m, row)) continue;
    ++rows;
    const int tp = std::stoi(m[3]), pp = std::stoi(m[4]), dp = std::stoi(m[5]);
    EXPECT_EQ(tp * pp * dp, 8) << line;
    // 4 heads and 2 layers: tp 8 and pp 4 or 8 are invalid for this model.
    EXPECT_LE(tp, 4) << line;
    EXPECT_LE(pp, 2) << line;
    const double tokens = std::stod(m[2]);
    EXPECT_LE(tokens, previous) << "not ranked by tokens/s: " << line;
    previous = tokens;
  }
  EXPECT_GT(rows, 5) << r.output;
}

// MoE layers cost more than their FLOPs: the plan measures that per routed
// row on the CPU (moe_overhead.h), or takes --moe-row-us, and adds it.
TEST_F(PlanTest, MoeLayersCostTheirRoutedRowsBeyondFlops) {
  const std::string moe = " model.config=" + SourceDir() + "/recipes/bench/moe_config.json";
  const CommandResult measured =
      RunFulcrum("plan " + dir_ + "/r.yaml" + moe + " --gpu-tflops 0.01");
  ASSERT_EQ(measured.exit_code, 0) << measured.output;
  EXPECT_NE(measured.output.find("us per routed row beyond their FLOPs (measured, "),
            std::string::npos)
      << measured.output;
  // 4 micro-batches x 2 x 32 tokens x top-4 x 4 MoE layers.
  const CommandResult given =
      RunFulcrum("plan " + dir_ + "/r.yaml" + moe + " --gpu-tflops 0.01 --moe-row-us 250");
  ASSERT_EQ(given.exit_code, 0) << given.output;
  EXPECT_NE(given.output.find("250 us per routed row beyond their FLOPs (--moe-row-us)"),
            std::string::npos)
      << given.output;
  EXPECT_NE(given.output.find("MoE layers: 4096 routed rows per step on a rank, 1.024 s beyond "
                              "their FLOPs"),
            std::string::npos)
      << given.output;
  // A bad LoRA spec is an error naming the recipe and key, not a crash.
  const CommandResult bad =
      RunFulcrum("plan " + dir_ + "/r.yaml" + moe + " finetune.method=lora finetune.lora.rank=0");
  EXPECT_EQ(bad.exit_code, 1) << bad.output;
  EXPECT_NE(bad.output.find("r.yaml: finetune.lora.rank: must be > 0, got 0"), std::string::npos)
      << bad.output;
  // GPUs: not measured, 0 unless given.
  const CommandResult gpus = RunFulcrum("plan " + dir_ + "/r.yaml" + moe + " --gpus 1");
  ASSERT_EQ(gpus.exit_code, 0) << gpus.output;
  EXPECT_NE(gpus.output.find("0 us per routed row beyond their FLOPs (not measured on GPUs"),
            std::string::npos)
      << gpus.output;
}

TEST_F(PlanTest, BadFlagValuesAreRejectedClearly) {
  const std::pair<std::string, std::string> cases[] = {
      {"--gpus 0", "--gpus: expected a positive whole number, got '0'"},
      {"--gpus 8 --gpu-memory lots", "--gpu-memory: expected a size like 80GiB"},
      {"--gpus 8 --gpu-tflops -3", "--gpu-tflops: expected a positive number, got '-3'"},
      {"--gpus 8 --efficiency 2", "--efficiency: a fraction of the peak in (0, 1]"},
      {"--gpus 8 --intra-node-gbps fast", "--intra-node-gbps: expected a positive number"},
      {"--gpus 8 --memory-gbps 0", "--memory-gbps: expected a positive number, got '0'"},
      {"--gpus 8 --collective-latency-us soon",
       "--collective-latency-us: expected a positive number, got 'soon'"},
      {"--gpus 8 --moe-row-us -1", "--moe-row-us: expected a number >= 0, got '-1'"},
      {"--bogus 1", "unknown flag --bogus"},
      // Without --search the recipe's layout must use every GPU.
      {"--gpus 3", "dp(1) x tp(1) x pp(1) = 1 != world size 3"},
  };
  for (const auto& [flags, message] : cases) {
    const CommandResult r = RunFulcrum("plan " + dir_ + "/r.yaml " + flags);
    EXPECT_EQ(r.exit_code, 1) << flags << "\n" << r.output;
    EXPECT_NE(r.output.find(message), std::string::npos) << flags << "\n" << r.output;
  }
}

TEST_F(PlanTest, TrainRefusesALayoutThatCannotFitOnEveryRank) {
  // ~137B parameters: no host holds them, whatever its memory.
  WriteFile(dir_ + "/huge.json", R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "vocab_size": 128000, "hidden_size": 16384, "intermediate_size": 53248,
    "num_hidden_layers": 40, "num_attention_heads": 128, "num_key_value_heads": 8,
    "head_dim": 128, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "tie_word_embeddings": false})");
  const CommandResult r = RunFulcrum(
      "train " + dir_ + "/r.yaml model.config=" + dir_ + "/huge.json parallel.dp=2 parallel.zero=1",
      2);
  EXPECT_NE(r.exit_code, 0) << r.output;
  for (const char* fragment :
       {"r.yaml: parallel: this layout needs about", "parallel.tp=1, parallel.pp=1",
        "parallel.dp=2", "parallel.zero=1", "available to each rank (host MemAvailable / 2",
        "raise parallel.tp, parallel.pp"}) {
    EXPECT_NE(r.output.find(fragment), std::string::npos) << fragment << "\n" << r.output;
  }
  // Refused before the model is built: no parameter count, no step.
  EXPECT_EQ(r.output.find("parameters, "), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("training steps"), std::string::npos) << r.output;
}

TEST_F(PlanTest, TrainRefusesALayoutAboveTrainMemoryGib) {
  // The tiny model needs about the process's runtime (~340 MiB) per rank:
  // 0.1 GiB is too little on any host, 8 GiB is enough.
  const std::string args = "train " + dir_ + "/r.yaml parallel.pp=2 train.recompute=full";
  const CommandResult refused = RunFulcrum(args + " train.memory_gib=0.1", 2);
  EXPECT_NE(refused.exit_code, 0) << refused.output;
  for (const char* fragment :
       {"r.yaml: parallel: this layout needs about", "pipeline stage", "parallel.pp=2 (1f1b)",
        "recompute full", "more than the 102.4 MiB available to each rank (train.memory_gib)"}) {
    EXPECT_NE(refused.output.find(fragment), std::string::npos) << fragment << "\n"
                                                                << refused.output;
  }
  EXPECT_EQ(refused.output.find("parameters, "), std::string::npos) << refused.output;
  const CommandResult fits = RunFulcrum(args + " train.memory_gib=8", 2);
  EXPECT_EQ(fits.exit_code, 0) << fits.output;
  // A negative amount is a recipe error naming the key.
  const CommandResult bad = RunFulcrum(args + " train.memory_gib=-1", 2);
  EXPECT_NE(bad.exit_code, 0) << bad.output;
  EXPECT_NE(bad.output.find("train.memory_gib"), std::string::npos) << bad.output;
}

}  // namespace
}  // namespace fulcrum::testing
