#include "trainer/models/attention_mask.h"

#include <limits>

namespace fulcrum::models {

torch::Tensor BuildAttentionMask(int64_t batch, int64_t seq_len, const torch::Tensor& key_valid,
                                 const torch::Tensor& document_ids, torch::ScalarType dtype,
                                 const torch::Device& device) {
  const auto bool_options = torch::TensorOptions().dtype(torch::kBool).device(device);
  // [1, 1, T, T]: query i sees keys j <= i.
  torch::Tensor allowed =
      torch::ones({seq_len, seq_len}, bool_options).tril().view({1, 1, seq_len, seq_len});
  if (key_valid.defined()) {
    allowed = allowed.logical_and(
        key_valid.to(device, /*non_blocking=*/true).ne(0).view({batch, 1, 1, seq_len}));
  }
  if (document_ids.defined()) {
    const torch::Tensor docs = document_ids.to(device, /*non_blocking=*/true);
    allowed = allowed.logical_and(
        docs.view({batch, 1, seq_len, 1}).eq(docs.view({batch, 1, 1, seq_len})));
  }
  const auto options = torch::TensorOptions().dtype(dtype).device(device);
  double lowest = 0.0;  // the dtype's lowest finite value (bf16's differs from fp32's)
  AT_DISPATCH_FLOATING_TYPES_AND2(torch::kBFloat16, torch::kHalf, dtype, "lowest", [&] {
    lowest = static_cast<double>(std::numeric_limits<scalar_t>::lowest());
  });
  return torch::zeros({batch, 1, seq_len, seq_len}, options)
      .masked_fill_(allowed.logical_not(), lowest);
}

bool IsCausalOnly(const torch::Tensor& key_valid, const torch::Tensor& document_ids) {
  if (key_valid.defined() &&
      (!key_valid.device().is_cpu() || !key_valid.ne(0).all().item<bool>())) {
    return false;
  }
  if (document_ids.defined()) {
    if (!document_ids.device().is_cpu() || document_ids.dim() != 2) return false;
    const torch::Tensor first = document_ids.narrow(1, 0, 1);
    if (!document_ids.eq(first).all().item<bool>()) return false;
  }
  return true;
}

}  // namespace fulcrum::models
