// HF parity against ../shared/fixtures: logits, loss, every gradient and a
// 5-step AdamW loss curve of transformers 4.57 (fp32, eager attention).
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "tests/test_support.h"
#include "trainer/checkpoint/hf_weights.h"
#include "trainer/models/causal_lm.h"
#include "trainer/models/hf_loading.h"
#include "trainer/models/loss.h"
#include "trainer/models/model_config.h"
#include "trainer/models/moe_block.h"

namespace fulcrum::models {
namespace {

struct Fixture {
  CausalLM model{nullptr};
  checkpoint::HfWeights expected;
  ForwardInputs inputs;
  torch::Tensor labels;
};

torch::Tensor Expected(const checkpoint::HfWeights& expected, const std::string& name) {
  auto view = expected.View(name);
  EXPECT_TRUE(view.ok()) << view.status();
  return view.ok() ? view->clone() : torch::Tensor();
}

Fixture LoadFixture(const std::string& family) {
  const std::string dir = testing::FixturesDir() + "/" + family;
  auto config = LoadModelConfig(dir + "/model/config.json");
  EXPECT_TRUE(config.ok()) << config.status();
  auto weights = checkpoint::HfWeights::Open(dir + "/model");
  EXPECT_TRUE(weights.ok()) << weights.status();
  auto expected = checkpoint::HfWeights::Open(dir, "expected");
  EXPECT_TRUE(expected.ok()) << expected.status();
  Fixture f{
      CausalLM(*config, torch::TensorOptions().dtype(torch::kFloat)), std::move(*expected), {}, {}};
  const absl::Status loaded = LoadHfWeights(*f.model, *weights);
  EXPECT_TRUE(loaded.ok()) << loaded;
  f.inputs.input_ids = Expected(f.expected, "input_ids");
  f.inputs.attention_mask = Expected(f.expected, "attention_mask");
  f.labels = Expected(f.expected, "labels");
  return f;
}

// |got - ref| <= 1e-4 + 1e-4 |ref| where attention_mask == 1.
void ExpectLogitsMatch(const torch::Tensor& got, const torch::Tensor& ref,
                       const torch::Tensor& mask) {
  const torch::Tensor valid = mask.to(torch::kBool).unsqueeze(-1).expand_as(ref);
  const torch::Tensor excess = ((got - ref).abs() - (1e-4 + 1e-4 * ref.abs())).masked_select(valid);
  EXPECT_LE(excess.max().item<double>(), 0.0)
      << "max |diff| " << (got - ref).masked_select(valid).abs().max();
}

class HfParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HfParityTest, LogitsLossGradsAndAdamW) {
  Fixture f = LoadFixture(GetParam());
  ASSERT_TRUE(f.model);
  const torch::Tensor logits = f.model->forward(f.inputs);
  ExpectLogitsMatch(logits, Expected(f.expected, "logits"), f.inputs.attention_mask);
  const torch::Tensor loss = CausalLmLoss(logits, f.labels);
  EXPECT_NEAR(loss.item<double>(), Expected(f.expected, "loss")[0].item<double>(), 1e-5);
  EXPECT_EQ(CountTargets(f.labels), 25);
  EXPECT_NEAR((CrossEntropySum(logits, f.labels) / 25).item<double>(), loss.item<double>(), 1e-6);

  loss.backward();
  int64_t checked = 0;
  for (const auto& item : f.model->named_parameters()) {
    const std::string key = "grad." + item.key();
    ASSERT_TRUE(f.expected.Contains(key)) << key;
    const torch::Tensor ref = Expected(f.expected, key);
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    const double diff = (item.value().grad() - ref).abs().max().item<double>();
    EXPECT_LE(diff, 1e-8 + 1e-4 * ref.abs().max().item<double>()) << item.key();
    ++checked;
  }
  int64_t expected_grads = 0;
  for (const std::string& name : f.expected.Names())
    expected_grads += absl::StartsWith(name, "grad.");
  EXPECT_EQ(checked, expected_grads);

