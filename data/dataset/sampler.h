// Deterministic, portable shuffling: the same (seed, epoch) gives the same
// permutation on every platform, compiler and standard library, so that a
// resumed or re-sharded run sees exactly the same data order. (std::shuffle and
// std::uniform_int_distribution are implementation-defined, hence not used.)
//
// Defines: SplitMix64, ShuffledOrder.
#pragma once

#include <cstdint>
#include <vector>

namespace fulcrum::data {

// SplitMix64 (Steele, Lea, Flood 2014): a 64-bit generator defined entirely by
// integer arithmetic modulo 2^64.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t state) : state_(state) {}
  uint64_t Next();
  // Uniform in [0, bound), bound >= 1, without modulo bias (rejection).
  uint64_t Below(uint64_t bound);

 private:
  uint64_t state_;
};

// A Fisher-Yates permutation of [0, n) drawn from (seed, epoch). n >= 0.
std::vector<int64_t> ShuffledOrder(int64_t n, uint64_t seed, int64_t epoch);

}  // namespace fulcrum::data
