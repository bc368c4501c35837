// Mixture-of-experts models under data and expert parallelism, end to end
// through the binary: the mixtral and deepseek_v2 fixtures (MoE layers,
// shared experts, latent attention) reproduce the single-rank run under dp 2,
// dp 2 with ZeRO-1, ep 2, ep 2 with ZeRO-1, ep 4 and ep 2 x expert-dp 2 with
// ZeRO-1, pp 2 (1F1B and zero-bubble), pp 2 x ep 2, tp 2 with sequence
// parallelism and ep 2 x tp 2 (per-step losses
// within 1e-5 relative over 10 AdamW steps with clipping active, and the
// validation loss), `fulcrum score --grads` gives the single-rank gradients
// (dp 2, ep 2, pp 2, tp 2 with sp), and a checkpoint written under ep holds every
// expert: its export is the single-rank run's and it resumes under another
// layout. Ranks route different tokens, so an expert may get no token on one
// rank: its zero gradient must still join the reduction.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "tests/integration/fixture_compare.h"
#include "tests/integration/layout_compare.h"
#include "tests/integration/train_recipes.h"
#include "tests/test_support.h"

namespace fulcrum::testing {
namespace {

class MoeLayoutTest : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(MoeLayoutTest, DataParallelReproducesTheSingleRankLossCurve) {
  // Named copies, not a structured binding: a lambda below captures them.
  const std::string family = std::get<0>(GetParam()), method = std::get<1>(GetParam());
  const std::string root = ScratchDir();
  const std::string data = root + "/data.jsonl";
  WriteTinyData(data, 64, 512);
  const std::string model = FixturesDir() + "/" + family + "/model";
  auto run = [&](const std::string& name, const std::string& overrides, int ranks) {
    return TrainLayout(model, data, method, root + "/" + name, overrides, ranks);
  };
  const StepLog single = run("single", "", 1);
  ASSERT_EQ(single.losses.size(), 10u);
  ASSERT_GT(single.grad_norms.front(), 0.5) << "clipping must be active in this test";
  ExpectSameCurve(run("dp2", "parallel.dp=2", 2), single, "parallel.dp=2");
  ExpectSameCurve(run("dp2_zero1", "parallel.dp=2 parallel.zero=1", 2), single,
                  "parallel.dp=2 parallel.zero=1");
  // Each rank holds 4 of the 8 experts; tokens cross ranks both ways.
  ExpectSameCurve(run("ep2", "parallel.dp=2 parallel.ep=2", 2), single,
                  "parallel.dp=2 parallel.ep=2");
  ExpectSameCurve(run("ep2_zero1", "parallel.dp=2 parallel.ep=2 parallel.zero=1", 2), single,
                  "parallel.dp=2 parallel.ep=2 parallel.zero=1");
}

// Pipeline stages hold whole MoE / latent-attention layers: pp 2 under 1F1B
// and zero-bubble (whose split backward defers the experts' weight
// gradients; also with every layer recomputed), and pp 2 x ep 2 with the
// switch balance loss on 4 ranks, give the single-rank curve, balance loss
// and expert loads.
class MoePipelineLayoutTest : public ::testing::TestWithParam<std::string> {};

TEST_P(MoePipelineLayoutTest, PipelineStagesReproduceTheSingleRankLossCurve) {
  const std::string& family = GetParam();
  const std::string root = ScratchDir();
  const std::string data = root + "/data.jsonl";
  WriteTinyData(data, 64, 512);
  const std::string model = FixturesDir() + "/" + family + "/model";
  // deepseek_v2 has 3 layers: its dense first layer alone on stage 0.
  const std::string pp =
      family == "deepseek_v2" ? "parallel.pp=2 'parallel.pp_layers=[1,2]'" : "parallel.pp=2";
  const std::string balance = " moe.aux_loss=switch moe.aux_loss_coeff=0.5";
  auto run = [&](const std::string& name, const std::string& overrides, int ranks) {
    return TrainLayout(model, data, "lora", root + "/" + name, overrides + balance, ranks);
  };
  const StepLog single = run("single", "", 1);
  for (const std::string schedule : {"1f1b", "zb_h1"}) {
    const std::string layout = pp + " parallel.pp_schedule=" + schedule;
    ExpectSameCurve(run(schedule, layout, 2), single, layout);
  }
  // Recomputed MoE layers count their loads and balance loss once.
  const std::string recomputed = pp + " parallel.pp_schedule=zb_h1 train.recompute=full";
  ExpectSameCurve(run("zb_h1_recompute", recomputed, 2), single, recomputed);
  const std::string layout = pp + " parallel.dp=2 parallel.ep=2";
  ExpectSameCurve(run("pp2_ep2", layout, 4), single, layout);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, MoePipelineLayoutTest,
                         ::testing::Values("mixtral", "deepseek_v2"),
                         [](const auto& info) { return info.param; });

// Four ranks: 2 experts each (ep 4), and two expert groups of 4 experts whose
// gradients are summed over the expert-data-parallel pairs (ep 2 x dp 4,
// ZeRO-1 sharding the experts' state over those pairs). With a validation
// split (its rows do not divide evenly: a rank joins the all-to-alls of a
// forward without rows of its own).
class MoeFourRankLayoutTest : public ::testing::TestWithParam<std::string> {};

TEST_P(MoeFourRankLayoutTest, ExpertParallelLayoutsReproduceTheSingleRankLossCurve) {
  const std::string& family = GetParam();
  const std::string root = ScratchDir();
  const std::string data = root + "/data.jsonl";
  WriteTinyData(data, 70, 512);
  const std::string model = FixturesDir() + "/" + family + "/model";
  const std::string eval = " data.validation.fraction=0.15 train.eval_every=5";
  auto run = [&](const std::string& name, const std::string& overrides, int ranks) {
    return TrainLayout(model, data, "full", root + "/" + name, overrides + eval, ranks);
  };
  const StepLog single = run("single", "", 1);
  ASSERT_EQ(single.val_losses.size(), 2u);
  const std::vector<std::pair<std::string, std::string>> layouts = {
      {"ep4", "parallel.dp=4 parallel.ep=4"},
      {"ep2_edp2_zero1", "parallel.dp=4 parallel.ep=2 parallel.zero=1"}};
  for (const auto& [name, layout] : layouts) {
    ExpectSameCurve(run(name, layout, 4), single, layout);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, MoeFourRankLayoutTest,
                         ::testing::Values("mixtral", "deepseek_v2"),
                         [](const auto& info) { return info.param; });

// Tensor parallelism inside the experts (expert TP = tp: every expert and
// the shared ones split as a dense MLP, the routing replicated) and over the
// heads of latent attention: tp 2 with sequence parallelism and ep 2 x tp 2
// (ZeRO-1 for LoRA) reproduce the single-rank curve, the switch balance loss
// and the expert loads.
class MoeTensorParallelTest
    : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(MoeTensorParallelTest, ExpertTensorParallelLayoutsReproduceTheSingleRankLossCurve) {
  // Named copies, not a structured binding: a lambda below captures them.
  const std::string family = std::get<0>(GetParam()), method = std::get<1>(GetParam());
  const std::string root = ScratchDir();
  const std::string data = root + "/data.jsonl";
  WriteTinyData(data, 64, 512);
  const std::string model = FixturesDir() + "/" + family + "/model";
  const std::string balance = " moe.aux_loss=switch moe.aux_loss_coeff=0.5";
  auto run = [&](const std::string& name, const std::string& overrides, int ranks) {
    return TrainLayout(model, data, method, root + "/" + name, overrides + balance, ranks);
  };
  const StepLog single = run("single", "", 1);
  const std::string zero = method == "lora" ? " parallel.zero=1" : "";
  const std::vector<std::tuple<std::string, std::string, int>> layouts = {
      {"tp2_sp", "parallel.tp=2 parallel.sequence_parallel=true", 2},
      {"ep2_tp2", "parallel.dp=2 parallel.ep=2 parallel.tp=2" + zero, 4}};
  for (const auto& [name, layout, ranks] : layouts) {
    ExpectSameCurve(run(name, layout, ranks), single, layout);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, MoeTensorParallelTest,
                         ::testing::Combine(::testing::Values("mixtral", "deepseek_v2"),
                                            ::testing::Values("full", "lora")),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" + std::get<1>(info.param);
                         });

// LoRA on the routers when the recipe names "gate": the adapted routing
// trains (the curve leaves all-linear's), ep 2 x tp 2 reproduces it, and a
// PEFT export carries the router adapters with a warning about where they
// load.
TEST(MoeRouterLoraTest, NamedRouterAdaptersTrainAlikeUnderExpertAndTensorParallelism) {
  const std::string root = ScratchDir();
  const std::string data = root + "/data.jsonl";
  WriteTinyData(data, 64, 512);
  const std::string model = FixturesDir() + "/mixtral/model";
  auto run = [&](const std::string& name, const std::string& overrides, int ranks) {
    const std::string dir = root + "/" + name;
    return TrainLayout(model, data, "lora", dir, "checkpoint.dir=" + dir + "/ckpt " + overrides,
                       ranks);
  };
  const StepLog plain = run("plain", "", 1);
  const std::string targets = "'finetune.lora.targets=[all-linear,gate]'";
  const StepLog single = run("single", targets, 1);
  EXPECT_GT(LargestLossGap(single, plain), 1e-6) << "the router adapters must change the training";
  ExpectSameCurve(run("ep2_tp2", targets + " parallel.dp=2 parallel.ep=2 parallel.tp=2", 4), single,
                  "ep2 x tp2 with router adapters");
  const std::string out = root + "/peft";
  const CommandResult r =
      RunFulcrum("export --checkpoint " + root + "/ep2_tp2/ckpt --format peft --out " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("are MoE routers"), std::string::npos) << r.output;
  const Tensors adapter = ReadTensors(out + "/adapter_model.safetensors");
  EXPECT_EQ(adapter.count("base_model.model.model.layers.1.block_sparse_moe.gate.lora_B.weight"),
            1u);
}

// A checkpoint written under ep 2 x dp 4 with ZeRO-1 holds every expert and
// its optimizer state: the merged export equals the single-rank run's, and
// resuming it under ep 2 on two ranks continues the single-rank loss curve.
TEST(MoeCheckpointTest, ExpertParallelRunExportsAndResumesLikeTheSingleRankRun) {
  const std::string root = ScratchDir();
  const std::string data = root + "/data.jsonl";
  WriteTinyData(data, 64, 512);
  const std::string model = FixturesDir() + "/mixtral/model";
  auto train = [&](const std::string& name, const std::string& overrides, int ranks) {
    const std::string dir = root + "/" + name;
    TrainLayout(model, data, "full", dir,
                "checkpoint.dir=" + dir + "/ckpt checkpoint.every=5 " + overrides, ranks);
    return dir;
  };
  const std::string single = train("single", "", 1);
  const std::string experts = train("experts", "parallel.dp=4 parallel.ep=2 parallel.zero=1", 4);
  ExpectSameMergedExports(single, experts);
  const std::string resumed = root + "/resumed";
  const StepLog tail = TrainLayout(
      model, data, "full", resumed,
      "checkpoint.resume=" + experts + "/ckpt/step-00000005 parallel.dp=2 parallel.ep=2", 2);
  const StepLog full = ReadStepLog(single + "/metrics.jsonl");
  ASSERT_EQ(tail.losses.size(), 5u);
  for (size_t s = 0; s < 5; ++s) {
    EXPECT_NEAR(tail.losses[s], full.losses[s + 5], 1e-5 * std::abs(full.losses[s + 5]))
        << "resumed step " << s + 6;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, MoeLayoutTest,
                         ::testing::Combine(::testing::Values("mixtral", "deepseek_v2"),
                                            ::testing::Values("full", "lora")),
                         [](const auto& info) {
                           return std::get<0>(info.param) + "_" + std::get<1>(info.param);
                         });

class MoeScoreTest : public ::testing::TestWithParam<FamilyAndAdapter> {};

TEST_P(MoeScoreTest, DataParallelGradientsEqualTheSingleRankOnes) {
  const auto& [family, adapter] = GetParam();
  // (The fixture batch has 2 sequences: at most dp 2.)
  const std::string pp =
      family == "deepseek_v2" ? "parallel.pp=2 'parallel.pp_layers=[1,2]'" : "parallel.pp=2";
  ExpectScoresMatchSingleRank(family, adapter,
                              {{"parallel.dp=2", 2},
                               {"parallel.dp=2 parallel.ep=2", 2},
                               {pp, 2},
                               {"parallel.tp=2 parallel.sequence_parallel=true", 2}});
}

INSTANTIATE_TEST_SUITE_P(Fixtures, MoeScoreTest,
                         ::testing::Combine(::testing::Values("mixtral", "deepseek_v2"),
                                            ::testing::Bool()),
                         FamilyAndAdapterName);

// A PEFT export of adapters on routed experts is written (transformers'
// per-expert modules load it) with a warning that engines fusing the experts
// may not apply them; an adapter without routed experts gets no warning.
TEST(MoeExportTest, PeftExportOfExpertAdaptersWarnsAboutFusedEngines) {
  const std::string root = ScratchDir();
  for (const std::string family : {"mixtral", "llama"}) {
    const std::string out = root + "/" + family;
    const CommandResult r =
        RunFulcrum("export --checkpoint " + FixturesDir() + "/" + family + "/model --adapter " +
                   FixturesDir() + "/" + family + "/lora --format peft --out " + out);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const Tensors adapter = ReadTensors(out + "/adapter_model.safetensors");
    const bool experts = family == "mixtral";
    EXPECT_EQ(adapter.count("base_model.model.model.layers.0.block_sparse_moe.experts.3.w2.lora_B."
                            "weight"),
              experts ? 1u : 0u);
    EXPECT_EQ(r.output.find("are routed experts") != std::string::npos, experts) << r.output;
    if (experts) {
      EXPECT_NE(r.output.find("48 of the adapter's 52 adapted modules"), std::string::npos)
          << r.output;
      EXPECT_NE(r.output.find("--format merged"), std::string::npos) << r.output;
    }
  }
}

// Layouts that cannot split these models, and expert parallelism where it
// cannot apply, fail at validation, on every rank, before training starts.
TEST(MoeValidationTest, UnsupportedLayoutsAreRefusedAtValidation) {
  const std::string root = ScratchDir();
  const std::string data = root + "/data.jsonl";
  WriteTinyData(data, 16, 512);
  for (const std::string family : {"mixtral", "deepseek_v2", "llama"}) {
    const std::string dir = root + "/" + family;
    WriteFile(dir + "/recipe.yaml",
              LayoutRecipe(FixturesDir() + "/" + family + "/model", data, "full", dir));
    const bool moe = family != "llama";
    // 4 heads do not split over 3 tp ranks.
    const std::string overrides = moe ? "parallel.tp=3" : "parallel.dp=2 parallel.ep=2";
    const std::string expected = moe ? "num_attention_heads 4 of " + FixturesDir() + "/" + family +
                                           "/model/config.json is not divisible by 3"
                                     : "needs a mixture-of-experts model";
    const CommandResult r = RunFulcrum("train " + dir + "/recipe.yaml " + overrides, moe ? 3 : 2);
    EXPECT_NE(r.exit_code, 0) << family << "\n" << r.output;
    EXPECT_NE(r.output.find(expected), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(moe ? "parallel.tp=3" : "parallel.ep"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("training steps"), std::string::npos) << r.output;
  }
  // A million experts cannot fit even at ep 2: refused before any allocation.
  {
    std::ifstream in(FixturesDir() + "/mixtral/model/config.json");
    nlohmann::json config = nlohmann::json::parse(in);
    config["num_local_experts"] = 1000000;
    WriteFile(root + "/huge/config.json", config.dump());
    const std::string dir = root + "/huge";
    const std::string model = FixturesDir() + "/mixtral/model";
    WriteFile(dir + "/recipe.yaml",
              absl::StrReplaceAll(LayoutRecipe(model, data, "full", dir),
                                  {{"path: " + model, "config: " + dir + "/config.json"}}));
    const CommandResult r =
        RunFulcrum("train " + dir + "/recipe.yaml parallel.dp=2 parallel.ep=2", 2);
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("parallel: this layout needs about"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("routed-expert parameters per rank at ep=2"), std::string::npos)
        << r.output;
    EXPECT_EQ(r.output.find("training steps"), std::string::npos) << r.output;
  }
  // 8 experts do not split over 3 ranks.
  const std::string dir = root + "/mixtral";
  const CommandResult r = RunFulcrum(
      "train " + dir + "/recipe.yaml parallel.dp=3 parallel.ep=3 batch.global_batch=3", 3);
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("do not split evenly over parallel.ep=3"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace fulcrum::testing
