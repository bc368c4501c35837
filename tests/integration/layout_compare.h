// What the layout-equivalence tests compare: the per-step log of a training
// run against the single-rank one, and `fulcrum score --grads` outputs of
// several layouts against the single-rank file.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/integration/fixture_compare.h"
#include "tests/test_support.h"
#include "trainer/checkpoint/sharded_checkpoint.h"

namespace fulcrum::testing {

struct Layout {
  std::string overrides;  // parallel.KEY=VALUE words
  int ranks;
};

struct StepLog {
  std::vector<double> losses;
  std::vector<double> grad_norms;
  std::vector<int64_t> optimizer_state_bytes;
  std::vector<double> val_losses;  // the eval lines', in order
  // MoE models: per step, the balance loss and each layer's max/mean load.
  std::vector<double> balance_losses;
  std::vector<std::vector<double>> expert_loads;
  std::vector<std::vector<int64_t>> tokens_dropped;  // per layer, over capacity
};

// The step lines of a metrics JSONL, and the eval lines' val_loss.
inline StepLog ReadStepLog(const std::string& path) {
  StepLog log;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("val_loss")) log.val_losses.push_back(j.at("val_loss").get<double>());
    if (!j.contains("loss")) continue;
    log.losses.push_back(j.at("loss").get<double>());
    log.grad_norms.push_back(j.at("grad_norm").get<double>());
    log.optimizer_state_bytes.push_back(j.at("optimizer_state_bytes").get<int64_t>());
    if (j.contains("moe_balance_loss")) {
      log.balance_losses.push_back(j.at("moe_balance_loss").get<double>());
      log.expert_loads.push_back(j.at("expert_load_max_over_mean").get<std::vector<double>>());
      log.tokens_dropped.push_back(j.at("moe_tokens_dropped").get<std::vector<int64_t>>());
    }
  }
  return log;
}

// Per-step losses, validation and balance losses within 1e-5 relative, grad
// norms within 1e-4, the same expert loads and dropped choices.
inline void ExpectSameCurve(const StepLog& got, const StepLog& ref, const std::string& what) {
  ASSERT_EQ(got.losses.size(), ref.losses.size()) << what;
  ASSERT_EQ(got.balance_losses.size(), ref.balance_losses.size()) << what;
  for (size_t s = 0; s < ref.balance_losses.size(); ++s) {
    EXPECT_NEAR(got.balance_losses[s], ref.balance_losses[s],
                1e-5 * std::abs(ref.balance_losses[s]))
        << what << " balance loss, step " << s + 1;
    EXPECT_EQ(got.expert_loads[s], ref.expert_loads[s]) << what << " expert loads, step " << s + 1;
    EXPECT_EQ(got.tokens_dropped[s], ref.tokens_dropped[s])
        << what << " tokens dropped, step " << s + 1;
  }
  ASSERT_EQ(got.val_losses.size(), ref.val_losses.size()) << what;
  for (size_t e = 0; e < ref.val_losses.size(); ++e) {
    EXPECT_NEAR(got.val_losses[e], ref.val_losses[e], 1e-5 * std::abs(ref.val_losses[e]))
        << what << " eval " << e;
  }
  for (size_t s = 0; s < ref.losses.size(); ++s) {
    EXPECT_NEAR(got.losses[s], ref.losses[s], 1e-5 * std::abs(ref.losses[s]))
        << what << " step " << s + 1;
    EXPECT_NEAR(got.grad_norms[s], ref.grad_norms[s], 1e-4 * ref.grad_norms[s])
        << what << " step " << s + 1;
  }
}

// The largest per-step loss difference of two runs of the same length (a
// setting that must change the training leaves the other curve).
inline double LargestLossGap(const StepLog& a, const StepLog& b) {
  EXPECT_EQ(a.losses.size(), b.losses.size());
  double largest = 0.0;
  for (size_t s = 0; s < std::min(a.losses.size(), b.losses.size()); ++s) {
    largest = std::max(largest, std::abs(a.losses[s] - b.losses[s]));
  }
  return largest;
}

// max|got - ref| <= 1e-5 max|ref| (+ 1e-7 for tensors that are ~0).
inline void ExpectClose(const torch::Tensor& got, const torch::Tensor& ref,
                        const std::string& what) {
  ASSERT_EQ(got.sizes(), ref.sizes()) << what;
  const double diff = (got - ref).abs().max().item<double>();
  EXPECT_LE(diff, 1e-7 + 1e-5 * ref.abs().max().item<double>()) << what;
}

// `fulcrum score --grads` with `model_args` (--model DIR [--adapter DIR]) on
// the fixture batch under each layout, outputs under `dir`: every tensor of
// the single-rank output (logits, loss, grad.*) within ExpectClose.
inline void ExpectModelScoresMatchSingleRank(const std::string& model_args,
                                             const std::vector<Layout>& layouts,
                                             const std::string& dir) {
  const std::string base =
      "score " + model_args + " --batch " + FixturesDir() + "/batch.safetensors --grads --out ";
  const CommandResult single = RunFulcrum(base + dir + "/single.safetensors");
  ASSERT_EQ(single.exit_code, 0) << single.output;
  const Tensors ref = ReadTensors(dir + "/single.safetensors");
  for (size_t i = 0; i < layouts.size(); ++i) {
    const Layout& layout = layouts[i];
    const std::string out = absl::StrCat(dir, "/layout", i, ".safetensors");
    const CommandResult r = RunFulcrum(base + out + " " + layout.overrides, layout.ranks);
    ASSERT_EQ(r.exit_code, 0) << layout.overrides << "\n" << r.output;
    const Tensors got = ReadTensors(out);
    ASSERT_EQ(got.size(), ref.size()) << layout.overrides;
    for (const auto& [name, tensor] : ref) {
      ASSERT_TRUE(got.count(name)) << layout.overrides << ": missing " << name;
      ExpectClose(got.at(name), tensor, layout.overrides + ": " + name);
    }
  }
}

