#include "data/dataset/mixture.h"

#include <gtest/gtest.h>

#include <map>
#include <vector>

namespace fulcrum::data {
namespace {

std::vector<Sample> MakeSamples(int n) {
  std::vector<Sample> samples;
  for (int i = 1; i <= n; ++i) samples.push_back(Sample{{i}, {i}, i});
  return samples;
}

std::map<int64_t, int> CountByLine(const std::vector<Sample>& samples) {
  std::map<int64_t, int> counts;
  for (const Sample& s : samples) ++counts[s.line];
  return counts;
}

TEST(WeightedRepeatTest, WholeWeightRepeatsEverySample) {
  std::vector<Sample> out;
  WeightedRepeat(MakeSamples(4), 3.0, 1, 0, &out);
  ASSERT_EQ(out.size(), 12u);
  for (const auto& [line, count] : CountByLine(out)) EXPECT_EQ(count, 3) << line;
}

TEST(WeightedRepeatTest, FractionalWeightAddsDistinctSubset) {
  std::vector<Sample> out;
  WeightedRepeat(MakeSamples(10), 1.3, 1, 0, &out);
  ASSERT_EQ(out.size(), 13u);  // 10 + round(0.3 * 10)
  int twice = 0;
  for (const auto& [line, count] : CountByLine(out)) {
    EXPECT_TRUE(count == 1 || count == 2) << line;
    twice += count == 2;
  }
  EXPECT_EQ(twice, 3);
}

TEST(WeightedRepeatTest, WeightBelowOneSubsamples) {
  std::vector<Sample> out;
  WeightedRepeat(MakeSamples(8), 0.5, 3, 0, &out);
  ASSERT_EQ(out.size(), 4u);
  for (size_t i = 1; i < out.size(); ++i) EXPECT_LT(out[i - 1].line, out[i].line);  // line order
}

TEST(WeightedRepeatTest, SeedAndStreamDetermineTheChoice) {
  const auto choose = [](uint64_t seed, int64_t stream) {
    std::vector<Sample> out;
    WeightedRepeat(MakeSamples(20), 0.25, seed, stream, &out);
    std::vector<int64_t> lines;
    for (const Sample& s : out) lines.push_back(s.line);
    return lines;
  };
  EXPECT_EQ(choose(7, 0), choose(7, 0));
  bool any_different = false;
  for (uint64_t seed = 8; seed < 12; ++seed) any_different |= choose(seed, 0) != choose(7, 0);
  EXPECT_TRUE(any_different);
  bool streams_differ = false;
  for (int64_t stream = 1; stream < 5; ++stream) streams_differ |= choose(7, stream) != choose(7, 0);
  EXPECT_TRUE(streams_differ);
}

TEST(WeightedRepeatTest, AppendsAfterExistingSamples) {
  std::vector<Sample> out = MakeSamples(2);
  WeightedRepeat(MakeSamples(3), 1.0, 1, 0, &out);
  ASSERT_EQ(out.size(), 5u);
  EXPECT_EQ(out[2].line, 1);
}

}  // namespace
}  // namespace fulcrum::data
