#include "trainer/generate/sampler.h"

#include "core/check.h"

namespace fulcrum::generate {

torch::Tensor NucleusProbs(const torch::Tensor& logits, double temperature, double top_p) {
  FULCRUM_CHECK(logits.dim() == 1, "logits must be [V], got ", c10::str(logits.sizes()));
  FULCRUM_CHECK(temperature > 0, "temperature ", temperature);
  FULCRUM_CHECK(top_p > 0 && top_p <= 1, "top_p ", top_p);
  // fp64 so that the cumulative mass of a large vocabulary does not drift.
  const torch::Tensor probs =
      torch::softmax(logits.to(torch::kCPU, torch::kDouble) / temperature, 0);
  if (top_p >= 1.0) return probs;
  const auto sorted = probs.sort(/*dim=*/0, /*descending=*/true);
  const torch::Tensor sorted_probs = std::get<0>(sorted);  // [V] descending
  const torch::Tensor order = std::get<1>(sorted);         // [V] token ids
  // Token i (in descending order) is kept when the mass before it is < top_p:
  // the top token always, and the one that crosses top_p.
  const torch::Tensor mass_before = sorted_probs.cumsum(0) - sorted_probs;
  const torch::Tensor keep_sorted = mass_before.lt(top_p);
  const torch::Tensor kept =
      torch::zeros_like(probs).scatter_(0, order, sorted_probs * keep_sorted.to(torch::kDouble));
  return kept / kept.sum();
}

Sampler::Sampler(const SamplingOptions& options) : options_(options), rng_(options.seed) {
  FULCRUM_CHECK(options.temperature >= 0, "temperature ", options.temperature);
  FULCRUM_CHECK(options.top_p > 0 && options.top_p <= 1, "top_p ", options.top_p);
}

int64_t Sampler::Next(const torch::Tensor& logits) {
  FULCRUM_CHECK(logits.dim() == 1 && logits.size(0) > 0, "logits must be [V], got ",
                c10::str(logits.sizes()));
  if (options_.temperature == 0) return logits.argmax().item<int64_t>();
  const torch::Tensor probs = NucleusProbs(logits, options_.temperature, options_.top_p);
  const double* p = probs.data_ptr<double>();
  const int64_t vocab = probs.size(0);
  // Inverse CDF: the first token whose cumulative mass exceeds u.
  const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
  double mass = 0;
  int64_t last_nonzero = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    if (p[i] <= 0) continue;
    last_nonzero = i;
    mass += p[i];
    if (u < mass) return i;
  }
  return last_nonzero;  // u within rounding of 1
}

}  // namespace fulcrum::generate
