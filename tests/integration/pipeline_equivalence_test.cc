// Pipeline parallelism keeps the central contract, end to end through the
// binary: every schedule (gpipe, 1f1b, interleaved 1f1b, zb_h1), at pp 2 and
// 4, uneven stage splits, and pp composed with tp (with and without
// sequence parallelism: the stages then exchange sequence shards), dp +
// ZeRO-1 and both (8 ranks) reproduce the single-rank run's per-step losses (10 AdamW steps,
// clipping active) within 1e-5 relative, for tied and untied embeddings,
// full and LoRA; `fulcrum score --grads` under pp gives the single-rank
// logits, loss and gradients of the fixtures; and a pp checkpoint holds the
// whole model (its export equals the single-rank run's).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/integration/fixture_compare.h"
#include "tests/integration/train_recipes.h"
#include "tests/test_support.h"

namespace fulcrum::testing {
namespace {

struct Layout {
  std::string overrides;
  int ranks;
};

struct StepLog {
  std::vector<double> losses;
  std::vector<double> grad_norms;
};

StepLog ReadStepLog(const std::string& path) {
  StepLog log;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line);
    if (!j.contains("loss")) continue;
    log.losses.push_back(j.at("loss").get<double>());
    log.grad_norms.push_back(j.at("grad_norm").get<double>());
  }
  return log;
}

