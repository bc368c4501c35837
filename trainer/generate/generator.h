// Autoregressive generation from a CausalLM: prefill the prompt once, then
// one token per step fed alone with the KV cache, until an end-of-sequence id
// or the token budget.
//
// Defines: GenerateOptions, GenerateResult, Generate.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "trainer/generate/sampler.h"
#include "trainer/models/causal_lm.h"

namespace fulcrum::generate {

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  SamplingOptions sampling;      // temperature 0 = greedy
  std::vector<int32_t> eos_ids;  // generation stops after emitting any of these
  bool use_cache = true;         // false: recompute the whole sequence each step (reference)
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // new tokens only, including the final eos if one was emitted
  bool stopped_at_eos = false;
  torch::Tensor last_logits;  // [V] fp32 CPU: the logits the last token was chosen from
};

// prompt: at least one id, all in [0, vocab) (checked: callers validate user
// input first). Runs without autograd and with the model in eval mode.
GenerateResult Generate(models::CausalLM& model, const std::vector<int32_t>& prompt,
                        const GenerateOptions& options);

}  // namespace fulcrum::generate
