#include "trainer/models/loss.h"

#include <algorithm>

#include "core/check.h"
#include "core/parallel_for.h"
#include "parallel/tensor/vocab_parallel_cross_entropy.h"
#include "trainer/models/cross_entropy_cpu_kernel.h"
#include "trainer/models/matrix_product.h"

namespace fulcrum::models {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// fp32 logits on the CPU take the row kernel (cross_entropy_cpu_kernel.h);
// bf16 logits and CUDA take torch ops, by chunks of rows.
//
// Rows per chunk are chosen so that a chunk's fp32 log-probabilities stay in
// the cache between the passes made over them (log-softmax, gather, exp,
// one-hot): the [N, V] logits are then read once and the gradient written
// once, instead of the ~12 passes over [N, V] buffers of log_softmax +
// nll_loss and their backward. On CUDA a chunk is a kernel launch per op,
// so chunks are large there and only bound the fp32 copy of bf16 logits.
constexpr int64_t kCpuChunkBytes = int64_t{1} << 20;
constexpr int64_t kCudaChunkBytes = int64_t{256} << 20;

// ChunkedCrossEntropy's arguments where the CPU kernel takes them: fp32 CPU
// logits and gradient with unit-stride rows.
bool TakesCpuKernel(const torch::Tensor& logits, const torch::Tensor& targets,
                    const torch::Tensor& row_loss, const torch::Tensor& grad) {
  return logits.device().is_cpu() && logits.scalar_type() == torch::kFloat &&
         logits.stride(1) == 1 && targets.device().is_cpu() &&
         targets.scalar_type() == torch::kLong && row_loss.is_contiguous() &&
         row_loss.scalar_type() == torch::kFloat &&
         (!grad.defined() || (grad.scalar_type() == torch::kFloat && grad.stride(1) == 1));
}

void CpuCrossEntropy(const torch::Tensor& logits, const torch::Tensor& targets,
                     torch::Tensor& row_loss, torch::Tensor& grad) {
  const int64_t n = logits.size(0), v = logits.size(1);
  const torch::Tensor target_ids = targets.contiguous();
  const int64_t* target_at = target_ids.data_ptr<int64_t>();
  for (int64_t r = 0; r < n; ++r) {
    FULCRUM_CHECK(target_at[r] == kIgnoreIndex || (target_at[r] >= 0 && target_at[r] < v),
                  "target ", target_at[r], " of row ", r, " outside the vocabulary of ", v);
  }
  const float* x = logits.data_ptr<float>();
  float* loss = row_loss.data_ptr<float>();
  float* g = grad.defined() ? grad.data_ptr<float>() : nullptr;
  const int64_t ld = logits.stride(0), grad_ld = grad.defined() ? grad.stride(0) : 0;
  ParallelFor(0, n, std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, v)),
              [&](int64_t s, int64_t e) {
                CrossEntropyCpuKernel(x + s * ld, ld, target_at + s, e - s, v, kIgnoreIndex,
                                      loss + s, g != nullptr ? g + s * grad_ld : nullptr, grad_ld);
              });
}

