// Column-major storage for frozen weights whose rows alias in the cache.
//
// A weight [out, in] with in a multiple of 1024 fp32 values has every row at
// the same offset within a 4 KiB page, so the rows a product reads together
// fall in the same cache sets. oneDNN's matmul (brgemm) takes only dense
// operands, and copies such a weight into blocks on every call. Stored
// column-major (the same [out, in] tensor with strides (1, out)), its
// columns are what lie out * 4 bytes apart. Where that is not a multiple of
// 4 KiB the two products of a frozen weight run faster: the ~290M bench
// Llama's shapes at 2 threads (EPYC, oneDNN brgemm; forward + input
// gradient, medians of 15):
//   gate/up [2816, 1024], 1024 rows   33.2-33.5 ms -> 31.6-31.9
//   k/v     [256, 1024],  1024 rows   2.96-2.99    -> 2.80-2.84
//   lm_head [32000, 1024], 256 rows   98.8-99.6    -> 91.1-91.8
// and q/o (both dims 1024) unchanged, down [1024, 2816] 3-4% slower, which
// the rule leaves alone. Only frozen weights move: a trained weight's
// gradient, optimizer state and buckets take dense row-major storage.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace fulcrum::lora {

// Stores column-major every LoraLinear weight under `model` that is frozen
// (requires_grad false), fp32 on the CPU, contiguous, with in * 4 bytes a
// multiple of 4 KiB and out * 4 bytes not, where fp32 products take oneDNN
// (models::MatrixProductUsesOneDnn). Values, sizes and dtype stay; each
// weight is copied once, one at a time. Returns how many moved.
int64_t StoreAliasedFrozenWeightsColumnMajor(torch::nn::Module& model);

// Whether a frozen fp32 weight of these sizes is stored column-major by the
// function above (the rule alone: in * 4 bytes a multiple of 4 KiB, out * 4
// not).
bool AliasedRowsMoveColumnMajor(int64_t out_features, int64_t in_features);

}  // namespace fulcrum::lora
