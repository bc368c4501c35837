#include "trainer/lora/swiglu_linear.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "parallel/runtime/caching_host_allocator.h"
#include "tests/tensor_bytes.h"
#include "tests/tensor_compare.h"
#include "trainer/lora/lora_linear.h"

namespace fulcrum::lora {
namespace {

using testing::ExpectCloseToLargest;
using testing::KeptForBackward;

constexpr int64_t kIn = 40, kOut = 24, kRank = 4;

struct Case {
  const char* name;
  torch::ScalarType dtype;
  bool bias, weight_trains, adapter;
};

// The same layer computed twice: once through SwiGluLinear, once as plain
// autograd ops on silu(gate) * up.
struct Layer {
  torch::Tensor weight, bias, a, b;
};

Layer MakeLayer(const Case& c) {
  Layer l;
  const auto opts = torch::TensorOptions().dtype(c.dtype);
  l.weight = (torch::randn({kOut, kIn}) / 6).to(opts).set_requires_grad(c.weight_trains);
  if (c.bias) l.bias = torch::randn({kOut}).to(opts).set_requires_grad(c.weight_trains);
  if (c.adapter) {
    l.a = (torch::randn({kRank, kIn}) / 6).to(opts).set_requires_grad(true);
    l.b = (torch::randn({kOut, kRank}) / 2).to(opts).set_requires_grad(true);
  }
  return l;
}

Layer Copy(const Layer& l) {
  const auto copy = [](const torch::Tensor& t) {
    return t.defined() ? t.detach().clone().set_requires_grad(t.requires_grad()) : t;
  };
  return Layer{copy(l.weight), copy(l.bias), copy(l.a), copy(l.b)};
}

torch::Tensor PlainSwiGluLinear(const torch::Tensor& gate, const torch::Tensor& up, const Layer& l,
                                double scaling) {
  const torch::Tensor p = torch::silu(gate) * up;
  torch::Tensor y = torch::nn::functional::linear(p, l.weight, l.bias);
  if (l.a.defined()) y = y + scaling * torch::matmul(torch::matmul(p, l.a.t()), l.b.t());
  return y;
}

TEST(SwiGluLinearTest, ValuesAndGradientsAreThoseOfThePlainOps) {
  const double scaling = 2.5;
  for (const Case& c : {Case{"full", torch::kFloat, false, true, false},
                        Case{"full with bias", torch::kFloat, true, true, false},
                        Case{"lora", torch::kFloat, false, false, true},
                        Case{"lora with bias", torch::kFloat, true, false, true},
                        Case{"frozen, no adapter", torch::kFloat, false, false, false},
                        Case{"full and adapter", torch::kFloat, false, true, true},
                        Case{"lora bf16", torch::kBFloat16, false, false, true}}) {
    SCOPED_TRACE(c.name);
    torch::manual_seed(3);
    const Layer fused = MakeLayer(c);
    const Layer plain = Copy(fused);
    const torch::Tensor gate0 = torch::randn({3, 5, kIn}).to(c.dtype);
    const torch::Tensor up0 = torch::randn({3, 5, kIn}).to(c.dtype);
    const torch::Tensor dy = torch::randn({3, 5, kOut});
    const torch::Tensor g1 = gate0.clone().set_requires_grad(true);
    const torch::Tensor u1 = up0.clone().set_requires_grad(true);
    const torch::Tensor g2 = gate0.clone().set_requires_grad(true);
    const torch::Tensor u2 = up0.clone().set_requires_grad(true);

    const torch::Tensor expected = PlainSwiGluLinear(g1, u1, plain, scaling);
    const torch::Tensor got =
        SwiGluLinear(g2, u2, fused.weight, fused.bias, fused.a, fused.b, scaling);
    ASSERT_EQ(got.scalar_type(), c.dtype);
    ASSERT_EQ(got.sizes(), expected.sizes());
    const double tol = c.dtype == torch::kFloat ? 1e-6 : 4e-2;
    ExpectCloseToLargest(got, expected, tol, "output");
    (expected.to(torch::kFloat) * dy).sum().backward();
    (got.to(torch::kFloat) * dy).sum().backward();
    ExpectCloseToLargest(g2.grad(), g1.grad(), tol, "gate");
    ExpectCloseToLargest(u2.grad(), u1.grad(), tol, "up");
    ExpectCloseToLargest(fused.weight.grad(), plain.weight.grad(), tol, "weight");
    if (c.bias) ExpectCloseToLargest(fused.bias.grad(), plain.bias.grad(), tol, "bias");
    if (c.adapter) {
      ExpectCloseToLargest(fused.a.grad(), plain.a.grad(), tol, "lora_A");
      ExpectCloseToLargest(fused.b.grad(), plain.b.grad(), tol, "lora_B");
    }
  }
}

LoraLinear MakeDown(bool bias, double dropout) {
  LoraLinear down(kIn, kOut, bias, torch::TensorOptions().dtype(torch::kFloat));
  {
    torch::NoGradGuard no_grad;
    down->weight.normal_(0, 0.2);
    if (bias) down->bias.normal_();
  }
  down->weight.set_requires_grad(false);
  if (bias) down->bias.set_requires_grad(false);
  LoraSpec spec;
  spec.rank = kRank;
  spec.dropout = dropout;
  down->AttachAdapter(spec);
  {
    torch::NoGradGuard no_grad;
    down->lora_b().normal_();  // B = 0 would hide the adapter's path
  }
  return down;
}

// LoraLinear's entry gives forward(SwiGlu(gate, up)) exactly: through the
// fused function without dropout, and through the fallback with dropout
// (the same mask for the same seed).
TEST(SwiGluLinearTest, LoraLinearEntryEqualsTheUnfusedForward) {
  for (const double dropout : {0.0, 0.3}) {
    SCOPED_TRACE(dropout);
    torch::manual_seed(5);
    LoraLinear down = MakeDown(/*bias=*/true, dropout);
    const torch::Tensor gate = torch::randn({2, 7, kIn}, torch::requires_grad());
    const torch::Tensor up = torch::randn({2, 7, kIn}, torch::requires_grad());
    torch::manual_seed(11);
    const torch::Tensor expected = down->forward(SwiGlu(gate, up));
    torch::manual_seed(11);
    const torch::Tensor got = down->ForwardSwiGlu(gate, up);
    EXPECT_TRUE(torch::allclose(got, expected, 1e-6, 1e-6)) << (got - expected).abs().max();
  }
}

TEST(SwiGluLinearTest, KeepsGateAndUpButNotTheirProduct) {
  const int64_t rows = 256;
  torch::manual_seed(7);
  LoraLinear down = MakeDown(/*bias=*/false, /*dropout=*/0.0);
  const torch::Tensor gate = torch::randn({rows, kIn}, torch::requires_grad());
  const torch::Tensor up = torch::randn({rows, kIn}, torch::requires_grad());
  const int64_t low = rows * kRank * 4, product = rows * kIn * 4;
  // gate and up are the caller's; the adapter's [N, r] is all that is new.
  EXPECT_EQ(KeptForBackward([&] { return down->ForwardSwiGlu(gate, up); }), low);
  EXPECT_GE(KeptForBackward([&] { return down->forward(SwiGlu(gate, up)); }), low + product);
  // Full fine-tuning: nothing new at all.
  down->MergeAdapter();
  down->weight.set_requires_grad(true);
  EXPECT_EQ(KeptForBackward([&] { return down->ForwardSwiGlu(gate, up); }), 0);
  EXPECT_GE(KeptForBackward([&] { return down->forward(SwiGlu(gate, up)); }), product);
}

// Backward is the first node of a step's last layer, where memory peaks: it
// adds two [N, in] buffers (the gate's gradient and dp, which becomes the
// up's) and a block of silu(gate) rows of at most 1 MiB, not four
// (silu(gate), dp * up and both gradients held at once). Counted by the
// caching host allocator, which sees tensors of 256 KiB and more: [12288,
// 40] fp32 is 1.9 MiB (and the adapter's [12288, 4] is not seen).
TEST(SwiGluLinearTest, BackwardAddsTwoInputSizedBuffers) {
  parallel::CachingHostAllocator* allocator = parallel::InstallCachingHostAllocator();
  const int64_t rows = 12288;
  const int64_t silu_block = int64_t{1} << 20;
  const int64_t product = rows * kIn * 4;
  torch::manual_seed(9);
  LoraLinear down = MakeDown(/*bias=*/false, /*dropout=*/0.0);
  const torch::Tensor gate = torch::randn({rows, kIn}, torch::requires_grad());
  const torch::Tensor up = torch::randn({rows, kIn}, torch::requires_grad());
  const torch::Tensor y = down->ForwardSwiGlu(gate, up);
  const torch::Tensor dy = torch::randn_like(y);
  const int64_t before = allocator->Stats().allocated_bytes;
  allocator->ResetPeak();
  y.backward(dy);
  const parallel::HostAllocatorStats after = allocator->Stats();
  EXPECT_EQ(after.allocated_bytes - before, 2 * product);  // the two gradients
  EXPECT_LE(after.peak_allocated_bytes - before, 2 * product + silu_block);
  // And they are the gradients: against the unfused layer.
  const torch::Tensor g2 = gate.detach().clone().requires_grad_(true);
  const torch::Tensor u2 = up.detach().clone().requires_grad_(true);
  down->forward(SwiGlu(g2, u2)).backward(dy);
  ExpectCloseToLargest(gate.grad(), g2.grad(), 1e-6, "gate");
  ExpectCloseToLargest(up.grad(), u2.grad(), 1e-6, "up");
}

}  // namespace
}  // namespace fulcrum::lora