// An 8-layer variant of the llama fixture's config (tied or not), randomly
// initialised by `fulcrum init` under dir/model.
std::string EightLayerModel(const std::string& dir, bool tied) {
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
std::string PipelineRecipe(const std::string& model, const std::string& data,
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

void ExpectSameCurve(const StepLog& got, const StepLog& ref, const std::string& what) {
  ASSERT_EQ(got.losses.size(), ref.losses.size()) << what;
  for (size_t s = 0; s < ref.losses.size(); ++s) {
    EXPECT_NEAR(got.losses[s], ref.losses[s], 1e-5 * std::abs(ref.losses[s]))
        << what << " step " << s + 1;
    EXPECT_NEAR(got.grad_norms[s], ref.grad_norms[s], 1e-4 * ref.grad_norms[s])
        << what << " step " << s + 1;
  }
}

struct Case {
  bool tied;
  std::string method;
  std::vector<Layout> layouts;
};

class PipelineEquivalenceTest : public ::testing::TestWithParam<Case> {};

TEST_P(PipelineEquivalenceTest, EveryLayoutReproducesTheSingleRankLossCurve) {
  const Case& c = GetParam();
  const std::string root = ScratchDir();
  const std::string data = root + "/data.jsonl";
  WriteTinyData(data, 96, 512);
  const std::string model = EightLayerModel(root, c.tied);
  auto run = [&](const std::string& name, const std::string& overrides, int ranks) {
    const std::string dir = root + "/" + name;
    WriteFile(dir + "/recipe.yaml", PipelineRecipe(model, data, c.method, dir));
    const CommandResult r = RunFulcrum("train " + dir + "/recipe.yaml " + overrides, ranks);
    EXPECT_EQ(r.exit_code, 0) << overrides << "\n" << r.output;
    return ReadStepLog(dir + "/metrics.jsonl");
  };
  const StepLog single = run("single", "", 1);
  ASSERT_EQ(single.losses.size(), 10u);
  ASSERT_GT(single.grad_norms.front(), c.method == "lora" ? 0.2 : 0.5)
      << "clipping must be active in this test";
  for (size_t i = 0; i < c.layouts.size(); ++i) {
    const Layout& layout = c.layouts[i];
    ExpectSameCurve(run(absl::StrCat("layout", i), layout.overrides, layout.ranks), single,
                    layout.overrides);
  }
}

const std::vector<Layout> kEverySchedule = {
    {"parallel.pp=2 parallel.pp_schedule=gpipe", 2},
    {"parallel.pp=2 parallel.pp_schedule=1f1b", 2},
    {"parallel.pp=2 parallel.pp_schedule=zb_h1", 2},
    {"parallel.pp=2 parallel.pp_schedule=interleaved_1f1b parallel.pp_virtual=2", 2},
    {"parallel.pp=4 parallel.pp_schedule=gpipe", 4},
    {"parallel.pp=4 parallel.pp_schedule=1f1b", 4},
    {"parallel.pp=4 parallel.pp_schedule=zb_h1", 4},
    {"parallel.pp=4 parallel.pp_schedule=interleaved_1f1b parallel.pp_virtual=2", 4},
    {"parallel.pp=2 parallel.pp_layers=[3,5]", 2},
};

const std::vector<Layout> kComposed = {
    {"parallel.pp=2 parallel.tp=2", 4},
    {"parallel.pp=2 parallel.tp=2 parallel.sequence_parallel=true", 4},
    {"parallel.pp=2 parallel.dp=2 parallel.zero=1", 4},
    {"parallel.pp=2 parallel.tp=2 parallel.dp=2 parallel.pp_schedule=zb_h1", 8},
};

INSTANTIATE_TEST_SUITE_P(
    Layouts, PipelineEquivalenceTest,
    ::testing::Values(Case{false, "full", kEverySchedule}, Case{true, "lora", kEverySchedule},
                      Case{true, "full", kComposed}, Case{false, "lora", kComposed}),
    [](const auto& info) {
      return std::string(info.param.tied ? "tied_" : "untied_") + info.param.method + "_" +
             (info.param.layouts.size() == kComposed.size() ? "composed" : "schedules");
    });

// max|got - ref| <= 1e-5 max|ref| (+ 1e-7 for tensors that are ~0).
void ExpectClose(const torch::Tensor& got, const torch::Tensor& ref, const std::string& what) {
  ASSERT_EQ(got.sizes(), ref.sizes()) << what;
  const double diff = (got - ref).abs().max().item<double>();
  EXPECT_LE(diff, 1e-7 + 1e-5 * ref.abs().max().item<double>()) << what;
}

class PipelineScoreTest : public ::testing::TestWithParam<std::tuple<std::string, bool>> {};

TEST_P(PipelineScoreTest, GradientsUnderPipelineLayoutsEqualTheSingleRankOnes) {
  const auto& [family, adapter] = GetParam();
  const std::string root = ScratchDir();
  const std::string base = "score --model " + FixturesDir() + "/" + family + "/model" +
                           (adapter ? " --adapter " + FixturesDir() + "/" + family + "/lora" : "") +
                           " --batch " + FixturesDir() + "/batch.safetensors --grads --out ";
  const CommandResult single = RunFulcrum(base + root + "/single.safetensors");
  ASSERT_EQ(single.exit_code, 0) << single.output;
  const Tensors ref = ReadTensors(root + "/single.safetensors");
  const std::vector<Layout> layouts = {
      {"parallel.pp=2", 2}, {"parallel.pp=2 parallel.tp=2", 4}, {"parallel.pp=2 parallel.dp=2", 4}};
  for (size_t i = 0; i < layouts.size(); ++i) {
    const Layout& layout = layouts[i];
    const std::string out = absl::StrCat(root, "/layout", i, ".safetensors");
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

INSTANTIATE_TEST_SUITE_P(Fixtures, PipelineScoreTest,
                         ::testing::Combine(::testing::Values("llama", "llama_tied", "qwen2"),
                                            ::testing::Bool()),
                         [](const auto& info) {
                           return std::get<0>(info.param) +
                                  (std::get<1>(info.param) ? "_adapter" : "_base");
                         });

// A pp checkpoint holds every stage's tensors: the merged export of a LoRA
// run under pp2 x dp2 with ZeRO-1 is the single-rank run's, and resuming it
// under pp 2 continues the single-rank loss curve.
TEST(PipelineCheckpointTest, PipelineRunExportsAndResumesLikeTheSingleRankRun) {
  const std::string root = ScratchDir();
  const std::string data = root + "/data.jsonl";
  WriteTinyData(data, 96, 512);
  const std::string model = EightLayerModel(root, /*tied=*/true);
  auto train = [&](const std::string& name, const std::string& overrides, int ranks) {
    const std::string dir = root + "/" + name;
    WriteFile(dir + "/recipe.yaml", PipelineRecipe(model, data, "lora", dir));
    const CommandResult r = RunFulcrum("train " + dir + "/recipe.yaml checkpoint.dir=" + dir +
                                           "/ckpt checkpoint.every=5 " + overrides,
                                       ranks);
    EXPECT_EQ(r.exit_code, 0) << overrides << "\n" << r.output;
    return dir;
  };
  const std::string single = train("single", "", 1);
  const std::string piped = train("piped", "parallel.pp=2 parallel.dp=2 parallel.zero=1", 4);
  for (const std::string& dir : {single, piped}) {
    const CommandResult r =
        RunFulcrum("export --checkpoint " + dir + "/ckpt --format merged --out " + dir + "/merged");
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  const Tensors ref = ReadTensors(single + "/merged/model.safetensors");
  const Tensors got = ReadTensors(piped + "/merged/model.safetensors");
  ASSERT_EQ(got.size(), ref.size());
  for (const auto& [name, tensor] : ref) {
    ASSERT_TRUE(got.count(name)) << "missing " << name;
    // As in LayoutExportTest: Adam moves rounding-level gradients by ~1e-3 of a step.
    const double diff = (got.at(name) - tensor).abs().max().item<double>();
    EXPECT_LE(diff, 1e-7 + 1e-4 * tensor.abs().max().item<double>()) << name;
  }
  // Resume the pp run's step-5 checkpoint under pp 2 (another layout).
  const std::string resumed = root + "/resumed";
  WriteFile(resumed + "/recipe.yaml", PipelineRecipe(model, data, "lora", resumed));
  const CommandResult r =
      RunFulcrum("train " + resumed + "/recipe.yaml checkpoint.dir=" + resumed +
                     "/ckpt checkpoint.resume=" + piped + "/ckpt/step-00000005 parallel.pp=2",
                 2);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const StepLog tail = ReadStepLog(resumed + "/metrics.jsonl");
  const StepLog full = ReadStepLog(single + "/metrics.jsonl");
  ASSERT_EQ(tail.losses.size(), 5u);
  for (size_t s = 0; s < 5; ++s) {
    EXPECT_NEAR(tail.losses[s], full.losses[s + 5], 1e-5 * std::abs(full.losses[s + 5]))
        << "resumed step " << s + 6;
  }
}

}  // namespace
}  // namespace fulcrum::testing