  // 5 AdamW steps on the same batch, weight decay on every parameter.
  torch::optim::AdamW adamw(f.model->parameters(), torch::optim::AdamWOptions(1e-3)
                                                       .betas(std::make_tuple(0.9, 0.95))
                                                       .eps(1e-8)
                                                       .weight_decay(0.1));
  adamw.zero_grad();
  const torch::Tensor ref_losses = Expected(f.expected, "adamw_losses");
  for (int64_t k = 0; k <= 5; ++k) {
    const torch::Tensor step_loss = CausalLmLoss(f.model->forward(f.inputs), f.labels);
    EXPECT_NEAR(step_loss.item<double>(), ref_losses[k].item<double>(), 1e-4) << "after step " << k;
    if (k == 5) break;
    step_loss.backward();
    adamw.step();
    adamw.zero_grad();
  }
  // Parameters after the 5 steps (meta.json's statistical rule: the first
  // step is ~lr*sign(g), so rounding-level gradients may flip an element).
  for (const auto& item : f.model->named_parameters()) {
    const torch::Tensor ref = Expected(f.expected, "param_after_adamw." + item.key());
    const torch::Tensor diff = (item.value().detach() - ref).abs();
    const torch::Tensor grad_ref = Expected(f.expected, "grad." + item.key()).abs();
    // Elements whose first-step gradient is at rounding level may take Adam's
    // ~lr*sign(g) step the other way (meta.json). In a tiny tensor (k_proj.bias
    // [32]: RoPE's low-frequency dims barely rotate it, so softmax's shift
    // invariance nearly cancels its gradient) one flip already exceeds the
    // fraction, so flips are allowed exactly where |g| is below the gradient
    // tolerance (1e-8 + 1e-4 max|g|): there the sign is not determined.
    const torch::Tensor flipped = diff.gt(1e-5);
    EXPECT_TRUE(grad_ref.masked_select(flipped).le(1e-4 * grad_ref.max() + 1e-8).all().item<bool>())
        << item.key() << " grads at differing elements: " << grad_ref.masked_select(flipped);
    if (grad_ref.numel() < 1000) continue;
    EXPECT_LE(diff.mean().item<double>(), 1e-6) << item.key();
    EXPECT_LE(diff.gt(1e-5).to(torch::kDouble).mean().item<double>(), 1e-3) << item.key();
  }
  torch::NoGradGuard no_grad;
  const torch::Tensor final_ref = Expected(f.expected, "adamw_final_logits");
  const torch::Tensor valid =
      f.inputs.attention_mask.to(torch::kBool).unsqueeze(-1).expand_as(final_ref);
  const torch::Tensor final_got = f.model->forward(f.inputs);
  const torch::Tensor excess =
      ((final_got - final_ref).abs() - (5e-3 + 1e-3 * final_ref.abs())).masked_select(valid);
  EXPECT_LE(excess.max().item<double>(), 0.0);
}

// The experts each router chose for each real token equal HF's
// (debug.router_topk.<router module>, [32, k] over the flattened batch); the
// order within a token's k choices is not part of the contract (HF's
// topk(sorted=False)), nor are padded tokens (meta.json states routing
// margins for real tokens only).
class RouterParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(RouterParityTest, ChosenExpertsMatchHf) {
  Fixture f = LoadFixture(GetParam());
  ASSERT_TRUE(f.model);
  torch::NoGradGuard no_grad;
  f.model->forward(f.inputs);
  const torch::Tensor real = f.inputs.attention_mask.reshape({-1}).to(torch::kBool);  // [32]
  int64_t routers = 0;
  for (const auto& item : f.model->named_modules()) {
    auto* block = item.value()->as<MoeBlockImpl>();
    if (block == nullptr) continue;
    const std::string key = "debug.router_topk." + item.key() + ".gate";
    ASSERT_TRUE(f.expected.Contains(key)) << key;
    const torch::Tensor ref = std::get<0>(Expected(f.expected, key).index({real}).sort(/*dim=*/1));
    const torch::Tensor got =
        std::get<0>(block->last_routing().expert_ids.index({real}).sort(/*dim=*/1));
    ASSERT_EQ(got.sizes(), ref.sizes()) << key;
    EXPECT_TRUE(got.equal(ref)) << key << "\ngot " << got << "\nref " << ref;
    ++routers;
  }
  int64_t expected_routers = 0;
  for (const std::string& name : f.expected.Names())
    expected_routers += absl::StartsWith(name, "debug.router_topk.");
  EXPECT_EQ(routers, expected_routers);
  EXPECT_GT(routers, 0);
}

INSTANTIATE_TEST_SUITE_P(MoeFamilies, RouterParityTest,
                         ::testing::Values("mixtral", "deepseek_v2"));

INSTANTIATE_TEST_SUITE_P(Families, HfParityTest,
                         ::testing::Values("llama", "llama_tied", "qwen2", "mixtral",
                                           "deepseek_v2"));

}  // namespace
}  // namespace fulcrum::models