// logits [N, V] (any float dtype), targets [N] int64 with -100 ignored.
// Writes each row's loss into row_loss [N] fp32 (0 where ignored) and, when
// `grad` is defined ([N, V], logits' dtype), d(sum of row losses)/d(logits):
// softmax - onehot on target rows, 0 on ignored ones.
void ChunkedCrossEntropy(const torch::Tensor& logits, const torch::Tensor& targets,
                         torch::Tensor& row_loss, torch::Tensor& grad) {
  if (TakesCpuKernel(logits, targets, row_loss, grad)) {
    return CpuCrossEntropy(logits, targets, row_loss, grad);
  }
  FULCRUM_CHECK(!grad.defined() || grad.data_ptr() != logits.data_ptr(),
                "only the CPU kernel writes the gradient over the logits");
  const int64_t n = logits.size(0), v = logits.size(1);
  const torch::Tensor is_target = targets.ne(kIgnoreIndex);       // [N] bool
  const torch::Tensor valid = is_target.to(torch::kFloat);        // [N]
  const torch::Tensor index = targets.clamp_min(0).unsqueeze(1);  // [N, 1]
  const torch::Tensor minus_valid = valid.neg().unsqueeze(1);     // [N, 1]
  const torch::Tensor zero = torch::zeros({}, row_loss.options());
  const bool fp32 = logits.scalar_type() == torch::kFloat;
  const int64_t chunk_bytes = logits.is_cuda() ? kCudaChunkBytes : kCpuChunkBytes;
  const int64_t rows = std::max<int64_t>(1, chunk_bytes / (v * 4));
  torch::Tensor scratch;  // fp32 log-probabilities when they cannot live in `grad`
  if (!fp32 || !grad.defined()) {
    scratch = torch::empty({std::min(rows, n), v}, logits.options().dtype(torch::kFloat));
  }
  for (int64_t start = 0; start < n; start += rows) {
    const int64_t len = std::min(rows, n - start);
    const torch::Tensor x = logits.narrow(0, start, len);
    torch::Tensor log_probs =
        fp32 && grad.defined() ? grad.narrow(0, start, len) : scratch.narrow(0, 0, len);
    at::_log_softmax_out(log_probs, fp32 ? x : x.to(torch::kFloat), 1, false);
    const torch::Tensor keep = valid.narrow(0, start, len);
    const torch::Tensor target_rows = index.narrow(0, start, len);
    // where, not a multiply by 0: an ignored row's stand-in target may have a
    // log-probability of -inf.
    row_loss.narrow(0, start, len)
        .copy_(torch::where(is_target.narrow(0, start, len),
                            log_probs.gather(1, target_rows).squeeze(1).neg(), zero));
    if (!grad.defined()) continue;
    torch::Tensor probs = log_probs.exp_().mul_(keep.unsqueeze(1));
    probs.scatter_add_(1, target_rows, minus_valid.narrow(0, start, len));
    if (!fp32) grad.narrow(0, start, len).copy_(probs);
  }
}

// A gradient computed in forward and kept in ctx->saved_data[key], scaled in
// place by the upstream gradient and handed on once: a second backward
// through the node (retain_graph) would find it consumed.
torch::Tensor TakeScaledGradient(AutogradContext* ctx, const char* key, const torch::Tensor& scale,
                                 const char* function) {
  torch::Tensor grad = ctx->saved_data[key].toTensor();
  FULCRUM_CHECK(grad.defined(), function, ": backward ran twice through one forward");
  ctx->saved_data[key] = torch::Tensor();
  return grad.mul_(scale);
}

// Sum of the per-row losses; its gradient is computed during the forward
// chunk by chunk and kept instead of the logits (which the caller may then
// free), so the backward is one multiply, in place.
class CrossEntropySumFunction : public torch::autograd::Function<CrossEntropySumFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& logits,
                               const torch::Tensor& targets) {
    torch::Tensor row_loss = torch::empty({logits.size(0)}, logits.options().dtype(torch::kFloat));
    torch::Tensor grad = torch::empty_like(logits, torch::MemoryFormat::Contiguous);
    ChunkedCrossEntropy(logits, targets, row_loss, grad);
    ctx->saved_data["grad"] = grad;
    return row_loss.sum();
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    return {TakeScaledGradient(ctx, "grad", grad_outputs[0], "cross entropy"), torch::Tensor()};
  }
};

torch::Tensor ShiftedTargets(const torch::Tensor& logits, const torch::Tensor& labels) {
  FULCRUM_CHECK(logits.dim() == 3 && labels.dim() == 2 && logits.size(0) == labels.size(0) &&
                    logits.size(1) == labels.size(1),
                "logits dims ", logits.dim(), " vs labels dims ", labels.dim(),
                " (need [B,T,V] and [B,T])");
  return parallel::tensor::ShiftedTargets(labels, logits.device());
}

// Bytes of logits one pass of LinearCrossEntropySum holds. Each pass reads
// the whole [V, H] weight in each of its GEMMs (logits, the hidden states'
// gradient and, when the weight trains, the weight's), so fewer rows spend
// more of the loss's time streaming the weight: on the CPU, the 55M bench
// Llama's full fine-tuning (lm_head 42% of its FLOPs) gave 6% more tokens/s
// with 1048-row passes than with 262-row ones (median of 3 interleaved
// runs: 640 vs 605). A frozen weight has one GEMM per pass less, and the
// frozen model (LoRA) less memory to set the logits against: on the ~290M
// bench Llama's LoRA step (2 threads), 32 MiB passes (256 rows of 32000)
// against 16 MiB ones were faster in each of 5 alternated runs (median
// step 3.84 against 4.10 s) for 16 MiB more peak RSS (2304 against 2288
// MiB); 64 MiB passes, faster again, put LoRA's peak above 40% of full
// fine-tuning's (2335 of 5797 MiB).
constexpr int64_t kCpuHeadChunkBytes = int64_t{32} << 20;
constexpr int64_t kCpuTrainedHeadChunkBytes = int64_t{128} << 20;
constexpr int64_t kCudaHeadChunkBytes = int64_t{512} << 20;

}  // namespace

