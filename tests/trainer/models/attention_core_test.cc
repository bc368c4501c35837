// The probability-free attention core (models/attention_core.cc) against
// HF's eager graph (repeat_kv, matmul * scale + mask, fp32 softmax, matmul)
// differentiated by autograd: outputs and q/k/v gradients within 1e-5 in
// fp32 for grouped heads with a packed-document and padding mask, for MLA's
// shapes (v narrower than q/k), for queries that are the last positions of
// longer keys, and for fully masked (left-padded) rows, in one block of
// queries and in blocks that skip the keys after them; bf16 close to the fp32
// reference; the no-grad path equal to the differentiable one.
#include "trainer/models/attention_core.h"

#include <gtest/gtest.h>
#include <malloc.h>

#include <cstdio>
#include <functional>
#include <limits>
#include <string>

#include "trainer/models/attention_mask.h"

namespace fulcrum::models {
namespace {

struct Result {
  torch::Tensor out, dq, dk, dv;
};

// Gradients of sum(out * weights), so that every output element matters.
Result Differentiate(const std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&,
                                                       const torch::Tensor&)>& attend,
                     const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                     const torch::Tensor& weights) {
  const torch::Tensor qq = q.detach().clone().requires_grad_(true);
  const torch::Tensor kk = k.detach().clone().requires_grad_(true);
  const torch::Tensor vv = v.detach().clone().requires_grad_(true);
  const torch::Tensor out = attend(qq, kk, vv);
  (out.to(torch::kFloat) * weights).sum().backward();
  return {out.detach(), qq.grad(), kk.grad(), vv.grad()};
}

torch::Tensor EagerReference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const torch::Tensor& mask, double scale) {
  const int64_t g = q.size(1) / k.size(1);
  const torch::Tensor kr = k.repeat_interleave(g, 1), vr = v.repeat_interleave(g, 1);
  const torch::Tensor scores = torch::matmul(q, kr.transpose(-1, -2)) * scale + mask;
  return torch::matmul(torch::softmax(scores, -1, torch::kFloat).to(q.scalar_type()), vr);
}

void ExpectClose(const Result& got, const Result& want, double tolerance) {
  const auto close = [&](const torch::Tensor& a, const torch::Tensor& b, const char* what) {
    const torch::Tensor x = a.to(torch::kFloat), y = b.to(torch::kFloat);
    EXPECT_EQ(x.sizes(), y.sizes()) << what;
    EXPECT_TRUE(torch::allclose(x, y, tolerance, tolerance))
        << what << " differs by " << (x - y).abs().max().item<double>();
  };
  close(got.out, want.out, "output");
  close(got.dq, want.dq, "dq");
  close(got.dk, want.dk, "dk");
  close(got.dv, want.dv, "dv");
}

// EagerAttention against the eager graph on the same fp32 inputs, in one
// block of queries (the default at these lengths), in blocks of 3 (7
// positions: 3, 3, 1) and of 1.
void ExpectMatchesEagerGraph(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const torch::Tensor& mask, double scale) {
  const torch::Tensor weights = torch::randn({q.size(0), q.size(1), q.size(2), v.size(3)});
  const Result want =
      Differentiate([&](auto& a, auto& c, auto& e) { return EagerReference(a, c, e, mask, scale); },
                    q, k, v, weights);
  for (const int64_t block : {0, 3, 1}) {
    SCOPED_TRACE("query block " + std::to_string(block));
    const Result got = Differentiate(
        [&](auto& a, auto& c, auto& e) { return EagerAttention(a, c, e, mask, scale, block); }, q,
        k, v, weights);
    ExpectClose(got, want, 1e-5);
    EXPECT_TRUE(torch::isfinite(got.dq).all().item<bool>());
  }
}

