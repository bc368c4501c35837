#include "trainer/generate/kv_cache.h"

#include "core/check.h"

namespace fulcrum::generate {

KvCache::KvCache(const KvCacheShape& shape, const torch::TensorOptions& options) : shape_(shape) {
  FULCRUM_CHECK(shape.num_layers > 0 && shape.batch > 0 && shape.num_kv_heads > 0 &&
                    shape.head_dim > 0 && shape.capacity > 0,
                "bad KvCacheShape layers=", shape.num_layers, " batch=", shape.batch,
                " kv_heads=", shape.num_kv_heads, " head_dim=", shape.head_dim,
                " capacity=", shape.capacity);
  for (int64_t i = 0; i < shape.num_layers; ++i) {
    keys_.push_back(
        torch::zeros({shape.batch, shape.num_kv_heads, shape.capacity, shape.head_dim}, options));
    const int64_t value_dim = shape.value_head_dim > 0 ? shape.value_head_dim : shape.head_dim;
    values_.push_back(
        torch::zeros({shape.batch, shape.num_kv_heads, shape.capacity, value_dim}, options));
  }
}

KvView KvCache::Write(int64_t layer, const torch::Tensor& k, const torch::Tensor& v) {
  FULCRUM_CHECK(layer >= 0 && layer < shape_.num_layers, "layer ", layer, " of ",
                shape_.num_layers);
  FULCRUM_CHECK(k.dim() == 4 && v.dim() == 4 && k.sizes().slice(0, 3) == v.sizes().slice(0, 3) &&
                    v.size(3) == values_[layer].size(3),
                "k/v must be [B, Hkv, T, D] / [B, Hkv, T, Dv]");
  FULCRUM_CHECK(
      k.size(0) == shape_.batch && k.size(1) == shape_.num_kv_heads && k.size(3) == shape_.head_dim,
      "k shape ", c10::str(k.sizes()), " does not fit the cache");
  const int64_t t = k.size(2);
  FULCRUM_CHECK(length_ + t <= shape_.capacity, "kv cache full: ", length_, " + ", t, " > ",
                shape_.capacity);
  keys_[layer].narrow(2, length_, t).copy_(k);
  values_[layer].narrow(2, length_, t).copy_(v);
  return KvView{keys_[layer].narrow(2, 0, length_ + t), values_[layer].narrow(2, 0, length_ + t)};
}

void KvCache::Advance(int64_t tokens) {
  FULCRUM_CHECK(tokens >= 0 && length_ + tokens <= shape_.capacity, "advance ", tokens, " from ",
                length_, " past capacity ", shape_.capacity);
  length_ += tokens;
}

}  // namespace fulcrum::generate
