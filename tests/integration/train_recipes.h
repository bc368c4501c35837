// Recipes and data for the training integration tests.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tests/test_support.h"

namespace fulcrum::testing {

// The fixture batch as pre-tokenized JSONL: padding dropped (the loader pads
// again), so the rows are exactly transformers' inputs.
inline void WriteFixtureBatchJsonl(const std::map<std::string, torch::Tensor>& expected,
                                   const std::string& path) {
  const torch::Tensor ids = expected.at("input_ids");
  const torch::Tensor mask = expected.at("attention_mask");
  std::string text;
  for (int64_t b = 0; b < ids.size(0); ++b) {
    std::vector<int64_t> row;
    for (int64_t t = 0; t < ids.size(1); ++t) {
      if (mask[b][t].item<int64_t>() == 1) row.push_back(ids[b][t].item<int64_t>());
    }
    absl::StrAppend(&text, "{\"input_ids\": [", absl::StrJoin(row, ", "), "]}\n");
  }
  WriteFile(path, text);
}

// transformers' AdamW run of the fixtures: lr 1e-3, betas (0.9, 0.95), eps
// 1e-8, weight decay 0.1 on every parameter, no clipping, constant lr, the
// same batch every step.
inline std::string FixtureAdamWRecipe(const std::string& model, const std::string& dir) {
  return absl::StrCat(R"(model:
  path: )",
                      model, R"(
data:
  path: )",
                      dir, R"(/data.jsonl
  shuffle: false
  pack: false
finetune:
  method: full
optim:
  lr: 0.001
  betas: [0.9, 0.95]
  eps: 1.0e-8
  weight_decay: 0.1
  decay_norms_and_biases: true
  grad_clip: 0
schedule:
  type: constant
batch:
  global_batch: 2
  micro_batch: 2
  seq_len: 16
train:
  steps: 5
logging:
  metrics_file: )",
                      dir, R"(/metrics.jsonl
  peak_flops: 1.0e9
)");
}

inline std::vector<double> ReadLosses(const std::string& path) {
  std::vector<double> losses;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) losses.push_back(nlohmann::json::parse(line).at("loss").get<double>());
  }
  return losses;
}

// A tiny random Llama (recipes/tiny/config.json) under dir/model.
inline std::string TinyModel(const std::string& dir) {
  const std::string out = dir + "/model";
  const CommandResult r = RunFulcrum("init --config " + SourceDir() +
                                     "/recipes/tiny/config.json --out " + out + " --seed 3");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return out;
}

// Deterministic pseudo-random samples of 8..40 tokens with ids in [3, vocab).
inline void WriteTinyData(const std::string& path, int samples, int64_t vocab) {
  uint64_t state = 12345;
  auto next = [&state]() {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return state >> 33;
  };
  std::string text;
  for (int i = 0; i < samples; ++i) {
    const int64_t length = 8 + static_cast<int64_t>(next() % 33);
    const int64_t start = 3 + static_cast<int64_t>(next() % (vocab - 3));
    std::vector<int64_t> ids;
    for (int64_t t = 0; t < length; ++t) ids.push_back(3 + (start + 7 * t) % (vocab - 3));
    absl::StrAppend(&text, "{\"input_ids\": [", absl::StrJoin(ids, ","), "]}\n");
  }
  WriteFile(path, text);
}

inline std::string TinyTrainRecipe(const std::string& model, const std::string& data,
                                   const std::string& method, int steps) {
  return absl::StrCat(R"(model:
  path: )",
                      model, R"(
data:
  path: )",
                      data, R"(
finetune:
  method: )",
                      method, R"(
  lora:
    rank: 4
    alpha: 8
    targets: [all-linear]
optim:
  lr: 0.003
  weight_decay: 0.01
schedule:
  type: cosine
  warmup_steps: 2
batch:
  global_batch: 4
  micro_batch: 2
  seq_len: 32
train:
  steps: )",
                      steps, R"(
logging:
  peak_flops: 1.0e9
seed: 11
)");
}

// An 8-layer variant of the llama fixture's config (tied or not), randomly
// initialised by `fulcrum init` under dir/model.
inline std::string EightLayerModel(const std::string& dir, bool tied) {
  std::ifstream in(FixturesDir() + "/llama/model/config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  config["num_hidden_layers"] = 8;
  config["tie_word_embeddings"] = tied;
  WriteFile(dir + "/config.json", config.dump(2));
  const std::string out = dir + "/model";
  const CommandResult r =
      RunFulcrum("init --config " + dir + "/config.json --out " + out + " --seed 7");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return out;
}

// 10 AdamW steps, clipping at 0.5 (0.2 for LoRA, whose B starts at zero; below
// the first gradient norms either way), 8 rows of
// 16 tokens per step in micro-batches of 1: 8 micro-batches per step at dp 1,
// 4 at dp 2.
inline std::string PipelineRecipe(const std::string& model, const std::string& data,
                                  const std::string& method, const std::string& dir) {
  return absl::StrCat("model:\n  path: ", model, "\ndata:\n  path: ", data,
                      "\n  shuffle: true\n  pack: true\nfinetune:\n  method: ", method,
                      "\n  lora:\n    rank: 4\n    alpha: 8\n    targets: [all-linear]\n"
                      "optim:\n  lr: 0.002\n  weight_decay: 0.01\n  grad_clip: ",
                      method == "lora" ? "0.2" : "0.5",
                      "\n"
                      "schedule:\n  type: cosine\n  warmup_steps: 2\n"
                      "batch:\n  global_batch: 8\n  micro_batch: 1\n  seq_len: 16\n"
                      "train:\n  steps: 10\nlogging:\n  metrics_file: ",
                      dir, "/metrics.jsonl\n  peak_flops: 1.0e9\nseed: 5\n");
}

}  // namespace fulcrum::testing
