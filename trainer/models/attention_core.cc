#include "trainer/models/attention_core.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "core/check.h"
#include "trainer/models/batched_matmul.h"

namespace fulcrum::models {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// qg [B, Hkv, G*T, Dqk] (the G query heads of a kv head stacked along
// time), k [B, Hkv, S, Dqk] -> fp32 scores q k^T * scale + mask
// [B, Hkv, G*T, S]. Scale and mask are applied in the input dtype, as HF's
// `matmul * scale + mask` before softmax(dtype=float32).
torch::Tensor MaskedScores(const torch::Tensor& qg, const torch::Tensor& k,
                           const torch::Tensor& mask, double scale) {
  const int64_t b = qg.size(0), hkv = qg.size(1), s = k.size(2), t = mask.size(2);
  const int64_t g = qg.size(2) / t;
  torch::Tensor scores = BatchedMatmul(qg, k.transpose(-1, -2)).mul_(scale);
  const torch::Tensor grouped = scores.view({b, hkv, g, t, s});
  const torch::Tensor mask5 = mask.unsqueeze(2);  // [B, 1, 1, T, S]
  // In place unless the mask's dtype would promote the sum (then as HF).
  if (mask.scalar_type() == scores.scalar_type()) {
    grouped.add_(mask5);
  } else {
    scores = (grouped + mask5).view({b, hkv, g * t, s});
  }
  return scores.to(torch::kFloat);  // the same tensor when fp32
}

// q [B, H, T, D] -> [B, Hkv, G*T, D] (a copy unless q is contiguous).
torch::Tensor Grouped(const torch::Tensor& q, int64_t hkv) {
  const int64_t b = q.size(0), h = q.size(1), t = q.size(2);
  FULCRUM_CHECK(h % hkv == 0, "heads=", h, " kv_heads=", hkv);
  return q.reshape({b, hkv, h / hkv * t, q.size(3)});
}

// The rows of query positions [t0, t0 + n) of every group of x [B, Hkv,
// G*T, D], as [B, Hkv, G*n, D] (a copy), and their place in a [B, Hkv, G, T,
// D] tensor.
torch::Tensor QueryRows(const torch::Tensor& x, int64_t t, int64_t t0, int64_t n) {
  const int64_t b = x.size(0), hkv = x.size(1), g = x.size(2) / t, d = x.size(3);
  return x.reshape({b, hkv, g, t, d}).narrow(3, t0, n).reshape({b, hkv, g * n, d});
}
torch::Tensor RowsOf(torch::Tensor& by_group, int64_t t0, int64_t n) {
  return by_group.narrow(3, t0, n);
}

// The first `keys` rows of x [B, Hkv, S, D] (keys or values) as one dense
// tensor when `copy`. oneDNN's brgemm matmul kernels take operands without
// holes only, and a narrow of S leaves them between heads: the generic gemm
// it falls to ran the attention's products at ~190 GFLOP/s against 330-430
// (bench host, 2 threads), for a copy of 2.5 k's per layer at 4 blocks.
torch::Tensor FirstKeys(const torch::Tensor& x, int64_t keys, bool copy) {
  const torch::Tensor first = x.narrow(2, 0, keys);
  return copy ? first.contiguous() : first;
}

// The blocks as one list for saved_data: t0, n, keys per block.
std::vector<int64_t> Flat(const std::vector<QueryBlock>& blocks) {
  std::vector<int64_t> flat;
  for (const QueryBlock& blk : blocks) flat.insert(flat.end(), {blk.t0, blk.n, blk.keys});
  return flat;
}
std::vector<QueryBlock> Unflat(const std::vector<int64_t>& flat) {
  std::vector<QueryBlock> blocks;
  for (size_t i = 0; i + 2 < flat.size(); i += 3)
    blocks.push_back({flat[i], flat[i + 1], flat[i + 2]});
  return blocks;
}

// On the CPU, blocks of kCpuQueryBlock positions skip the keys after each
// block (causal: 5/8 of the score and value products at 4 blocks, about half
// for long sequences) and keep a block's fp32 scores in cache. Forward and
// backward of one layer's core at 2 threads, one block against blocks of 64:
// [4, 16, 256, 64] with 4 kv heads 66 -> 33 ms, [1, 16, 2048, 64] 1370 ->
// 347 ms (32 and 128 were no faster). One block on a GPU, whose kernels want
// large products.
constexpr int64_t kCpuQueryBlock = 64;

}  // namespace

int64_t EagerQueryBlockRows(int64_t t, bool cuda) { return cuda ? t : std::min(t, kCpuQueryBlock); }

