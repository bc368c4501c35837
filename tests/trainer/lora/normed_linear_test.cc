#include "trainer/lora/normed_linear.h"

#include <gtest/gtest.h>

#include <vector>

#include "tests/tensor_bytes.h"
#include "tests/tensor_compare.h"
#include "trainer/lora/lora_linear.h"

namespace fulcrum::lora {
namespace {

using models::RMSNorm;
using models::RmsNormOutput;
using testing::ExpectCloseToLargest;
using testing::KeptForBackward;

constexpr int64_t kDim = 48, kOut = 24, kRank = 4;

struct Case {
  const char* name;
  torch::ScalarType dtype;
  bool bias, full, adapter;
};

// An RMSNorm feeding two projections (as q and k, or gate and up).
struct Block {
  RMSNorm norm{nullptr};
  std::vector<LoraLinear> projections;
};

Block MakeBlock(const Case& c, double dropout = 0.0) {
  const auto options = torch::TensorOptions().dtype(c.dtype);
  Block block;
  block.norm = RMSNorm(kDim, 1e-5, options);
  {
    torch::NoGradGuard no_grad;
    block.norm->weight.copy_(1 + torch::randn({kDim}) / 4);
  }
  block.norm->weight.set_requires_grad(c.full);
  for (int i = 0; i < 2; ++i) {
    LoraLinear layer(kDim, kOut, c.bias, options);
    {
      torch::NoGradGuard no_grad;
      layer->weight.copy_(torch::randn({kOut, kDim}) / 6);
      if (c.bias) layer->bias.copy_(torch::randn({kOut}));
    }
    layer->weight.set_requires_grad(c.full);
    if (c.bias) layer->bias.set_requires_grad(c.full);
    if (c.adapter) {
      LoraSpec spec;
      spec.rank = kRank;
      spec.dropout = dropout;
      layer->AttachAdapter(spec);
      torch::NoGradGuard no_grad;
      layer->lora_b().normal_();  // B = 0 would hide the adapter's path
    }
    block.projections.push_back(layer);
  }
  return block;
}

// The sum of the projections through ForwardNormed (fused) or forward(y).
torch::Tensor Project(Block& block, const torch::Tensor& x, bool fused) {
  const RmsNormOutput normed = block.norm->ForwardRecomputable(x);
  torch::Tensor out;
  for (LoraLinear& layer : block.projections) {
    const torch::Tensor y = fused ? layer->ForwardNormed(normed) : layer->forward(normed.y);
    out = out.defined() ? out + y : y;
  }
  return out;
}

TEST(NormedLinearTest, ValuesAndGradientsAreThoseOfTheUnfusedLayers) {
  for (const Case& c : {Case{"full", torch::kFloat, false, true, false},
                        Case{"full with bias", torch::kFloat, true, true, false},
                        Case{"lora", torch::kFloat, false, false, true},
                        Case{"lora with bias", torch::kFloat, true, false, true},
                        Case{"full and adapter", torch::kFloat, false, true, true},
                        Case{"lora bf16", torch::kBFloat16, false, false, true}}) {
    SCOPED_TRACE(c.name);
    torch::manual_seed(3);
    Block fused = MakeBlock(c);
    torch::manual_seed(3);
    Block plain = MakeBlock(c);
    const torch::Tensor x0 = torch::randn({3, 5, kDim}).to(c.dtype);
    const torch::Tensor dy = torch::randn({3, 5, kOut});
    const torch::Tensor x1 = x0.clone().set_requires_grad(true);
    const torch::Tensor x2 = x0.clone().set_requires_grad(true);

    const torch::Tensor expected = Project(plain, x1, /*fused=*/false);
    const torch::Tensor got = Project(fused, x2, /*fused=*/true);
    ASSERT_EQ(got.scalar_type(), c.dtype);
    // The same GEMMs on the same y: forward values are bitwise equal.
    EXPECT_TRUE(torch::equal(got, expected));
    (expected.to(torch::kFloat) * dy).sum().backward();
    (got.to(torch::kFloat) * dy).sum().backward();
    const double tol = c.dtype == torch::kFloat ? 1e-6 : 4e-2;
    ExpectCloseToLargest(x2.grad(), x1.grad(), tol, "x");
    if (c.full)
      ExpectCloseToLargest(fused.norm->weight.grad(), plain.norm->weight.grad(), tol, "norm");
    for (size_t i = 0; i < fused.projections.size(); ++i) {
      const LoraLinear &f = fused.projections[i], &p = plain.projections[i];
      const std::string at = " of projection " + std::to_string(i);
      if (c.full) ExpectCloseToLargest(f->weight.grad(), p->weight.grad(), tol, "weight" + at);
      if (c.full && c.bias) ExpectCloseToLargest(f->bias.grad(), p->bias.grad(), tol, "bias" + at);
      if (c.adapter) {
        ExpectCloseToLargest(f->lora_a().grad(), p->lora_a().grad(), tol, "lora_A" + at);
        ExpectCloseToLargest(f->lora_b().grad(), p->lora_b().grad(), tol, "lora_B" + at);
      }
    }
  }
}

// Where y cannot be computed again the entry is forward(y): adapter dropout
// in training (its mask), no autograd, an output without the norm's tensors.
TEST(NormedLinearTest, FallsBackWhereYCannotBeComputedAgain) {
  const Case lora{"lora", torch::kFloat, true, false, true};
  torch::manual_seed(5);
  Block block = MakeBlock(lora, /*dropout=*/0.3);
  LoraLinear& layer = block.projections[0];
  const torch::Tensor x = torch::randn({2, 7, kDim}, torch::requires_grad());
  const RmsNormOutput normed = block.norm->ForwardRecomputable(x);
  torch::manual_seed(11);
  const torch::Tensor expected = layer->forward(normed.y);
  torch::manual_seed(11);
  EXPECT_TRUE(torch::equal(layer->ForwardNormed(normed), expected));  // same mask
  layer->eval();
  EXPECT_TRUE(torch::equal(layer->ForwardNormed(RmsNormOutput::OutputOnly(normed.y)),
                           layer->forward(normed.y)));
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::equal(layer->ForwardNormed(normed), layer->forward(normed.y)));
}

TEST(NormedLinearTest, KeepsTheNormsTensorsButNotItsOutput) {
  const int64_t rows = 256;
  const int64_t low = rows * kRank * 4, rstd = rows * 4, output = rows * kDim * 4;
  const torch::Tensor x = torch::randn({rows, kDim}, torch::requires_grad());
  for (const Case& c : {Case{"lora", torch::kFloat, false, false, true},
                        Case{"full", torch::kFloat, false, true, false}}) {
    SCOPED_TRACE(c.name);
    torch::manual_seed(7);
    Block block = MakeBlock(c);
    const int64_t lows = c.adapter ? 2 * low : 0;
    // x is the caller's: the norm's rstd and the adapters' [N, r] are all
    // that is new.
    EXPECT_EQ(KeptForBackward([&] { return Project(block, x, /*fused=*/true); }), rstd + lows);
    EXPECT_GE(KeptForBackward([&] { return Project(block, x, /*fused=*/false); }),
              rstd + lows + output);
  }
}

}  // namespace
}  // namespace fulcrum::lora
