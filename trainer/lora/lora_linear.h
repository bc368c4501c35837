// LoraLinear: the linear layer every model projection is built from.
//
// Without an adapter it is y = x W^T + b. With one attached (LoRA, Hu et al.)
// it adds scaling * B(A(dropout(x))), the base W and b frozen by the caller.
// Parameter names follow Hugging Face / PEFT so that a module path plus these
// names is the checkpoint key: "weight", "bias", "lora_A.weight",
// "lora_B.weight".
//
// Under tensor parallelism a layer has a role fixed at construction:
//   kColumn  W_r [out_r, in], b_r [out_r]: y_r = x_in W_r^T + b_r + s B_r(A(drop(x_in)))
//            with x_in = ColumnParallelInput(x); A [r, in] replicated, B_r
//            [out_r, r] sharded by output.
//   kRow     W_r [out, in/tp], b [out] replicated:
//            y = RowParallelOutput(x_r W_r^T + s B(A_r(drop(x_r)))) + b
//            with A_r [r, in/tp] sharded by input, B [out, r] replicated: B is
//            linear, so the adapter's partial product joins the base's
//            before the one reduction (B's gradient is then a partial sum).
// No full-size adapter product is gathered in either role.
#pragma once

#include <torch/torch.h>

#include "parallel/tensor/tensor_parallel.h"
#include "trainer/models/rms_norm.h"

namespace fulcrum::lora {

enum class LinearShard { kNone, kColumn, kRow };

// A LoraLinear's place in a tensor-parallel group.
struct LinearParallel {
  LinearShard shard = LinearShard::kNone;
  parallel::tensor::TensorParallel tp;  // group nullptr (or size 1) = unsharded
  // kColumn only: the rows of the full [out, in] weight this rank holds.
  // length 0 = EvenShard(out, tp rank, tp size). Attention's kv projections
  // set it when one kv head is replicated on several tp ranks.
  parallel::tensor::ShardRange out_rows;
  // kColumn: x is already inside the tp region (copied, or gathered under
  // sp): the caller entered it once for the layers that share an input
  // (attention's q/k/v, the MLP's gate/up, a MoE block's experts), so their
  // input gradients add up locally before one reduction instead of one each.
  bool input_in_region = false;
  // kRow: return this rank's partial sum; the caller reduces it, once for
  // many layers (a MoE block's experts). No bias then.
  bool output_partial = false;
};

struct LoraSpec {
  int64_t rank = 8;      // r
  double alpha = 16.0;   // scaling numerator
  double dropout = 0.0;  // on the adapter's input only
  bool rslora = false;   // scaling alpha/sqrt(r) instead of alpha/r
  double Scaling() const;
};

// What merging adds to a base weight [out, in]: scaling * B A, computed in
// fp32 from a [r, in] and b [out, r], returned in `dtype`.
torch::Tensor LoraDelta(const torch::Tensor& a, const torch::Tensor& b, double scaling,
                        torch::ScalarType dtype);

// Holds one adapter matrix under the name "weight" (PEFT's lora_A.weight).
class AdapterMatrixImpl : public torch::nn::Module {
 public:
  explicit AdapterMatrixImpl(torch::Tensor value) {
    weight = register_parameter("weight", std::move(value));
  }
  torch::Tensor weight;
};
TORCH_MODULE(AdapterMatrix);

class LoraLinearImpl : public torch::nn::Module {
 public:
  // Parameters are created uninitialised (empty) with `options`; weights are
  // loaded from a checkpoint or initialised by the model's initialiser.
  // in_features / out_features are the full (unsharded) sizes; this rank
  // allocates its shard per `parallel`.
  LoraLinearImpl(int64_t in_features, int64_t out_features, bool bias,
                 const torch::TensorOptions& options, const LinearParallel& parallel = {});

