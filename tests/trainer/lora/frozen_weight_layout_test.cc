#include "trainer/lora/frozen_weight_layout.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "trainer/lora/apply_lora.h"
#include "trainer/lora/lora_linear.h"
#include "trainer/models/matrix_product.h"

namespace fulcrum::lora {
namespace {

// Layers named after the bench Llama's roles, at sizes that hit the rule.
struct Layers : torch::nn::Module {
  Layers() {
    const auto options = torch::TensorOptions().dtype(torch::kFloat);
    up = register_module("up", LoraLinear(1024, 48, false, options));            // moves
    square = register_module("square", LoraLinear(1024, 1024, false, options));  // stays
    down = register_module("down", LoraLinear(48, 1024, false, options));        // stays
    for (auto& p : parameters()) p.data().normal_(0.0, 0.02);
  }
  LoraLinear up{nullptr}, square{nullptr}, down{nullptr};
};

LoraOptions AllLinear() {
  LoraOptions o;
  o.spec.rank = 4;
  o.spec.alpha = 8.0;
  o.targets = {"all-linear"};
  o.seed = 7;
  return o;
}

TEST(FrozenWeightLayoutTest, RuleTakesRowsThatAliasAndColumnsThatDoNot) {
  EXPECT_TRUE(AliasedRowsMoveColumnMajor(2816, 1024));   // gate/up
  EXPECT_TRUE(AliasedRowsMoveColumnMajor(256, 1024));    // k/v
  EXPECT_TRUE(AliasedRowsMoveColumnMajor(32000, 1024));  // lm_head
  EXPECT_FALSE(AliasedRowsMoveColumnMajor(1024, 1024));  // q/o: columns alias too
  EXPECT_FALSE(AliasedRowsMoveColumnMajor(1024, 2816));  // down: rows do not alias
  EXPECT_FALSE(AliasedRowsMoveColumnMajor(1, 1024));
}

TEST(FrozenWeightLayoutTest, MovesFrozenWeightsKeepingValuesAndProducts) {
  torch::manual_seed(0);
  Layers moved_model, reference;
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < moved_model.parameters().size(); ++i) {
      moved_model.parameters()[i].copy_(reference.parameters()[i]);
    }
  }
  ASSERT_TRUE(ApplyLora(moved_model, AllLinear()).ok());
  ASSERT_TRUE(ApplyLora(reference, AllLinear()).ok());
  for (Layers* m : {&moved_model, &reference}) {
    torch::NoGradGuard no_grad;
    m->up->lora_b().fill_(0.05);  // adapters that change the output
  }
  const int64_t moved = StoreAliasedFrozenWeightsColumnMajor(moved_model);
  if (!models::MatrixProductUsesOneDnn()) {
    EXPECT_EQ(moved, 0);  // the measurement behind the rule is oneDNN's
    return;
  }
  EXPECT_EQ(moved, 1);
  const torch::Tensor& w = moved_model.up->weight;
  EXPECT_EQ(w.sizes(), torch::IntArrayRef({48, 1024}));
  EXPECT_EQ(w.strides(), torch::IntArrayRef({1, 48}));
  EXPECT_FALSE(w.requires_grad());
  EXPECT_TRUE(torch::equal(w, reference.up->weight));
  EXPECT_TRUE(moved_model.square->weight.is_contiguous());
  EXPECT_TRUE(moved_model.down->weight.is_contiguous());

  // Forward and the gradients of the input and adapters: the same products
  // on another layout of the same values.
  const torch::Tensor x = torch::randn({64, 1024});
  torch::Tensor grads[2][3];
  torch::Tensor outputs[2];
  int i = 0;
  for (Layers* m : {&moved_model, &reference}) {
    const torch::Tensor input = x.clone().requires_grad_(true);
    outputs[i] = m->down(m->up(input));
    outputs[i].pow(2).sum().backward();
    grads[i][0] = input.grad();
    grads[i][1] = m->up->lora_a().grad();
    grads[i][2] = m->up->lora_b().grad();
    ++i;
  }
  EXPECT_TRUE(torch::allclose(outputs[0], outputs[1], 1e-5, 1e-6));
  for (int g = 0; g < 3; ++g) {
    EXPECT_TRUE(torch::allclose(grads[0][g], grads[1][g], 1e-5, 1e-7)) << "gradient " << g;
  }
  // Merging folds the adapter into the moved weight as into the dense one.
  MergeLora(moved_model);
  MergeLora(reference);
  EXPECT_TRUE(torch::allclose(moved_model.up->weight, reference.up->weight, 1e-6, 1e-7));
}

TEST(FrozenWeightLayoutTest, LeavesTrainedAndNonFp32WeightsDense) {
  LoraLinear trained(1024, 48, false, torch::TensorOptions().dtype(torch::kFloat));
  trained->weight.data().normal_();
  EXPECT_EQ(StoreAliasedFrozenWeightsColumnMajor(*trained), 0);  // requires_grad
  EXPECT_TRUE(trained->weight.is_contiguous());
  LoraLinear bf16(1024, 48, false, torch::TensorOptions().dtype(torch::kBFloat16));
  bf16->weight.set_requires_grad(false);
  EXPECT_EQ(StoreAliasedFrozenWeightsColumnMajor(*bf16), 0);
  EXPECT_TRUE(bf16->weight.is_contiguous());
}

}  // namespace
}  // namespace fulcrum::lora