// Batch 2 x 7 positions: row 0 packs documents [0 0 0 1 1 2 2], row 1 is two
// documents then 2 padding positions.
torch::Tensor PackedMask(torch::ScalarType dtype) {
  const torch::Tensor docs = torch::tensor({0, 0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 1, 2, 2}).view({2, 7});
  const torch::Tensor valid =
      torch::tensor({1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0}).view({2, 7});
  return BuildAttentionMask(2, 7, valid, docs, dtype, torch::kCPU);
}

TEST(EagerAttentionTest, GroupedHeadsWithPackedMaskMatchEagerGraphInFp32) {
  torch::manual_seed(0);
  const int64_t b = 2, h = 6, hkv = 2, t = 7, d = 8;
  const torch::Tensor q = torch::randn({b, h, t, d}), k = torch::randn({b, hkv, t, d}),
                      v = torch::randn({b, hkv, t, d});
  const torch::Tensor mask = PackedMask(torch::kFloat);
  const double scale = 1.0 / std::sqrt(8.0);
  ExpectMatchesEagerGraph(q, k, v, mask, scale);
  // Not a copy of the plain graph: the node is the probability-free function.
  const torch::Tensor qq = q.clone().requires_grad_(true);
  EXPECT_NE(EagerAttention(qq, k, v, mask, scale).grad_fn()->name().find("ProbabilityFree"),
            std::string::npos);
}

int64_t HeapInUse() {
  const struct mallinfo2 info = mallinfo2();
  return static_cast<int64_t>(info.uordblks + info.hblkhd);
}

// Heap growth from the call until backward: the output and what autograd saved.
int64_t HeldAfterForward(
    const std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&,
                                      const torch::Tensor&)>& attend,
    const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  const torch::Tensor qq = q.clone().requires_grad_(true);
  const int64_t before = HeapInUse();
  const torch::Tensor out = attend(qq, k, v);
  const int64_t held = HeapInUse() - before;
  out.sum().backward();
  return held;
}

TEST(EagerAttentionTest, KeepsNoProbabilitiesForBackward) {
  torch::manual_seed(6);
  // [2, 4, 128, 128] fp32 probabilities = 512 KiB; q, k, v, the output
  // [2, 4, 128, 16] = 64 KiB each; the rows' max and 1 / sum 8 KiB.
  const int64_t b = 2, h = 4, t = 128, d = 16;
  const torch::Tensor q = torch::randn({b, h, t, d}), k = torch::randn({b, h, t, d}),
                      v = torch::randn({b, h, t, d});
  const torch::Tensor mask =
      BuildAttentionMask(b, t, torch::Tensor(), torch::Tensor(), torch::kFloat, torch::kCPU);
  const int64_t probs = b * h * t * t * 4;
  const auto eager = [&](auto& a, auto& c, auto& e) { return EagerAttention(a, c, e, mask, 0.25); };
  const auto graph = [&](auto& a, auto& c, auto& e) { return EagerReference(a, c, e, mask, 0.25); };
  HeldAfterForward(eager, q, k, v);  // warm-up
  const int64_t held = HeldAfterForward(eager, q, k, v);
  const int64_t held_by_graph = HeldAfterForward(graph, q, k, v);
  std::printf("held until backward: eager core %.0f KiB, eager graph %.0f KiB\n", held / 1024.0,
              held_by_graph / 1024.0);
  EXPECT_GE(held_by_graph, probs);
  EXPECT_LT(held, probs / 4);
}

TEST(EagerAttentionTest, NonContiguousInputsAndLatentShapesMatch) {
  torch::manual_seed(1);
  // MLA: every head has its own k/v, v narrower than q/k; q and v as the
  // transposed / narrowed views the layers pass.
  const int64_t b = 2, h = 3, t = 7, dqk = 12, dv = 8;
  const torch::Tensor q = torch::randn({b, t, h, dqk}).transpose(1, 2);
  const torch::Tensor k = torch::randn({b, h, t, dqk});
  const torch::Tensor v = torch::randn({b, h, t, dqk + dv}).narrow(-1, dqk, dv);
  const torch::Tensor mask = PackedMask(torch::kFloat);
  ExpectMatchesEagerGraph(q, k, v, mask, 0.3);
}