// The same for a fixture family, with its LoRA adapter when `adapter`.
inline void ExpectScoresMatchSingleRank(const std::string& family, bool adapter,
                                        const std::vector<Layout>& layouts) {
  ExpectModelScoresMatchSingleRank(
      "--model " + FixturesDir() + "/" + family + "/model" +
          (adapter ? " --adapter " + FixturesDir() + "/" + family + "/lora" : ""),
      layouts, ScratchDir());
}

// 10 AdamW steps on the fixture, clipping at 0.5 (below the fixtures' first
// gradient norms, so clipping is exercised), 4 rows of 16 tokens per step in
// micro-batches of 1 (so dp 4 has one each and dp 2 accumulates two).
inline std::string LayoutRecipe(const std::string& model, const std::string& data,
                                const std::string& method, const std::string& dir) {
  return absl::StrCat("model:\n  path: ", model, "\ndata:\n  path: ", data,
                      "\n  shuffle: true\n  pack: true\nfinetune:\n  method: ", method,
                      "\n  lora:\n    rank: 4\n    alpha: 8\n    targets: [all-linear]\n"
                      "optim:\n  lr: 0.002\n  weight_decay: 0.01\n  grad_clip: 0.5\n"
                      "schedule:\n  type: cosine\n  warmup_steps: 2\n"
                      "batch:\n  global_batch: 4\n  micro_batch: 1\n  seq_len: 16\n"
                      "train:\n  steps: 10\nlogging:\n  metrics_file: ",
                      dir, "/metrics.jsonl\n  peak_flops: 1.0e9\nseed: 5\n");
}

// Exports the training checkpoints DIR/ckpt of two runs as merged HF models
// (DIR/merged) and expects the same tensors: within 1e-4 of each tensor's
// max, since Adam moves rounding-level gradient differences by ~1e-3 of a step.
inline void ExpectSameMergedExports(const std::string& ref_dir, const std::string& got_dir) {
  for (const std::string& dir : {ref_dir, got_dir}) {
    const CommandResult r =
        RunFulcrum("export --checkpoint " + dir + "/ckpt --format merged --out " + dir + "/merged");
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  const Tensors ref = ReadTensors(ref_dir + "/merged/model.safetensors");
  const Tensors got = ReadTensors(got_dir + "/merged/model.safetensors");
  ASSERT_EQ(got.size(), ref.size());
  for (const auto& [name, tensor] : ref) {
    ASSERT_TRUE(got.count(name)) << "missing " << name;
    const double diff = (got.at(name) - tensor).abs().max().item<double>();
    EXPECT_LE(diff, 1e-7 + 1e-4 * tensor.abs().max().item<double>()) << name;
  }
}

// Every tensor of a sharded training checkpoint (model/..., optimizer/...)
// but the generators', assembled whole.
inline Tensors ReadCheckpointTensors(const std::string& step_dir) {
  Tensors out;
  auto reader = checkpoint::ShardedCheckpointReader::Open(step_dir);
  EXPECT_TRUE(reader.ok()) << reader.status();
  if (!reader.ok()) return out;
  for (const auto& [name, saved] : (*reader)->metadata().tensors) {
    if (name.rfind("rng/", 0) == 0) continue;
    auto tensor = (*reader)->ReadWhole(name);
    EXPECT_TRUE(tensor.ok()) << tensor.status();
    if (tensor.ok()) out[name] = *tensor;
  }
  return out;
}

// Trains `model` on `data` with LayoutRecipe(method) in `dir` under the
// parallel `overrides` on `ranks` ranks (a failed run is a test failure);
// the run's step log.
inline StepLog TrainLayout(const std::string& model, const std::string& data,
                           const std::string& method, const std::string& dir,
                           const std::string& overrides, int ranks) {
  WriteFile(dir + "/recipe.yaml", LayoutRecipe(model, data, method, dir));
  const CommandResult r = RunFulcrum("train " + dir + "/recipe.yaml " + overrides, ranks);
  EXPECT_EQ(r.exit_code, 0) << overrides << "\n" << r.output;
  return ReadStepLog(dir + "/metrics.jsonl");
}

// The dense fixture families, each with and without its LoRA adapter: the
// parameters of a score test, and their test names ("llama_adapter").
using FamilyAndAdapter = std::tuple<std::string, bool>;
inline auto DenseFamiliesWithAndWithoutAdapter() {
  return ::testing::Combine(::testing::Values("llama", "llama_tied", "qwen2"), ::testing::Bool());
}
inline std::string FamilyAndAdapterName(const ::testing::TestParamInfo<FamilyAndAdapter>& info) {
  return std::get<0>(info.param) + (std::get<1>(info.param) ? "_adapter" : "_base");
}

}  // namespace fulcrum::testing
