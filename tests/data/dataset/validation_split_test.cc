#include "data/dataset/validation_split.h"

#include <gtest/gtest.h>

#include <set>
#include <vector>

namespace fulcrum::data {
namespace {

// Samples whose `line` (1..n) identifies them.
std::vector<Sample> MakeSamples(int n) {
  std::vector<Sample> samples;
  for (int i = 1; i <= n; ++i) samples.push_back(Sample{{i}, {i}, i});
  return samples;
}

std::vector<int64_t> Lines(const std::vector<Sample>& samples) {
  std::vector<int64_t> lines;
  for (const Sample& s : samples) lines.push_back(s.line);
  return lines;
}

TEST(SplitValidationTest, SameSeedSameSplit) {
  const SplitSamples a = SplitValidation(MakeSamples(50), 0.2, 7);
  const SplitSamples b = SplitValidation(MakeSamples(50), 0.2, 7);
  EXPECT_EQ(Lines(a.train), Lines(b.train));
  EXPECT_EQ(Lines(a.validation), Lines(b.validation));
  EXPECT_EQ(a.validation.size(), 10u);
  EXPECT_EQ(a.train.size(), 40u);
}

TEST(SplitValidationTest, DifferentSeedsChooseDifferently) {
  const auto first = Lines(SplitValidation(MakeSamples(50), 0.2, 1).validation);
  bool any_different = false;
  for (uint64_t seed = 2; seed < 6; ++seed) {
    any_different |= Lines(SplitValidation(MakeSamples(50), 0.2, seed).validation) != first;
  }
  EXPECT_TRUE(any_different);
}

TEST(SplitValidationTest, PartsAreDisjointCoverAllAndKeepOrder) {
  const SplitSamples split = SplitValidation(MakeSamples(37), 0.3, 99);
  std::set<int64_t> seen;
  for (const auto* part : {&split.train, &split.validation}) {
    const std::vector<int64_t> lines = Lines(*part);
    EXPECT_TRUE(std::is_sorted(lines.begin(), lines.end()));
    for (int64_t line : lines) EXPECT_TRUE(seen.insert(line).second) << "duplicate " << line;
  }
  EXPECT_EQ(seen.size(), 37u);
  EXPECT_EQ(split.validation.size(), 11u);  // round(0.3 * 37)
  // Samples move whole: ids travel with their line.
  for (const Sample& s : split.validation) EXPECT_EQ(s.input_ids, std::vector<int64_t>{s.line});
}

TEST(SplitValidationTest, TinyFractionStillGivesOneValidationSample) {
  const SplitSamples split = SplitValidation(MakeSamples(3), 0.01, 5);
  EXPECT_EQ(split.validation.size(), 1u);
  EXPECT_EQ(split.train.size(), 2u);
}

TEST(SplitValidationTest, NeverTakesEverything) {
  for (const double fraction : {0.9, 1.0, 5.0}) {
    const SplitSamples split = SplitValidation(MakeSamples(2), fraction, 5);
    EXPECT_EQ(split.validation.size(), 1u) << fraction;
    EXPECT_EQ(split.train.size(), 1u) << fraction;
  }
}

TEST(SplitValidationTest, ZeroFractionOrSingleSampleKeepsAllForTraining) {
  SplitSamples split = SplitValidation(MakeSamples(10), 0.0, 5);
  EXPECT_TRUE(split.validation.empty());
  EXPECT_EQ(split.train.size(), 10u);
  split = SplitValidation(MakeSamples(1), 0.5, 5);
  EXPECT_TRUE(split.validation.empty());
  EXPECT_EQ(split.train.size(), 1u);
  split = SplitValidation(MakeSamples(0), 0.5, 5);
  EXPECT_TRUE(split.train.empty());
  EXPECT_TRUE(split.validation.empty());
}

}  // namespace
}  // namespace fulcrum::data
