// KvCache: the keys and values of every decoder layer for the tokens seen so
// far, so that incremental decoding feeds only the new tokens.
//
// Defines: KvView, KvCache.
//
// NOTE: depends on LibTorch only, so that trainer/models can take it without a
// cycle (models -> generate/kv_cache.h, generate/generator -> models).
// Buffers are allocated once at full capacity (no per-step reallocation or
// concatenation, which on a GPU would copy the whole cache every token).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace fulcrum::generate {

// Keys/values of positions [0, length) of one layer: views into the cache.
struct KvView {
  torch::Tensor k;  // [B, Hkv, length, D]
  torch::Tensor v;  // [B, Hkv, length, Dv]
};

struct KvCacheShape {
  int64_t num_layers = 0;
  int64_t batch = 1;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t capacity = 0;  // positions: prompt + new tokens
  // Dv, the values' width when it differs from the keys' (multi-head latent
  // attention); 0 = head_dim.
  int64_t value_head_dim = 0;
};

class KvCache {
 public:
  // `options`: the dtype and device of the model's activations.
  KvCache(const KvCacheShape& shape, const torch::TensorOptions& options);

  // Positions already stored (every layer holds the same number).
  int64_t length() const { return length_; }
  int64_t capacity() const { return shape_.capacity; }
  int64_t num_layers() const { return shape_.num_layers; }

  // Stores k [B, Hkv, T, D] and v [B, Hkv, T, Dv] of `layer` at positions [length(), length()+T)
  // and returns that layer's positions [0, length()+T). Does not advance
  // length(): the forward calls Advance(T) once after every layer wrote.
  KvView Write(int64_t layer, const torch::Tensor& k, const torch::Tensor& v);
  void Advance(int64_t tokens);
  // Forgets every position (buffers are kept).
  void Clear() { length_ = 0; }

 private:
  KvCacheShape shape_;
  std::vector<torch::Tensor> keys_;    // per layer [B, Hkv, capacity, D]
  std::vector<torch::Tensor> values_;  // per layer [B, Hkv, capacity, Dv]
  int64_t length_ = 0;
};

}  // namespace fulcrum::generate
