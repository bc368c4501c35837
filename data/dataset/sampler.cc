#include "data/dataset/sampler.h"

#include <numeric>
#include <utility>

#include "core/check.h"

namespace fulcrum::data {
namespace {

constexpr uint64_t kGoldenGamma = 0x9E3779B97F4A7C15ULL;

// SplitMix64's output function (a bijection of 64-bit words).
uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace

uint64_t SplitMix64::Next() {
  state_ += kGoldenGamma;
  return Mix(state_);
}

uint64_t SplitMix64::Below(uint64_t bound) {
  FULCRUM_CHECK(bound >= 1, "bound=", bound);
  // Values below `threshold` (= 2^64 mod bound) would make the low residues
  // more likely; they are redrawn.
  const uint64_t threshold = (0 - bound) % bound;
  for (;;) {
    const uint64_t r = Next();
    if (r >= threshold) return r % bound;
  }
}

std::vector<int64_t> ShuffledOrder(int64_t n, uint64_t seed, int64_t epoch) {
  FULCRUM_CHECK(n >= 0, "n=", n);
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  // Mixing the epoch through its own Mix keeps nearby (seed, epoch) pairs
  // from giving overlapping generator streams.
  SplitMix64 rng(Mix(seed) ^ Mix(static_cast<uint64_t>(epoch) + kGoldenGamma));
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(rng.Below(static_cast<uint64_t>(i) + 1));
    std::swap(order[i], order[j]);
  }
  return order;
}

}  // namespace fulcrum::data
