#include "data/dataset/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

namespace fulcrum::data {
namespace {

using Ids = std::vector<int64_t>;

bool IsPermutation(Ids order, int64_t n) {
  std::sort(order.begin(), order.end());
  Ids identity(n);
  std::iota(identity.begin(), identity.end(), 0);
  return order == identity;
}

TEST(SplitMix64Test, MatchesTheReferenceSequence) {
  // Reference values of splitmix64.c (Vigna) from state 0.
  SplitMix64 rng(0);
  EXPECT_EQ(rng.Next(), 0xE220A8397B1DCDAFULL);
  EXPECT_EQ(rng.Next(), 0x6E789E6AA1B965F4ULL);
}

TEST(SplitMix64Test, BelowStaysInRange) {
  SplitMix64 rng(7);
  std::vector<int> counts(3, 0);
  for (int i = 0; i < 3000; ++i) {
    const uint64_t v = rng.Below(3);
    ASSERT_LT(v, 3u);
    ++counts[v];
  }
  for (int c : counts) EXPECT_GT(c, 800);  // roughly uniform
  EXPECT_EQ(rng.Below(1), 0u);
}

TEST(ShuffledOrderTest, IsAPermutation) {
  for (int64_t n : {0, 1, 2, 7, 100, 1001}) {
    const Ids order = ShuffledOrder(n, 1234, 3);
    ASSERT_EQ(static_cast<int64_t>(order.size()), n);
    EXPECT_TRUE(IsPermutation(order, n)) << n;
  }
}

TEST(ShuffledOrderTest, IsDeterministicAndDiffersBetweenEpochsAndSeeds) {
  EXPECT_EQ(ShuffledOrder(100, 1234, 0), ShuffledOrder(100, 1234, 0));
  EXPECT_NE(ShuffledOrder(100, 1234, 0), ShuffledOrder(100, 1234, 1));
  EXPECT_NE(ShuffledOrder(100, 1234, 0), ShuffledOrder(100, 1235, 0));
  Ids identity(100);
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_NE(ShuffledOrder(100, 1234, 0), identity);
}

// Pinned so that any change of generator, seeding or shuffle is noticed: it
// would silently change the data order of resumed runs. Computed by an
// independent Python implementation of the same algorithm.
TEST(ShuffledOrderTest, PinnedValues) {
  EXPECT_EQ(ShuffledOrder(10, 1234, 0), (Ids{7, 9, 0, 3, 2, 8, 5, 6, 4, 1}));
  EXPECT_EQ(ShuffledOrder(10, 1234, 1), (Ids{3, 4, 9, 7, 8, 2, 0, 5, 1, 6}));
  EXPECT_EQ(ShuffledOrder(10, 42, 0), (Ids{5, 9, 0, 3, 1, 2, 6, 4, 7, 8}));
}

}  // namespace
}  // namespace fulcrum::data
