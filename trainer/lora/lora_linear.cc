#include "trainer/lora/lora_linear.h"

#include <cmath>
#include <vector>

#include "core/check.h"
#include "trainer/lora/linear_rows.h"
#include "trainer/lora/normed_linear.h"
#include "trainer/lora/swiglu_linear.h"

namespace fulcrum::lora {

using parallel::tensor::ColumnParallelInput;
using parallel::tensor::EvenShard;
using parallel::tensor::RowParallelOutput;
using parallel::tensor::ShardRange;

double LoraSpec::Scaling() const {
  return rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / static_cast<double>(rank);
}

LoraLinearImpl::LoraLinearImpl(int64_t in_features, int64_t out_features, bool has_bias,
                               const torch::TensorOptions& options, const LinearParallel& parallel)
    : in_features_(in_features), out_features_(out_features), parallel_(parallel) {
  if (parallel_.shard == LinearShard::kColumn && parallel_.out_rows.length == 0) {
    parallel_.out_rows = EvenShard(out_features, parallel_.tp.rank(), parallel_.tp.size());
  }
  int64_t out = out_features, in = in_features;
  if (sharded() && parallel_.shard == LinearShard::kColumn) out = local_range().length;
  if (sharded() && parallel_.shard == LinearShard::kRow) in = local_range().length;
  weight = register_parameter("weight", torch::empty({out, in}, options));
  FULCRUM_CHECK(
      !(has_bias && sharded() && parallel_.shard == LinearShard::kRow && parallel_.output_partial),
      "a row-parallel bias on a partial sum would be added tp times");
  if (has_bias) bias = register_parameter("bias", torch::empty({out}, options));
}

bool LoraLinearImpl::sharded() const {
  return parallel_.shard != LinearShard::kNone && parallel_.tp.active();
}

ShardRange LoraLinearImpl::local_range() const {
  if (!sharded()) {
    const int64_t n = parallel_.shard == LinearShard::kRow ? in_features_ : out_features_;
    return ShardRange{0, n};
  }
  if (parallel_.shard == LinearShard::kColumn) return parallel_.out_rows;
  return EvenShard(in_features_, parallel_.tp.rank(), parallel_.tp.size());
}

torch::Tensor LoraLinearImpl::LocalLoraA(const torch::Tensor& full_a) const {
  if (!sharded() || parallel_.shard != LinearShard::kRow) return full_a;
  const ShardRange cols = local_range();
  return full_a.narrow(1, cols.start, cols.length);
}

torch::Tensor LoraLinearImpl::LocalLoraB(const torch::Tensor& full_b) const {
  if (!sharded() || parallel_.shard != LinearShard::kColumn) return full_b;
  const ShardRange rows = local_range();
  return full_b.narrow(0, rows.start, rows.length);
}

torch::Tensor LoraLinearImpl::forward(const torch::Tensor& x) {
  if (sharded() && parallel_.shard == LinearShard::kRow) {
    // x [B, T, in/tp]: this rank's partial sum (the adapter's included, so
    // one blocking collective per layer).
    return RowOutput(Product(x, /*bias=*/{}));
  }
  // kColumn gathers (or copies) the input into the tp region; kNone as is.
  const torch::Tensor x_in =
      sharded() && !parallel_.input_in_region ? ColumnParallelInput(x, parallel_.tp) : x;
  return Product(x_in, bias);
}

torch::Tensor LoraLinearImpl::ForwardSwiGlu(const torch::Tensor& gate, const torch::Tensor& up) {
  const bool row = sharded() && parallel_.shard == LinearShard::kRow;
  // Dropout draws its mask in forward: recomputing p in backward would need
  // the same mask, so that case keeps p.
  if (!torch::GradMode::is_enabled() || (sharded() && !row) || (dropout_ > 0.0 && is_training())) {
    return forward(SwiGlu(gate, up));
  }
  const torch::Tensor y =
      SwiGluLinear(gate, up, weight, row ? torch::Tensor() : bias, lora_a_, lora_b_, scaling_);
  return row ? RowOutput(y) : y;
}

torch::Tensor LoraLinearImpl::ForwardNormed(const models::RmsNormOutput& in) {
  // A column shard whose caller copied y into the tp region computes on all
  // of y, so the norm's x and 1/rms recompute it; a row shard reads a slice,
  // and under sp y is gathered from the sequence shards x holds (sizes
  // differ). Dropout's mask would have to be replayed on the recomputed y.
  const bool column_in_region =
      sharded() && parallel_.shard == LinearShard::kColumn && parallel_.input_in_region;
  if (!torch::GradMode::is_enabled() || (sharded() && !column_in_region) || !in.x.defined() ||
      in.x.sizes() != in.y.sizes() || (dropout_ > 0.0 && is_training())) {
    return forward(in.y);
  }
  return NormedLinear(in, weight, bias, lora_a_, lora_b_, scaling_);
}

torch::Tensor LoraLinearImpl::RowOutput(const torch::Tensor& partial) {
  // Reduced (scattered to sequence shards under sp) unless the caller reduces.
  torch::Tensor y = parallel_.output_partial ? partial : RowParallelOutput(partial, parallel_.tp);
  if (bias.defined()) y = y + bias;
  return y;
}

torch::Tensor LoraLinearImpl::Product(const torch::Tensor& x, const torch::Tensor& b) {
  // On [N, in] rows, so that B's GEMM accumulates straight into the base
  // output (beta 1) instead of writing [N, out] and adding it in another pass.
  const torch::Tensor rows = x.reshape({-1, x.size(-1)});
  torch::Tensor y;
  if (DropsAdapterInput()) {
    // The adapter reads a dropped copy of x: autograd's ops keep both.
    const torch::Tensor dropped = torch::dropout(rows, dropout_, is_training());
    y = torch::nn::functional::linear(rows, weight, b);
    y.addmm_(torch::mm(dropped, lora_a_.t()), lora_b_.t(), 1, scaling_);
  } else {
    // The products the fused layers (NormedLinear, SwiGluLinear) compute.
    y = RowsLinearApply(rows, RowsLinear{weight, b, lora_a_, lora_b_, scaling_});
  }
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = y.size(1);
  return y.view(shape);
}

torch::Tensor LoraLinearImpl::AdapterDelta(const torch::Tensor& x) {
  FULCRUM_CHECK(has_adapter() && !sharded(), "AdapterDelta needs an unsharded adapted layer");
  const torch::Tensor in = dropout_ > 0.0 ? torch::dropout(x, dropout_, is_training()) : x;
  const torch::Tensor low = torch::matmul(in, lora_a_.to(x.scalar_type()).t());
  return torch::matmul(low, lora_b_.to(x.scalar_type()).t()) * scaling_;
}

void LoraLinearImpl::AttachAdapter(const LoraSpec& spec, at::Generator generator) {
  FULCRUM_CHECK(!has_adapter(), "adapter attached twice");
  FULCRUM_CHECK(spec.rank > 0, "rank=", spec.rank);
  const auto options = weight.options().requires_grad(true);
  torch::Tensor a;
  {
    torch::NoGradGuard no_grad;
    // kaiming_uniform_(a=sqrt(5)) -> U(-1/sqrt(in), 1/sqrt(in)) over the full in.
    const double bound = 1.0 / std::sqrt(static_cast<double>(in_features_));
    if (generator.defined() && !weight.is_meta()) {
      a = torch::empty({spec.rank, in_features_}, torch::kFloat)
              .uniform_(-bound, bound, generator)
              .to(weight.options());
    } else {
      a = torch::empty({spec.rank, in_features_}, weight.options());
      a.uniform_(-bound, bound);
    }
    if (sharded() && parallel_.shard == LinearShard::kRow) {
      const ShardRange cols = local_range();
      a = a.narrow(1, cols.start, cols.length).clone();  // [r, in/tp]
    }
  }
  a.set_requires_grad(true);
  torch::Tensor b = torch::zeros({weight.size(0), spec.rank}, options);  // [out_local, r]
  lora_a_ = register_module("lora_A", AdapterMatrix(a))->weight;
  lora_b_ = register_module("lora_B", AdapterMatrix(b))->weight;
  scaling_ = spec.Scaling();
  dropout_ = spec.dropout;
}

torch::Tensor LoraDelta(const torch::Tensor& a, const torch::Tensor& b, double scaling,
                        torch::ScalarType dtype) {
  return torch::matmul(b.to(torch::kFloat), a.to(torch::kFloat)).mul_(scaling).to(dtype);
}

void LoraLinearImpl::MergeAdapter() {
  if (!has_adapter()) return;
  {
    torch::NoGradGuard no_grad;
    // Shapes make the shard product right in every role: column B_r A,
    // row B A_r, unsharded B A.
    weight.add_(LoraDelta(lora_a_, lora_b_, scaling_, weight.scalar_type()));
  }
  unregister_module("lora_A");
  unregister_module("lora_B");
  lora_a_ = torch::Tensor();
  lora_b_ = torch::Tensor();
}

}  // namespace fulcrum::lora
