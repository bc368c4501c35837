#include "data/dataset/mixture.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "data/dataset/sampler.h"

namespace fulcrum::data {

void WeightedRepeat(const std::vector<Sample>& samples, double weight, uint64_t seed,
                    int64_t stream, std::vector<Sample>* out) {
  FULCRUM_CHECK(std::isfinite(weight) && weight > 0, "weight=", weight);
  const double whole = std::floor(weight);
  const auto n = static_cast<int64_t>(samples.size());
  for (int64_t copy = 0; copy < static_cast<int64_t>(whole); ++copy) {
    out->insert(out->end(), samples.begin(), samples.end());
  }
  const auto extra = std::min<int64_t>(n, std::llround((weight - whole) * static_cast<double>(n)));
  if (extra <= 0) return;
  // The first `extra` of a shuffled order, re-sorted so that extras keep
  // line order (the loader's sampler shuffles anyway).
  std::vector<int64_t> chosen = ShuffledOrder(n, seed, stream);
  chosen.resize(static_cast<size_t>(extra));
  std::sort(chosen.begin(), chosen.end());
  for (const int64_t i : chosen) out->push_back(samples[static_cast<size_t>(i)]);
}

}  // namespace fulcrum::data
