#include "trainer/models/decoder_layer.h"

namespace fulcrum::models {

DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& config, int64_t layer_index,
                                   const torch::TensorOptions& options,
                                   const ModelParallel& parallel) {
  // Registration order = HF parameter order.
  if (config.mla.enabled()) {
    latent_attn = register_module("self_attn", MlaAttention(config, options, parallel));
  } else {
    self_attn = register_module("self_attn", Attention(config, options, parallel));
  }
  if (IsMoeLayer(config, layer_index)) {
    const char* name = config.moe.style == MoeStyle::kMixtral ? "block_sparse_moe" : "mlp";
    moe = register_module(name, MoeBlock(config, options, parallel));
  } else {
    mlp = register_module("mlp", Mlp(config, options, parallel));
  }
  input_layernorm =
      register_module("input_layernorm", RMSNorm(config.hidden_size, config.rms_norm_eps, options));
  post_attention_layernorm = register_module(
      "post_attention_layernorm", RMSNorm(config.hidden_size, config.rms_norm_eps, options));
}

void DecoderLayerImpl::SetRecompute(Recompute mode) {
  recompute_ = mode;
  const bool selective = mode == Recompute::kSelective;
  if (latent_attn) {
    latent_attn->SetRecompute(selective);
  } else {
    self_attn->SetRecompute(selective);
  }
  input_layernorm->SetRecompute(selective);
  post_attention_layernorm->SetRecompute(selective);
}

torch::Tensor DecoderLayerImpl::FeedForward(const torch::Tensor& h, ForwardPass pass) {
  if (moe) return h + moe->forward(post_attention_layernorm->forward(h), pass);
  return h + mlp->forward(post_attention_layernorm->ForwardRecomputable(h));
}

torch::Tensor DecoderLayerImpl::Compute(const torch::Tensor& x, const RopeCosSin& rope,
                                        const torch::Tensor& mask, ForwardPass pass) {
  // MLA's latent projections keep the norm's output (recompute.h).
  const torch::Tensor attended =
      latent_attn ? latent_attn->forward(input_layernorm->forward(x), rope, mask)
                  : self_attn->forward(input_layernorm->ForwardRecomputable(x), rope, mask);
  return FeedForward(x + attended, pass);
}

torch::Tensor DecoderLayerImpl::forward(const torch::Tensor& x, const RopeCosSin& rope,
                                        const torch::Tensor& mask) {
  if (recompute_ != Recompute::kFull) return Compute(x, rope, mask, ForwardPass::kNormal);
  RecomputedRegion region;
  region.fn = [this, rope, mask](const std::vector<torch::Tensor>& in, ForwardPass pass) {
    return Compute(in[0], rope, mask, pass);
  };
  region.params = ParametersRequiringGrad(*this);
  region.preserve_rng = true;  // LoRA dropout
  return RunRecomputed(region, {x});
}

torch::Tensor DecoderLayerImpl::ForwardCached(const torch::Tensor& x, const RopeCosSin& rope,
                                              const torch::Tensor& mask, generate::KvCache& cache,
                                              int64_t layer_index) {
  const torch::Tensor normed = input_layernorm->forward(x);
  return FeedForward(
      x + (latent_attn ? latent_attn->ForwardCached(normed, rope, mask, cache, layer_index)
                       : self_attn->ForwardCached(normed, rope, mask, cache, layer_index)),
      ForwardPass::kNormal);
}

}  // namespace fulcrum::models
