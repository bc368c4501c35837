#include "trainer/optim/adamw_bandwidth.h"

#include <gtest/gtest.h>

#include <cmath>

namespace fulcrum::optim {
namespace {

// A rate, not a figure to hold this machine to: positive and finite, also
// for a state smaller than a slice of the update.
TEST(AdamWBandwidthTest, MeasuresAPositiveRate) {
  const double rate = MeasureAdamWBandwidth(int64_t{1} << 20, 2);
  EXPECT_GT(rate, 0.0);
  EXPECT_TRUE(std::isfinite(rate));
  EXPECT_GT(MeasureAdamWBandwidth(16, 1), 0.0);
}

}  // namespace
}  // namespace fulcrum::optim