  // x [..., in] -> [..., out]. Sharded: kColumn x [B, T, in] (under sp [B,
  // T/tp, in]) -> [B, T, out_r]; kRow x [B, T, in/tp] -> [B, T, out] (under
  // sp [B, T/tp, out]).
  torch::Tensor forward(const torch::Tensor& x);
  // forward(SwiGlu(gate, up)) for a SwiGLU MLP's down projection (kRow or
  // unsharded): with autograd recording and no adapter dropout to replay,
  // through SwiGluLinear, which keeps gate and up but not their product.
  torch::Tensor ForwardSwiGlu(const torch::Tensor& gate, const torch::Tensor& up);
  // forward(in.y) for a projection reading an RMSNorm's output: unsharded
  // or a column shard whose caller copied y into the tp region
  // (input_in_region), with autograd recording, no adapter dropout to replay
  // and in.x defined and of y's sizes (not under sp, where y is gathered),
  // through NormedLinear, which keeps the norm's x and statistics instead of
  // y. Otherwise forward(in.y).
  torch::Tensor ForwardNormed(const models::RmsNormOutput& in);

  // Attaches a fresh adapter: A ~ kaiming-uniform(a=sqrt(5)) as PEFT does,
  // B = 0, so the layer's output is unchanged until B trains. Under kRow the
  // full A [r, in] is drawn and this rank keeps its columns, so every tp rank
  // (same seed) holds the shard of the single-rank draw. With a defined
  // `generator` (a CPU generator) A is drawn from it in fp32 on the CPU and
  // copied (values independent of device and of the global generator);
  // otherwise from the global generator in the weight's dtype and device.
  void AttachAdapter(const LoraSpec& spec, at::Generator generator = {});
  bool has_adapter() const { return lora_a_.defined(); }
  // Whether forward draws a dropout mask on the adapter's input (dropout > 0
  // in training): a backward that computes the input again cannot replay it.
  bool DropsAdapterInput() const { return dropout_ > 0.0 && is_training(); }
  double scaling() const { return scaling_; }
  // Folds scaling * B A into W and removes the adapter (on shards: column
  // W_r += s B_r A, row W_r += s B A_r).
  void MergeAdapter();

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }
  const LinearParallel& parallel() const { return parallel_; }
  // Whether this layer is actually split (a role and a tp group of size > 1).
  bool sharded() const;
  // The slice of the full dim this rank holds: kColumn rows of W (dim 0),
  // kRow columns of W (dim 1); the whole dim when not sharded.
  fulcrum::parallel::tensor::ShardRange local_range() const;

  torch::Tensor weight;  // [out, in] (kColumn [out_r, in], kRow [out, in/tp])
  torch::Tensor bias;    // [out] (kColumn [out_r]), undefined without bias

  // This rank's slice (a view) of a full adapter matrix: A [r, in] (kRow
  // keeps its input columns), B [out, r] (kColumn keeps its output rows).
  torch::Tensor LocalLoraA(const torch::Tensor& full_a) const;
  torch::Tensor LocalLoraB(const torch::Tensor& full_b) const;

  // Unsharded layers with an adapter: scaling * B(A(dropout(x))) in x's
  // dtype (for callers that run the base product themselves, in another dtype).
  torch::Tensor AdapterDelta(const torch::Tensor& x);

  torch::Tensor lora_a() const { return lora_a_; }  // [r, in] (kRow [r, in/tp])
  torch::Tensor lora_b() const { return lora_b_; }  // [out, r] (kColumn [out_r, r])

 private:
  // x W^T + b + scaling B A dropout(x) with this rank's shards, before any
  // reduction.
  torch::Tensor Product(const torch::Tensor& x, const torch::Tensor& b);
  // kRow: this rank's partial product reduced (unless the caller reduces),
  // then the bias.
  torch::Tensor RowOutput(const torch::Tensor& partial);

  int64_t in_features_;
  int64_t out_features_;
  LinearParallel parallel_;
  torch::Tensor lora_a_;
  torch::Tensor lora_b_;
  double scaling_ = 0.0;
  double dropout_ = 0.0;
};
TORCH_MODULE(LoraLinear);

}  // namespace fulcrum::lora