std::vector<QueryBlock> AttentionQueryBlocks(const torch::Tensor& q, const torch::Tensor& mask,
                                             int64_t requested) {
  const int64_t t = mask.size(2), s = mask.size(3);
  const int64_t rows = requested > 0 ? requested : EagerQueryBlockRows(t, q.is_cuda());
  if (rows >= t) return {{0, t, s}};
  // The keys after a query's own position (at s - t + i) must hold the
  // mask's lowest value on every row: the causal mask, whatever padding and
  // documents add. Otherwise one block.
  double lowest = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      torch::kBFloat16, torch::kHalf, mask.scalar_type(), "lowest",
      [&] { lowest = static_cast<double>(std::numeric_limits<scalar_t>::lowest()); });
  const torch::Tensor masked = mask.eq(lowest);  // [B, 1, T, S]
  const torch::Tensor after = torch::ones({t, s}, masked.options()).triu(s - t + 1);
  if (!masked.logical_or(after.logical_not()).all().item<bool>()) return {{0, t, s}};
  // A row masked whole has uniform probabilities over all s keys (HF's
  // eager softmax of equal scores): a block holding one takes every key.
  const torch::Tensor whole = masked.all(-1).any(0).view({t}).cpu();  // per position
  const auto* whole_at = whole.data_ptr<bool>();
  std::vector<QueryBlock> blocks;
  for (int64_t t0 = 0; t0 < t; t0 += rows) {
    const int64_t n = std::min(rows, t - t0);
    const bool any_whole = std::any_of(whole_at + t0, whole_at + t0 + n, [](bool w) { return w; });
    blocks.push_back({t0, n, any_whole ? s : s - t + t0 + n});
  }
  return blocks;
}

