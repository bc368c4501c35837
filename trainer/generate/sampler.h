// Picks the next token from logits: greedy (temperature 0), or sampling with
// a temperature and nucleus (top-p) filter from a seeded generator.
//
// Defines: SamplingOptions, Sampler, NucleusProbs.
//
// NOTE: sampling draws from std::mt19937_64 on the host, never from a device
// generator: the same seed gives the same tokens on CPU and GPU and across
// LibTorch versions (the logits' one [V] copy per token is the only sync).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <random>

namespace fulcrum::generate {

struct SamplingOptions {
  double temperature = 0.0;  // 0 = greedy (argmax); > 0 divides the logits
  double top_p = 1.0;        // in (0, 1]: keep the most likely tokens holding this mass
  uint64_t seed = 0;         // of the sampling generator
};

// logits [V] -> probabilities [V] fp64 on the CPU: softmax(logits /
// temperature), then every token outside the nucleus zeroed and the rest
// renormalised. The nucleus (as HF's TopPLogitsWarper) is the smallest set of
// most likely tokens whose mass reaches top_p; it always keeps the top token.
// temperature > 0 and 0 < top_p <= 1 (checked).
torch::Tensor NucleusProbs(const torch::Tensor& logits, double temperature, double top_p);

class Sampler {
 public:
  // Options must be valid (temperature >= 0, 0 < top_p <= 1): checked.
  explicit Sampler(const SamplingOptions& options);
  // logits [V] (any float dtype, any device) -> a token id in [0, V).
  int64_t Next(const torch::Tensor& logits);

 private:
  SamplingOptions options_;
  std::mt19937_64 rng_;
};

}  // namespace fulcrum::generate
