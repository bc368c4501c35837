#include "data/dataset/validation_split.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "data/dataset/sampler.h"

namespace fulcrum::data {

SplitSamples SplitValidation(std::vector<Sample> samples, double fraction, uint64_t seed) {
  SplitSamples split;
  const auto n = static_cast<int64_t>(samples.size());
  if (!(fraction > 0) || n < 2) {
    split.train = std::move(samples);
    return split;
  }
  const double wanted = std::round(std::min(fraction, 1.0) * static_cast<double>(n));
  const int64_t count = std::clamp<int64_t>(static_cast<int64_t>(wanted), 1, n - 1);
  // A stream of its own (epoch argument) so that the split does not mirror
  // the training sampler's epoch-0 order for the same seed.
  constexpr int64_t kSplitStream = -1;
  std::vector<int64_t> order = ShuffledOrder(n, seed, kSplitStream);
  std::vector<bool> is_validation(static_cast<size_t>(n), false);
  for (int64_t k = 0; k < count; ++k) is_validation[static_cast<size_t>(order[k])] = true;
  split.validation.reserve(static_cast<size_t>(count));
  split.train.reserve(static_cast<size_t>(n - count));
  for (int64_t i = 0; i < n; ++i) {
    auto& part = is_validation[static_cast<size_t>(i)] ? split.validation : split.train;
    part.push_back(std::move(samples[static_cast<size_t>(i)]));
  }
  return split;
}

}  // namespace fulcrum::data