int64_t HeadChunkRows(int64_t n, int64_t vocab, bool cuda, bool weight_trains) {
  const int64_t chunk_bytes = cuda            ? kCudaHeadChunkBytes
                              : weight_trains ? kCpuTrainedHeadChunkBytes
                                              : kCpuHeadChunkBytes;
  // Sizes MatrixProduct sends through oneDNN: a pass of 131 rows fell back
  // to torch::mm at ~half its FLOP/s (the ~290M LoRA's frozen head: 0.85 s
  // of a 4.8 s step). Batch x sequence is a multiple of 64 in practice, so
  // the last pass is one too.
  return std::min(n, RepeatingSizeAtMost(chunk_bytes / (vocab * 4)));
}

int HeadChunkBuffers(bool cuda, bool fp32, bool vocab_split) {
  return !cuda && fp32 && !vocab_split ? 1 : 2;
}

namespace {

struct HeadGradients {
  torch::Tensor hidden;  // [N, H] in the hidden states' dtype, or undefined
  torch::Tensor weight;  // [V, H] fp32 (summed over chunks), or undefined
};

// hidden [N, H], weight [V, H] (same dtype; under tp the vocab shard),
// targets [N] -> the summed loss of linear(hidden, weight) in fp32 and,
// where asked for, its gradients (under tp: the hidden states' partial sum
// over the shards, the shard's weight gradient).
torch::Tensor HeadCrossEntropy(const torch::Tensor& hidden, const torch::Tensor& weight,
                               const torch::Tensor& targets, const HeadVocab& vocab,
                               HeadGradients& grads) {
  const int64_t n = hidden.size(0), v = weight.size(0);
  const bool split = vocab.tp.active();
  // Under tp every rank must make the same passes (each runs two
  // collectives): vocab shards are even (EvenShard), so v is the same on all.
  const int64_t rows = HeadChunkRows(n, v, hidden.is_cuda(), grads.weight.defined());
  torch::Tensor row_loss = torch::empty({n}, hidden.options().dtype(torch::kFloat));
  const torch::Tensor logits_buffer = torch::empty({rows, v}, weight.options());
  torch::Tensor grad_buffer;
  if (grads.hidden.defined() || grads.weight.defined()) {
    const bool fp32 = weight.scalar_type() == torch::kFloat;
    grad_buffer = HeadChunkBuffers(hidden.is_cuda(), fp32, split) == 1
                      ? logits_buffer  // the CPU kernel's gradient over the logits
                      : torch::empty({rows, v}, weight.options());
  }
  for (int64_t start = 0; start < n; start += rows) {
    const int64_t len = std::min(rows, n - start);
    const torch::Tensor h = hidden.narrow(0, start, len);
    torch::Tensor logits = logits_buffer.narrow(0, 0, len);
    MatrixProductInto(logits, h, weight.t());
    torch::Tensor loss = row_loss.narrow(0, start, len);
    torch::Tensor grad = grad_buffer.defined() ? grad_buffer.narrow(0, 0, len) : torch::Tensor();
    if (split) {
      parallel::tensor::ShardCrossEntropy(logits, targets.narrow(0, start, len), vocab.start,
                                          vocab.tp.group, loss, grad);
    } else {
      ChunkedCrossEntropy(logits, targets.narrow(0, start, len), loss, grad);
    }
    if (grads.hidden.defined()) {
      torch::Tensor dh = grads.hidden.narrow(0, start, len);
      MatrixProductInto(dh, grad, weight);
    }
    if (grads.weight.defined()) {
      if (weight.scalar_type() == torch::kFloat) {
        AddMatrixProduct(grads.weight, grad.t(), h);
      } else {  // a bf16 sum over chunks would round at every chunk
        grads.weight.add_(torch::mm(grad.t(), h));
      }
    }
  }
  return row_loss.sum();
}

// The loss of the lm_head's logits with both gradients computed during the
// forward, chunk by chunk, and kept instead of the logits: the backward is
// two multiplies, in place.
class LinearCrossEntropySumFunction
    : public torch::autograd::Function<LinearCrossEntropySumFunction> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& hidden,
                               const torch::Tensor& weight, const torch::Tensor& targets,
                               const HeadVocab& vocab) {
    HeadGradients grads;
    if (hidden.requires_grad()) grads.hidden = torch::empty_like(hidden);
    if (weight.requires_grad()) {
      grads.weight = torch::zeros(weight.sizes(), weight.options().dtype(torch::kFloat));
    }
    const torch::Tensor loss = HeadCrossEntropy(hidden, weight, targets, vocab, grads);
    ctx->saved_data["hidden"] = grads.hidden;
    ctx->saved_data["weight"] = grads.weight;
    ctx->saved_data["dtype"] = weight.scalar_type();
    return loss;
  }

  // Zero-bubble's split backward (parallel/pipeline/split_backward.h) runs
  // this node twice, once for the hidden states' gradient and once for the
  // weight's: each gradient is handed on, scaled in place, when it is asked
  // for, and only once.
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const torch::Tensor& scale = grad_outputs[0];
    constexpr const char* kName = "linear cross entropy";
    torch::Tensor dh, dw;
    if (ctx->needs_input_grad(0)) dh = TakeScaledGradient(ctx, "hidden", scale, kName);
    if (ctx->needs_input_grad(1)) {
      dw = TakeScaledGradient(ctx, "weight", scale, kName)
               .to(ctx->saved_data["dtype"].toScalarType());
    }
    return {dh, dw, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor CrossEntropySum(const torch::Tensor& logits, const torch::Tensor& labels) {
  const torch::Tensor targets = ShiftedTargets(logits, labels);
  const torch::Tensor flat = logits.reshape({-1, logits.size(2)});
  if (torch::GradMode::is_enabled() && logits.requires_grad()) {
    return CrossEntropySumFunction::apply(flat, targets);
  }
  torch::Tensor row_loss = torch::empty({flat.size(0)}, flat.options().dtype(torch::kFloat));
  torch::Tensor no_grad;
  ChunkedCrossEntropy(flat, targets, row_loss, no_grad);
  return row_loss.sum();
}

int64_t CountTargets(const torch::Tensor& labels) {
  if (labels.size(1) < 2) return 0;
  return labels.narrow(1, 1, labels.size(1) - 1).ne(kIgnoreIndex).sum().item<int64_t>();
}

torch::Tensor CausalLmLoss(const torch::Tensor& logits, const torch::Tensor& labels) {
  const torch::Tensor targets =
      labels.narrow(1, 1, labels.size(1) - 1).ne(kIgnoreIndex).sum().to(torch::kFloat);
  // 0/0 = NaN without targets, as HF's mean cross entropy gives.
  return CrossEntropySum(logits, labels) / targets.to(logits.device());
}

torch::Tensor LinearCrossEntropySum(const torch::Tensor& hidden, const torch::Tensor& weight,
                                    const torch::Tensor& labels, const HeadVocab& vocab) {
  FULCRUM_CHECK(hidden.dim() == 3 && labels.dim() == 2 && hidden.size(0) == labels.size(0) &&
                    hidden.size(1) == labels.size(1) && weight.dim() == 2 &&
                    weight.size(1) == hidden.size(2),
                "hidden dims ", hidden.dim(), ", weight dims ", weight.dim(), ", labels dims ",
                labels.dim(), " (need [B,T,H], [V,H] and [B,T] of one B, T and H)");
  const torch::Tensor targets = parallel::tensor::ShiftedTargets(labels, hidden.device());
  const torch::Tensor flat = hidden.reshape({-1, hidden.size(2)});
  if (torch::GradMode::is_enabled() && (hidden.requires_grad() || weight.requires_grad())) {
    return LinearCrossEntropySumFunction::apply(flat, weight, targets, vocab);
  }
  HeadGradients none;
  return HeadCrossEntropy(flat, weight, targets, vocab, none);
}

}  // namespace fulcrum::models