TEST(EagerAttentionTest, QueriesOverLongerKeysMatch) {
  torch::manual_seed(2);
  // 3 new queries over 7 keys (a KV cache's shape), causal over the tail.
  const int64_t b = 1, h = 4, hkv = 1, t = 3, s = 7, d = 4;
  const torch::Tensor q = torch::randn({b, h, t, d}), k = torch::randn({b, hkv, s, d}),
                      v = torch::randn({b, hkv, s, d});
  const torch::Tensor mask = torch::zeros({b, 1, t, s})
                                 .masked_fill_(torch::ones({t, s}, torch::kBool).triu(s - t + 1),
                                               std::numeric_limits<float>::lowest());
  ExpectMatchesEagerGraph(q, k, v, mask, 0.5);
}

TEST(EagerAttentionTest, FullyMaskedRowsMatch) {
  torch::manual_seed(5);
  // Left padding: queries 0 and 1 see only padding keys (rows of the mask's
  // lowest value, uniform probabilities), and their gradient is not zero.
  const int64_t b = 1, h = 2, hkv = 2, t = 7, d = 4;
  const torch::Tensor q = torch::randn({b, h, t, d}), k = torch::randn({b, hkv, t, d}),
                      v = torch::randn({b, hkv, t, d});
  const torch::Tensor valid = torch::tensor({0, 0, 1, 1, 1, 1, 1}).view({1, 7});
  const torch::Tensor mask =
      BuildAttentionMask(1, 7, valid, torch::Tensor(), torch::kFloat, torch::kCPU);
  ExpectMatchesEagerGraph(q, k, v, mask, 0.5);
}

// The keys each block reads, as "t0+n:keys" per block.
std::string Plan(const torch::Tensor& q, const torch::Tensor& mask, int64_t requested = 0) {
  std::string plan;
  for (const QueryBlock& blk : AttentionQueryBlocks(q, mask, requested)) {
    plan += (plan.empty() ? "" : " ") + std::to_string(blk.t0) + "+" + std::to_string(blk.n) + ":" +
            std::to_string(blk.keys);
  }
  return plan;
}

// Blocks skip the keys after each block's last query only where the mask
// hides them from every row; a block holding a row masked whole reads every
// key.
TEST(EagerAttentionTest, QueryBlocksSkipOnlyKeysTheMaskHides) {
  const torch::Tensor q = torch::randn({2, 4, 7, 8});
  const torch::Tensor causal =
      BuildAttentionMask(2, 7, torch::Tensor(), torch::Tensor(), torch::kFloat, torch::kCPU);
  EXPECT_EQ(Plan(q, causal, 3), "0+3:3 3+3:6 6+1:7");
  EXPECT_EQ(Plan(q,
                 BuildAttentionMask(2, 7, torch::Tensor(), torch::Tensor(), torch::kBFloat16,
                                    torch::kCPU),
                 3),
            "0+3:3 3+3:6 6+1:7");
  EXPECT_EQ(Plan(q, causal, 7), "0+7:7");
  // The packed mask's padding (batch row 1, positions 5 and 6) is a
  // document of its own that no key is valid in.
  EXPECT_EQ(Plan(q, PackedMask(torch::kFloat), 3), "0+3:3 3+3:7 6+1:7");
  // On the CPU the default is 64 positions: one block here, two at 128.
  EXPECT_EQ(Plan(q, causal), "0+7:7");
  const torch::Tensor causal128 =
      BuildAttentionMask(1, 128, torch::Tensor(), torch::Tensor(), torch::kFloat, torch::kCPU);
  EXPECT_EQ(Plan(torch::randn({1, 2, 128, 8}), causal128), "0+64:64 64+64:128");
  // Queries that are the last 3 positions of 7 keys.
  const torch::Tensor tail = torch::zeros({1, 1, 3, 7})
                                 .masked_fill_(torch::ones({3, 7}, torch::kBool).triu(5),
                                               std::numeric_limits<float>::lowest());
  EXPECT_EQ(Plan(torch::randn({1, 2, 3, 4}), tail, 2), "0+2:6 2+1:7");
  // Every key visible (not causal), or one later key visible to one row.
  EXPECT_EQ(Plan(q, torch::zeros({2, 1, 7, 7}), 3), "0+7:7");
  torch::Tensor one_later = causal.clone();
  one_later.index_put_({1, 0, 2, 5}, 0.0);
  EXPECT_EQ(Plan(q, one_later, 3), "0+7:7");
  // Left padding: rows 0 and 1 see no key.
  const torch::Tensor left_padded =
      BuildAttentionMask(1, 7, torch::tensor({0, 0, 1, 1, 1, 1, 1}).view({1, 7}), torch::Tensor(),
                         torch::kFloat, torch::kCPU);
  EXPECT_EQ(Plan(q.narrow(0, 0, 1), left_padded, 3), "0+3:7 3+3:6 6+1:7");
}

