#include "trainer/generate/generator.h"

#include <algorithm>

#include "core/check.h"

namespace fulcrum::generate {
namespace {

torch::Tensor IdsTensor(const std::vector<int32_t>& ids, const torch::Device& device) {
  std::vector<int64_t> wide(ids.begin(), ids.end());
  return torch::tensor(wide, torch::kLong).view({1, -1}).to(device);  // [1, T]
}

// Chooses the next token from logits [V] and records the step in `result`.
// Returns false when generation must stop.
bool Step(const torch::Tensor& logits, Sampler& sampler, const GenerateOptions& options,
          GenerateResult& result) {
  result.last_logits = logits.to(torch::kCPU, torch::kFloat);
  const int32_t next = static_cast<int32_t>(sampler.Next(logits));
  result.tokens.push_back(next);
  if (std::find(options.eos_ids.begin(), options.eos_ids.end(), next) != options.eos_ids.end()) {
    result.stopped_at_eos = true;
    return false;
  }
  return static_cast<int64_t>(result.tokens.size()) < options.max_new_tokens;
}

}  // namespace

GenerateResult Generate(models::CausalLM& model, const std::vector<int32_t>& prompt,
                        const GenerateOptions& options) {
  FULCRUM_CHECK(!prompt.empty(), "empty prompt");
  const int64_t vocab = model->config().vocab_size;
  for (int32_t id : prompt)
    FULCRUM_CHECK(id >= 0 && id < vocab, "prompt id ", id, " vocab ", vocab);
  GenerateResult result;
  if (options.max_new_tokens <= 0) return result;
  torch::NoGradGuard no_grad;
  model->eval();
  const torch::Device device = model->model->embed_tokens->weight.device();
  Sampler sampler(options.sampling);
  if (!options.use_cache) {
    std::vector<int32_t> sequence = prompt;
    bool go_on = true;
    while (go_on) {
      const torch::Tensor logits = model->forward({IdsTensor(sequence, device)});  // [1, T, V]
      go_on = Step(logits[0][-1], sampler, options, result);
      sequence.push_back(result.tokens.back());
    }
    return result;
  }
  const int64_t capacity = static_cast<int64_t>(prompt.size()) + options.max_new_tokens;
  KvCache cache = model->NewKvCache(/*batch=*/1, capacity);
  // Prefill: every prompt position once; only the last one's logits matter.
  torch::Tensor logits = model->ForwardCached(IdsTensor(prompt, device), cache, true);  // [1, 1, V]
  while (Step(logits[0][0], sampler, options, result)) {
    logits = model->ForwardCached(IdsTensor({result.tokens.back()}, device), cache, true);
  }
  return result;
}

}  // namespace fulcrum::generate
