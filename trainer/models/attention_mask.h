// The additive attention mask, built once per forward and shared by every
// layer: causal, plus padding (attention_mask), plus documents (document_ids).
#pragma once

#include <torch/torch.h>

namespace fulcrum::models {

// key_valid [B, T] (1 = real token) and document_ids [B, T] are optional
// (undefined). Returns [B, 1, T, T] in `dtype` on input_ids' device: 0 where
// query i may attend key j (j <= i, key j real, same document), the dtype's
// lowest value elsewhere (as HF eager: never -inf, so no NaN on a fully masked
// row).
torch::Tensor BuildAttentionMask(int64_t batch, int64_t seq_len, const torch::Tensor& key_valid,
                                 const torch::Tensor& document_ids, torch::ScalarType dtype,
                                 const torch::Device& device);

// Whether the mask of a batch is the causal triangle alone: no padding
// (key_valid undefined or all real) and one document per row (document_ids
// undefined or constant along each row). Reads host tensors only: a device
// tensor answers false rather than synchronising with the device. On CUDA the
// model then passes no mask and the fused attention runs its causal
// (flash) kernel.
bool IsCausalOnly(const torch::Tensor& key_valid, const torch::Tensor& document_ids);

}  // namespace fulcrum::models