// Where the blocks cannot skip keys, the one block gives the eager graph's
// results (a mask that shows every key).
TEST(EagerAttentionTest, UnmaskedKeysMatchInBlocksRequested) {
  torch::manual_seed(7);
  const torch::Tensor q = torch::randn({1, 2, 7, 4}), k = torch::randn({1, 2, 7, 4}),
                      v = torch::randn({1, 2, 7, 4});
  ExpectMatchesEagerGraph(q, k, v, torch::zeros({1, 1, 7, 7}), 0.5);
}

TEST(EagerAttentionTest, Bf16StaysCloseToTheFp32Reference) {
  torch::manual_seed(3);
  const int64_t b = 2, h = 4, hkv = 2, t = 7, d = 8;
  const torch::Tensor q = torch::randn({b, h, t, d}), k = torch::randn({b, hkv, t, d}),
                      v = torch::randn({b, hkv, t, d}), weights = torch::randn({b, h, t, d});
  const auto bf16 = [](const torch::Tensor& x) { return x.to(torch::kBFloat16); };
  const torch::Tensor mask16 = PackedMask(torch::kBFloat16), mask32 = PackedMask(torch::kFloat);
  const Result want = Differentiate(
      [&](auto& a, auto& c, auto& e) { return EagerReference(a, c, e, mask32, 0.35); }, q, k, v,
      weights);
  for (const int64_t block : {0, 3}) {
    SCOPED_TRACE("query block " + std::to_string(block));
    const Result got = Differentiate(
        [&](auto& a, auto& c, auto& e) { return EagerAttention(a, c, e, mask16, 0.35, block); },
        bf16(q), bf16(k), bf16(v), weights);
    EXPECT_EQ(got.out.scalar_type(), torch::kBFloat16);
    EXPECT_EQ(got.dq.scalar_type(), torch::kBFloat16);
    EXPECT_EQ(got.dk.scalar_type(), torch::kBFloat16);
    ExpectClose(got, want, 6e-2);
  }
}

TEST(EagerAttentionTest, WithoutGradientsTheForwardIsTheSame) {
  torch::manual_seed(4);
  const torch::Tensor q = torch::randn({2, 4, 7, 8}), k = torch::randn({2, 2, 7, 8}),
                      v = torch::randn({2, 2, 7, 8});
  const torch::Tensor mask = PackedMask(torch::kFloat);
  for (const int64_t block : {0, 3}) {
    const torch::Tensor differentiable =
        EagerAttention(q.clone().requires_grad_(true), k, v, mask, 0.35, block).detach();
    torch::Tensor plain;
    {
      torch::NoGradGuard no_grad;
      plain = EagerAttention(q, k, v, mask, 0.35, block);
    }
    EXPECT_TRUE(torch::equal(differentiable, plain)) << "query block " << block;
  }
}

}  // namespace
}  // namespace fulcrum::models
