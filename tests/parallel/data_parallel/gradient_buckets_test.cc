// GradientBuckets without ranks (dp = 1): the layout (reverse order, sizes,
// dtype boundaries), accumulation into the bucket views, no communication,
// ZeroGrads re-attaching views, ReleaseGrads' copy on first accumulation, and
// rejected parameters.
#include "parallel/data_parallel/gradient_buckets.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "core/check.h"
#include "tests/parallel/silent_communicator.h"

namespace fulcrum::parallel {
namespace {

// dp = 1: any communication is a bug here.
using SoloCommunicator = testing::SilentCommunicator;

TEST(GradientBucketsTest, ReverseOrderBucketsSplitAtSizeAndDtype) {
  SoloCommunicator comm(0, 1, "dp");
  std::vector<torch::Tensor> params = {
      torch::zeros({4}).requires_grad_(true),                     // 16 bytes
      torch::zeros({2, 2}).requires_grad_(true),                  // 16 bytes
      torch::zeros({3}).requires_grad_(true),                     // 12 bytes
      torch::zeros({5}, torch::kBFloat16).requires_grad_(true)};  // 10 bytes
  GradientBuckets buckets(params, comm, BucketOptions{32, GradReduction::kReduceScatter});
  // Reverse order: [p3 bf16] [p2 p1] [p0]; p2 + p1 = 28 bytes fit, + p0 would not.
  ASSERT_EQ(buckets.num_buckets(), 3u);
  EXPECT_EQ(buckets.BucketGrads(0).scalar_type(), torch::kBFloat16);
  EXPECT_EQ(buckets.BucketGrads(0).numel(), 5);
  EXPECT_EQ(buckets.BucketGrads(1).numel(), 7);
  EXPECT_EQ(buckets.BucketGrads(2).numel(), 4);
  const auto owned = buckets.OwnedSegments();  // dp = 1: everything
  ASSERT_EQ(owned.size(), 4u);
  EXPECT_EQ(owned[1].bucket, 1u);
  EXPECT_EQ(owned[1].segment.param_index, 2u);
  EXPECT_EQ(owned[1].segment.bucket_offset, 0);
  EXPECT_EQ(owned[2].segment.param_index, 1u);
  EXPECT_EQ(owned[2].segment.bucket_offset, 3);
  EXPECT_EQ(owned[2].segment.numel, 4);
  EXPECT_EQ(buckets.reduction(), GradReduction::kReduceScatter);
}

// A weight [2, 3] and a bias [3] of ones in one all-reduce bucket, and where
// their gradient views start.
class TwoParamBucketsTest : public ::testing::Test {
 protected:
  SoloCommunicator comm{0, 1, "dp"};
  torch::Tensor w = torch::ones({2, 3}).requires_grad_(true);
  torch::Tensor b = torch::ones({3}).requires_grad_(true);
  GradientBuckets buckets{{w, b}, comm, BucketOptions{1 << 20, GradReduction::kAllReduce}};
  void* w_ptr = w.grad().data_ptr();
  void* b_ptr = b.grad().data_ptr();
};

TEST_F(TwoParamBucketsTest, MicroBatchesAccumulateInPlaceWithoutCommunication) {
  (w * 2).sum().backward();
  buckets.ArmForLastBackward();
  ((w * 3).sum() + (b * 5).sum()).backward();
  buckets.FinishReduction();
  EXPECT_EQ(w.grad().data_ptr(), w_ptr);
  EXPECT_EQ(b.grad().data_ptr(), b_ptr);
  EXPECT_TRUE(torch::equal(w.grad(), torch::full({2, 3}, 5.0f)));
  EXPECT_TRUE(torch::equal(b.grad(), torch::full({3}, 5.0f)));
  // The bucket is the grads: b (registered last) first, then w.
  EXPECT_TRUE(torch::equal(buckets.BucketGrads(0), torch::full({9}, 5.0f)));
  buckets.AllGatherParameters();  // dp = 1: nothing to do

  // AdamW::ZeroGrad-style reset: ZeroGrads re-attaches the views.
  w.mutable_grad() = torch::Tensor();
  buckets.ZeroGrads();
  EXPECT_EQ(w.grad().data_ptr(), w_ptr);
  EXPECT_EQ(buckets.BucketGrads(0).abs().sum().item<float>(), 0.0f);
  (w * 4).sum().backward();
  buckets.FinishReduction();
  EXPECT_TRUE(torch::equal(buckets.BucketGrads(0).narrow(0, 3, 6), torch::full({6}, 4.0f)));
}

// ReleaseGrads: no pass over the buckets. The first accumulation copies into
// the view (the stale values of the last step do not add in), later ones add
// there, and FinishReduction zeroes a parameter that got no gradient.
TEST_F(TwoParamBucketsTest, ReleasedGradsCopyInOnFirstAccumulation) {
  ((w * 7).sum() + (b * 9).sum()).backward();  // last step's gradients
  buckets.FinishReduction();
  buckets.ReleaseGrads();
  EXPECT_FALSE(w.grad().defined());
  EXPECT_FALSE(b.grad().defined());
  (w * 2).sum().backward();  // b gets no gradient this step
  EXPECT_EQ(w.grad().data_ptr(), w_ptr);
  EXPECT_TRUE(torch::equal(w.grad(), torch::full({2, 3}, 2.0f)));
  buckets.ArmForLastBackward();
  (w * 3).sum().backward();
  buckets.FinishReduction();
  EXPECT_EQ(w.grad().data_ptr(), w_ptr);
  EXPECT_EQ(b.grad().data_ptr(), b_ptr);
  EXPECT_TRUE(torch::equal(w.grad(), torch::full({2, 3}, 5.0f)));
  EXPECT_TRUE(torch::equal(b.grad(), torch::zeros({3})));  // not last step's 9
  EXPECT_TRUE(torch::equal(buckets.BucketGrads(0).narrow(0, 3, 6), torch::full({6}, 5.0f)));

  // A .grad given to a parameter without one before FinishReduction (as
  // SyncPartialGradients does) is what its view takes.
  buckets.ReleaseGrads();
  (w * 4).sum().backward();
  b.mutable_grad() = torch::full({3}, 6.0f);
  buckets.FinishReduction();
  EXPECT_EQ(b.grad().data_ptr(), b_ptr);
  EXPECT_TRUE(torch::equal(buckets.BucketGrads(0).narrow(0, 0, 3), torch::full({3}, 6.0f)));
  EXPECT_TRUE(torch::equal(w.grad(), torch::full({2, 3}, 4.0f)));
}

TEST(GradientBucketsDeathTest, RejectsNonLeafAndNonContiguousParams) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  SoloCommunicator comm(0, 1, "dp");
  torch::Tensor leaf = torch::ones({3, 2}).requires_grad_(true);
  EXPECT_DEATH(GradientBuckets({leaf * 2}, comm, BucketOptions{}), "leaf");
  torch::Tensor strided = torch::ones({3, 2}).t().requires_grad_(true);
  EXPECT_DEATH(GradientBuckets({strided}, comm, BucketOptions{}), "contiguous");
  EXPECT_DEATH(GradientBuckets({leaf}, comm, BucketOptions{0, GradReduction::kAllReduce}),
               "bucket_bytes");
}

TEST(GradientBucketsDeathTest, AccumulatingMoreOftenThanArmedForIsABrokenInvariant) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  SoloCommunicator comm(0, 1, "dp");
  torch::Tensor w = torch::ones({3}).requires_grad_(true);
  GradientBuckets buckets({w}, comm, BucketOptions{1 << 20, GradReduction::kAllReduce});
  buckets.ArmForLastBackward(2);
  (w * 2).sum().backward();
  (w * 2).sum().backward();
  EXPECT_DEATH((w * 2).sum().backward(), "more often than armed for");
}

}  // namespace
}  // namespace fulcrum::parallel
