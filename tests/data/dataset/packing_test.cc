#include "data/dataset/packing.h"

#include <gtest/gtest.h>

#include <numeric>

namespace fulcrum::data {
namespace {

using Ids = std::vector<int64_t>;
constexpr int64_t kX = kIgnoreIndex;

Sample Make(Ids ids) { return Sample{ids, ids, 0}; }

Ids Iota(int64_t n) {
  Ids order(n);
  std::iota(order.begin(), order.end(), 0);
  return order;
}

// The worked example of packing.h: seq_len 4, samples [a b c] [d e] [f g h i j].
TEST(PackingTest, PacksAcrossRowsMaskingDocumentStarts) {
  const std::vector<Sample> samples = {Make({1, 2, 3}), Make({4, 5}), Make({6, 7, 8, 9, 10})};
  const std::vector<Row> rows = BuildRows(samples, Iota(3), {/*seq_len=*/4, /*pack=*/true});
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(CountRows(samples, {4, true}), 3);

  EXPECT_EQ(rows[0].input_ids, (Ids{1, 2, 3, 4}));
  EXPECT_EQ(rows[0].labels, (Ids{1, 2, 3, kX}));
  EXPECT_EQ(rows[0].position_ids, (Ids{0, 1, 2, 0}));
  EXPECT_EQ(rows[0].document_ids, (Ids{0, 0, 0, 1}));
  EXPECT_EQ(rows[0].attention_mask, (Ids{1, 1, 1, 1}));

  // Sample 1 continues at the start of row 1 as document 0, positions restarting.
  EXPECT_EQ(rows[1].input_ids, (Ids{5, 6, 7, 8}));
  EXPECT_EQ(rows[1].labels, (Ids{5, kX, 7, 8}));
  EXPECT_EQ(rows[1].position_ids, (Ids{0, 0, 1, 2}));
  EXPECT_EQ(rows[1].document_ids, (Ids{0, 1, 1, 1}));

  // Last row: padded with id 0, label -100, mask 0, document -1.
  EXPECT_EQ(rows[2].input_ids, (Ids{9, 10, 0, 0}));
  EXPECT_EQ(rows[2].labels, (Ids{9, 10, kX, kX}));
  EXPECT_EQ(rows[2].position_ids, (Ids{0, 1, 0, 0}));
  EXPECT_EQ(rows[2].document_ids, (Ids{0, 0, -1, -1}));
  EXPECT_EQ(rows[2].attention_mask, (Ids{1, 1, 0, 0}));

  EXPECT_EQ(CountTargets(rows[0]), 2);  // labels[1:] = 2 3 -100
  EXPECT_EQ(CountTargets(rows[1]), 2);  // -100 7 8
  EXPECT_EQ(CountTargets(rows[2]), 1);  // 10 -100 -100
}

TEST(PackingTest, FollowsTheOrderAndKeepsFileLabels) {
  const std::vector<Sample> samples = {Sample{{1, 2}, {kX, 2}, 1},
                                       Sample{{3, 4, 5}, {kX, kX, 5}, 2}};
  const std::vector<Row> rows = BuildRows(samples, {1, 0}, {/*seq_len=*/5, /*pack=*/true});
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].input_ids, (Ids{3, 4, 5, 1, 2}));
  EXPECT_EQ(rows[0].labels, (Ids{kX, kX, 5, kX, 2}));
  EXPECT_EQ(rows[0].position_ids, (Ids{0, 1, 2, 0, 1}));
  EXPECT_EQ(rows[0].document_ids, (Ids{0, 0, 0, 1, 1}));
  EXPECT_EQ(CountTargets(rows[0]), 2);
}

TEST(PackingTest, LongSampleSpansSeveralRowsAndExactFitHasNoPadding) {
  const std::vector<Sample> samples = {Make({1, 2, 3, 4, 5, 6, 7}), Make({8})};
  const std::vector<Row> rows = BuildRows(samples, Iota(2), {/*seq_len=*/4, /*pack=*/true});
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].input_ids, (Ids{1, 2, 3, 4}));
  EXPECT_EQ(rows[0].document_ids, (Ids{0, 0, 0, 0}));
  EXPECT_EQ(rows[1].input_ids, (Ids{5, 6, 7, 8}));
  EXPECT_EQ(rows[1].labels, (Ids{5, 6, 7, kX}));
  EXPECT_EQ(rows[1].position_ids, (Ids{0, 1, 2, 0}));
  EXPECT_EQ(rows[1].document_ids, (Ids{0, 0, 0, 1}));
  EXPECT_EQ(rows[1].attention_mask, (Ids{1, 1, 1, 1}));
}

TEST(PackingTest, RowCountDoesNotDependOnOrder) {
  const std::vector<Sample> samples = {Make({1, 2, 3}), Make({4}), Make({5, 6, 7, 8, 9}),
                                       Make({10, 11})};
  for (const bool pack : {true, false}) {
    const PackingOptions options{3, pack};
    const int64_t expected = CountRows(samples, options);
    EXPECT_EQ(expected, pack ? 4 : 4);  // 11 tokens -> ceil(11/3) = 4; or 4 samples
    EXPECT_EQ(static_cast<int64_t>(BuildRows(samples, {0, 1, 2, 3}, options).size()), expected);
    EXPECT_EQ(static_cast<int64_t>(BuildRows(samples, {2, 3, 1, 0}, options).size()), expected);
  }
  EXPECT_EQ(CountRows(samples, {2, true}), 6);
}

TEST(PackingTest, NoPackTruncatesAndRightPads) {
  const std::vector<Sample> samples = {Sample{{1, 2, 3, 4, 5, 6}, {kX, 2, 3, 4, 5, 6}, 1},
                                       Make({7, 8})};
  const std::vector<Row> rows = BuildRows(samples, {1, 0}, {/*seq_len=*/4, /*pack=*/false});
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].input_ids, (Ids{7, 8, 0, 0}));
  EXPECT_EQ(rows[0].labels, (Ids{7, 8, kX, kX}));
  EXPECT_EQ(rows[0].attention_mask, (Ids{1, 1, 0, 0}));
  EXPECT_EQ(rows[0].position_ids, (Ids{0, 1, 0, 0}));
  EXPECT_EQ(rows[0].document_ids, (Ids{0, 0, -1, -1}));
  EXPECT_EQ(rows[1].input_ids, (Ids{1, 2, 3, 4}));
  EXPECT_EQ(rows[1].labels, (Ids{kX, 2, 3, 4}));
  EXPECT_EQ(rows[1].attention_mask, (Ids{1, 1, 1, 1}));
  EXPECT_EQ(rows[1].position_ids, (Ids{0, 1, 2, 3}));
  EXPECT_EQ(rows[1].document_ids, (Ids{0, 0, 0, 0}));
  EXPECT_EQ(CountTargets(rows[0]), 1);
  EXPECT_EQ(CountTargets(rows[1]), 3);
}

TEST(PackingTest, EmptyOrderGivesNoRows) {
  EXPECT_TRUE(BuildRows({Make({1})}, {}, {4, true}).empty());
  EXPECT_TRUE(BuildRows({Make({1})}, {}, {4, false}).empty());
}

TEST(PackingDeathTest, OrderIndexOutOfRangeIsABug) {
  EXPECT_DEATH(BuildRows({Make({1})}, {1}, {4, true}), "index");
}

}  // namespace
}  // namespace fulcrum::data