namespace {

// Under autograd: saves q, k, v, the mask and each score row's fp32 max and
// 1 / sum, the probabilities computed again in backward block by block.
class ProbabilityFreeAttention : public torch::autograd::Function<ProbabilityFreeAttention> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& mask, double scale,
                               const std::vector<QueryBlock>& blocks) {
    const torch::Tensor qg = Grouped(q, k.size(1));
    const int64_t b = q.size(0), hkv = k.size(1), t = mask.size(2), g = qg.size(2) / t;
    const auto f32 = q.options().dtype(torch::kFloat);
    const bool one_block = blocks.size() == 1;
    torch::Tensor out;  // one block: the product itself, not a copy of it
    if (!one_block) out = torch::empty({b, hkv, g, t, v.size(3)}, q.options());
    torch::Tensor row_max = torch::empty({b, hkv, g, t, 1}, f32);
    torch::Tensor inv_sum = torch::empty({b, hkv, g, t, 1}, f32);
    for (const QueryBlock& blk : blocks) {
      const torch::Tensor scores =
          MaskedScores(QueryRows(qg, t, blk.t0, blk.n), FirstKeys(k, blk.keys, !one_block),
                       mask.narrow(2, blk.t0, blk.n).narrow(3, 0, blk.keys), scale);
      const torch::Tensor probs = torch::softmax(scores, -1);
      // softmax = exp(x - max) * (1 / sum), and the largest probability is
      // exp(0) * (1 / sum): two read-only passes give what the backward needs
      // to rebuild the probabilities as softmax did. (Not the log-sum-exp: on
      // a fully masked row it rounds to the mask value and exp(x - lse) = 1.)
      const std::vector<int64_t> rows = {b, hkv, g, blk.n, 1};
      RowsOf(row_max, blk.t0, blk.n).copy_(scores.amax(-1, /*keepdim=*/true).view(rows));
      RowsOf(inv_sum, blk.t0, blk.n).copy_(probs.amax(-1, /*keepdim=*/true).view(rows));
      const torch::Tensor block_out =
          BatchedMatmul(probs.to(q.scalar_type()), FirstKeys(v, blk.keys, !one_block));
      if (one_block) {
        out = block_out;
      } else {
        RowsOf(out, blk.t0, blk.n).copy_(block_out.view({b, hkv, g, blk.n, v.size(3)}));
      }
    }
    ctx->save_for_backward({qg, k, v, mask, row_max, inv_sum});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["blocks"] = Flat(blocks);
    return out.reshape({q.size(0), q.size(1), q.size(2), v.size(3)});
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const torch::Tensor &qg = saved[0], &k = saved[1], &v = saved[2], &mask = saved[3];
    torch::Tensor row_max = saved[4], inv_sum = saved[5];
    const double scale = ctx->saved_data["scale"].toDouble();
    const torch::ScalarType dtype = qg.scalar_type();
    const torch::Tensor grad_out = grad_outputs[0];  // [B, H, T, Dv]
    const torch::Tensor dog = Grouped(grad_out, k.size(1));
    const int64_t b = qg.size(0), hkv = k.size(1), t = mask.size(2), g = qg.size(2) / t;
    const std::vector<QueryBlock> blocks = Unflat(ctx->saved_data["blocks"].toIntVector());
    // One block: the products are the gradients. Several: the keys'
    // gradients sum over them, in fp32 where the inputs are not.
    const bool one_block = blocks.size() == 1;
    torch::Tensor dqg, dk, dv;
    if (!one_block) {
      dqg = torch::empty({b, hkv, g, t, qg.size(3)}, qg.options());
      dk = torch::zeros(k.sizes(), k.options().dtype(torch::kFloat));
      dv = torch::zeros(v.sizes(), v.options().dtype(torch::kFloat));
    }
    for (const QueryBlock& blk : blocks) {
      const torch::Tensor qb = QueryRows(qg, t, blk.t0, blk.n);
      const torch::Tensor kb = FirstKeys(k, blk.keys, !one_block);
      const torch::Tensor vb = FirstKeys(v, blk.keys, !one_block);
      const torch::Tensor dob = QueryRows(dog, t, blk.t0, blk.n);
      const std::vector<int64_t> rows = {b, hkv, g * blk.n, 1};
      // The probabilities again, in fp32.
      const torch::Tensor probs =
          MaskedScores(qb, kb, mask.narrow(2, blk.t0, blk.n).narrow(3, 0, blk.keys), scale)
              .sub_(RowsOf(row_max, blk.t0, blk.n).reshape(rows))
              .exp_()
              .mul_(RowsOf(inv_sum, blk.t0, blk.n).reshape(rows));
      const torch::Tensor probs_t = probs.to(dtype).transpose(-1, -2);
      if (one_block) {
        dv = BatchedMatmul(probs_t, dob);
      } else {
        // Through a dense product (FirstKeys): the sum's rows have holes.
        dv.narrow(2, 0, blk.keys).add_(BatchedMatmul(probs_t, dob));
      }
      // Softmax backward in fp32, in place on dP: dS = P * dP - P * rowsum(P * dP).
      torch::Tensor ds = BatchedMatmul(dob, vb.transpose(-1, -2)).to(torch::kFloat).mul_(probs);
      ds.addcmul_(probs, ds.sum(-1, /*keepdim=*/true), -1.0);
      // Through `* scale` in the input dtype, as the eager graph.
      ds = ds.to(dtype).mul_(scale);
      const torch::Tensor dq_block = BatchedMatmul(ds, kb);
      if (one_block) {
        dqg = dq_block;
        dk = BatchedMatmul(ds.transpose(-1, -2), qb);
      } else {
        RowsOf(dqg, blk.t0, blk.n).copy_(dq_block.view({b, hkv, g, blk.n, qg.size(3)}));
        dk.narrow(2, 0, blk.keys).add_(BatchedMatmul(ds.transpose(-1, -2), qb));
      }
    }
    const torch::Tensor dq = dqg.reshape({b, grad_out.size(1), grad_out.size(2), qg.size(3)});
    return {dq, dk.to(dtype), dv.to(dtype), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor EagerAttention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                             const torch::Tensor& mask, double scale, int64_t query_block) {
  const bool differentiable = torch::GradMode::is_enabled() &&
                              (q.requires_grad() || k.requires_grad() || v.requires_grad());
  // An undefined mask (causal only) is for the fused kernels alone.
  FULCRUM_CHECK(mask.defined(), "the eager attention needs its additive mask");
  FULCRUM_CHECK(!mask.requires_grad(), "the attention mask is not differentiable here");
  const std::vector<QueryBlock> blocks = AttentionQueryBlocks(q, mask, query_block);
  if (differentiable) return ProbabilityFreeAttention::apply(q, k, v, mask, scale, blocks);
  // Inference and generation: nothing is kept, so the plain graph, by blocks.
  const torch::Tensor qg = Grouped(q, k.size(1));
  const int64_t b = q.size(0), hkv = k.size(1), t = mask.size(2), g = qg.size(2) / t;
  const bool one_block = blocks.size() == 1;
  torch::Tensor out;  // one block: the product itself
  if (!one_block) out = torch::empty({b, hkv, g, t, v.size(3)}, q.options());
  for (const QueryBlock& blk : blocks) {
    const torch::Tensor probs =
        torch::softmax(
            MaskedScores(QueryRows(qg, t, blk.t0, blk.n), FirstKeys(k, blk.keys, !one_block),
                         mask.narrow(2, blk.t0, blk.n).narrow(3, 0, blk.keys), scale),
            -1)
            .to(q.scalar_type());
    const torch::Tensor block_out = BatchedMatmul(probs, FirstKeys(v, blk.keys, !one_block));
    if (one_block) {
      out = block_out;
    } else {
      RowsOf(out, blk.t0, blk.n).copy_(block_out.view({b, hkv, g, blk.n, v.size(3)}));
    }
  }
  return out.reshape({q.size(0), q.size(1), q.size(2), v.size(3)});
}

}  // namespace fulcrum::models
