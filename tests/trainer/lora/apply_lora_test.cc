#include "trainer/lora/apply_lora.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <set>
#include <string>

#include "tests/trainer/lora/lora_test_model.h"

namespace fulcrum::lora {
namespace {

using testing::TinyModel;

LoraOptions Options(std::vector<std::string> targets, bool rslora = false) {
  LoraOptions o;
  o.spec.rank = 2;
  o.spec.alpha = 4.0;
  o.spec.rslora = rslora;
  o.targets = std::move(targets);
  return o;
}

std::set<std::string> AdaptedPaths(TinyModel& model) {
  std::set<std::string> out;
  for (const LoraLayer& l : LoraLayers(model)) {
    if (l.layer->has_adapter()) out.insert(l.path);
  }
  return out;
}

// Makes every lora_B non-zero so that adapters change the output.
void RandomizeB(TinyModel& model) {
  torch::NoGradGuard no_grad;
  for (const LoraLayer& l : LoraLayers(model)) {
    if (l.layer->has_adapter()) l.layer->lora_b().normal_(0, 0.3);
  }
}

TEST(ApplyLoraTest, AdaptsNamedTargetsAndFreezesTheRest) {
  TinyModel model;
  auto adapted = ApplyLora(model, Options({"q_proj", "v_proj"}));
  ASSERT_TRUE(adapted.ok()) << adapted.status();
  EXPECT_EQ(*adapted, 4);
  EXPECT_EQ(AdaptedPaths(model), (std::set<std::string>{"layers.0.q_proj", "layers.0.v_proj",
                                                        "layers.1.q_proj", "layers.1.v_proj"}));
  std::set<std::string> trainable;
  for (const auto& p : model.named_parameters()) {
    if (p.value().requires_grad()) trainable.insert(p.key());
  }
  EXPECT_EQ(trainable.size(), 8u);
  for (const std::string& name : trainable) {
    EXPECT_TRUE(name.find(".lora_A.weight") != std::string::npos ||
                name.find(".lora_B.weight") != std::string::npos)
        << name;
  }
  EXPECT_FALSE(model.norm.requires_grad());
  EXPECT_FALSE(model.lm_head->weight.requires_grad());
}

TEST(ApplyLoraTest, AllLinearExcludesLmHead) {
  TinyModel model;
  auto adapted = ApplyLora(model, Options({"all-linear"}));
  ASSERT_TRUE(adapted.ok()) << adapted.status();
  EXPECT_EQ(*adapted, 6);
  EXPECT_FALSE(model.lm_head->has_adapter());
  EXPECT_EQ(AdaptedPaths(model).count("layers.1.up_proj"), 1u);
}

TEST(ApplyLoraTest, UnknownTargetListsAvailableNames) {
  TinyModel model;
  auto adapted = ApplyLora(model, Options({"q_proj", "qproj"}));
  ASSERT_FALSE(adapted.ok());
  EXPECT_EQ(adapted.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(adapted.status().message(),
            "finetune.lora.targets: 'qproj' matches no linear layer (available: lm_head, q_proj, "
            "up_proj, v_proj)");
  EXPECT_TRUE(AdaptedPaths(model).empty());  // nothing attached on error
  EXPECT_TRUE(model.norm.requires_grad());
}

TEST(ApplyLoraTest, BadSpecAndDoubleAttachAreErrors) {
  TinyModel model;
  auto bad_rank = Options({"q_proj"});
  bad_rank.spec.rank = 0;
  EXPECT_NE(ApplyLora(model, bad_rank).status().message().find("finetune.lora.rank"),
            std::string::npos);
  auto bad_dropout = Options({"q_proj"});
  bad_dropout.spec.dropout = 1.0;
  EXPECT_FALSE(ApplyLora(model, bad_dropout).ok());
  EXPECT_FALSE(ApplyLora(model, Options({})).ok());
  ASSERT_TRUE(ApplyLora(model, Options({"q_proj"})).ok());
  EXPECT_EQ(ApplyLora(model, Options({"q_proj"})).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(ApplyLoraTest, ForwardUnchangedRightAfterAttach) {
  TinyModel model;
  torch::Tensor x = torch::randn({3, 4});
  torch::Tensor before = model.forward(x).detach();
  ASSERT_TRUE(ApplyLora(model, Options({"all-linear"})).ok());
  EXPECT_TRUE(torch::equal(model.forward(x).detach(), before));
  RandomizeB(model);
  EXPECT_FALSE(torch::allclose(model.forward(x).detach(), before));
}

TEST(ApplyLoraTest, MergeEqualsAdaptedForward) {
  TinyModel model;
  ASSERT_TRUE(ApplyLora(model, Options({"q_proj", "up_proj", "lm_head"})).ok());
  RandomizeB(model);
  torch::Tensor x = torch::randn({3, 4});
  torch::Tensor adapted = model.forward(x).detach();
  MergeLora(model);
  EXPECT_TRUE(AdaptedPaths(model).empty());
  for (const auto& item : model.named_parameters()) {
    EXPECT_EQ(item.key().find("lora_"), std::string::npos) << item.key();
  }
  EXPECT_TRUE(torch::allclose(model.forward(x).detach(), adapted, 1e-5, 1e-6));
}

TEST(ApplyLoraTest, RsLoraScaling) {
  for (bool rslora : {false, true}) {
    TinyModel model;
    auto options = Options({"q_proj"}, rslora);
    options.spec.rank = 4;
    options.spec.alpha = 8.0;
    ASSERT_TRUE(ApplyLora(model, options).ok());
    LoraLinearImpl& q = *model.layers[0]->as<testing::TinyBlockImpl>()->q_proj;
    EXPECT_DOUBLE_EQ(q.scaling(), rslora ? 4.0 : 2.0);
    RandomizeB(model);
    torch::Tensor x = torch::randn({3, 4});
    torch::Tensor base = torch::nn::functional::linear(x, q.weight);
    torch::Tensor delta = torch::matmul(torch::matmul(x, q.lora_a().t()), q.lora_b().t());
    EXPECT_TRUE(torch::allclose(q.forward(x), base + delta * (rslora ? 4.0 : 2.0), 1e-5, 1e-6));
  }
}

}  // namespace
}  // namespace fulcrum::lora
