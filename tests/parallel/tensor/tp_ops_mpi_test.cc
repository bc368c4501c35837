// The conjugate tp/sp autograd functions on 2, 3 and 4 ranks: forward values
// and backward gradients against closed forms of the rank or the unsharded
// tensors (torch::manual_seed(0) builds the same full tensors on every rank).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <vector>

#include "parallel/tensor/partial_gradients.h"
#include "parallel/tensor/tp_ops.h"
#include "tests/parallel/tensor/tp_test_util.h"

namespace fulcrum::parallel::tensor {
namespace {

using testing::MakeGroup;
using testing::MaxAbsDiff;
using testing::SumOfRankPlusOne;

class TpOpsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    world_ = MakeGroup(MPI_COMM_WORLD, "world");
    ASSERT_NE(world_, nullptr);
    r_ = world_->rank();
    s_ = world_->size();
    torch::manual_seed(0);
  }
  // A leaf tensor that requires grad.
  static torch::Tensor Leaf(const torch::Tensor& t) {
    return t.detach().clone().requires_grad_(true);
  }
  std::unique_ptr<Communicator> world_;
  int r_ = 0;
  int s_ = 1;
};

TEST_F(TpOpsTest, CopyToTpRegionIsIdentityForwardAllReduceBackward) {
  const torch::Tensor x = Leaf(torch::randn({2, 3, 4}));
  const torch::Tensor y = CopyToTpRegion(x, *world_);
  EXPECT_TRUE(torch::equal(y, x));
  (y * (r_ + 1)).sum().backward();
  EXPECT_TRUE(torch::allclose(x.grad(), torch::full({2, 3, 4}, SumOfRankPlusOne(s_))));
}

TEST_F(TpOpsTest, ReduceFromTpRegionIsAllReduceForwardIdentityBackward) {
  const torch::Tensor base = torch::randn({2, 3, 4});
  const torch::Tensor w = torch::randn({2, 3, 4});
  const torch::Tensor x = Leaf(base * (r_ + 1));
  const torch::Tensor y = ReduceFromTpRegion(x, *world_);
  EXPECT_LT(MaxAbsDiff(y, base * SumOfRankPlusOne(s_)), 1e-5);
  EXPECT_TRUE(torch::equal(x, base * (r_ + 1))) << "the input must not be written";
  (y * w).sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), w));
}

TEST_F(TpOpsTest, GatherFromTpRegionConcatenatesLastDimInRankOrder) {
  const torch::Tensor full = torch::randn({2, 3, 4 * s_});
  const torch::Tensor w = torch::randn({2, 3, 4 * s_});
  const torch::Tensor x = Leaf(full.narrow(2, 4 * r_, 4));
  const torch::Tensor y = GatherFromTpRegion(x, *world_);
  EXPECT_TRUE(torch::equal(y, full));
  (y * w).sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), w.narrow(2, 4 * r_, 4)));
}

TEST_F(TpOpsTest, ScatterToTpRegionKeepsOwnLastDimChunkAndGathersGrad) {
  const torch::Tensor full = torch::randn({2, 3, 4 * s_});
  const torch::Tensor w = torch::randn({2, 3, 4 * s_});
  const torch::Tensor x = Leaf(full);
  const torch::Tensor y = ScatterToTpRegion(x, *world_);
  EXPECT_TRUE(torch::equal(y, full.narrow(2, 4 * r_, 4)));
  (y * w.narrow(2, 4 * r_, 4)).sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), w));
}

TEST_F(TpOpsTest, ScatterToSpRegionKeepsOwnSequenceChunkAndGathersGrad) {
  const torch::Tensor full = torch::randn({2, 2 * s_, 3});
  const torch::Tensor w = torch::randn({2, 2 * s_, 3});
  const torch::Tensor x = Leaf(full);
  const torch::Tensor y = ScatterToSpRegion(x, *world_);
  EXPECT_TRUE(torch::equal(y, full.narrow(1, 2 * r_, 2)));
  (y * w.narrow(1, 2 * r_, 2)).sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), w));
}

TEST_F(TpOpsTest, GatherFromSpRegionGathersSequenceAndReduceScattersGrad) {
  const torch::Tensor full = torch::randn({2, 2 * s_, 3});
  const torch::Tensor w = torch::randn({2, 2 * s_, 3});
  const torch::Tensor x = Leaf(full.narrow(1, 2 * r_, 2));
  const torch::Tensor y = GatherFromSpRegion(x, *world_);
  EXPECT_TRUE(torch::equal(y, full));
  // Rank r's upstream gradient is (r + 1) w: the reduce-scatter sums them.
  (y * w * (r_ + 1)).sum().backward();
  EXPECT_LT(MaxAbsDiff(x.grad(), w.narrow(1, 2 * r_, 2) * SumOfRankPlusOne(s_)), 1e-5);
}

TEST_F(TpOpsTest, GatherSpToReplicatedGathersSequenceAndKeepsOwnGradChunk) {
  const torch::Tensor full = torch::randn({2, 2 * s_, 3});
  const torch::Tensor w = torch::randn({2, 2 * s_, 3});
  const torch::Tensor x = Leaf(full.narrow(1, 2 * r_, 2));
  const torch::Tensor y = GatherSpToReplicated(x, *world_);
  EXPECT_TRUE(torch::equal(y, full));
  // The consumer's gradient is complete on every rank: no sum, own chunk.
  (y * w).sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), w.narrow(1, 2 * r_, 2)));
}

TEST_F(TpOpsTest, ReduceScatterToSpRegionSumsOwnSequenceChunkAndGathersGrad) {
  const torch::Tensor full = torch::randn({2, 2 * s_, 3});
  const torch::Tensor w = torch::randn({2, 2 * s_, 3});
  const torch::Tensor x = Leaf(full * (r_ + 1));
  const torch::Tensor y = ReduceScatterToSpRegion(x, *world_);
  EXPECT_LT(MaxAbsDiff(y, full.narrow(1, 2 * r_, 2) * SumOfRankPlusOne(s_)), 1e-5);
  (y * w.narrow(1, 2 * r_, 2)).sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), w));
}

TEST_F(TpOpsTest, OpsOnNonContiguousInput) {
  // A transposed view: the ops must not assume contiguous memory.
  const torch::Tensor full = torch::randn({2, 3, 2 * s_});
  const torch::Tensor strided = full.transpose(1, 2);  // [2, 2s, 3], not contiguous
  ASSERT_FALSE(strided.is_contiguous());
  EXPECT_LT(
      MaxAbsDiff(ReduceScatterToSpRegion(strided, *world_), strided.narrow(1, 2 * r_, 2) * s_),
      1e-5);
  EXPECT_TRUE(torch::equal(GatherFromSpRegion(strided.narrow(1, 2 * r_, 2), *world_), strided));
  EXPECT_TRUE(torch::equal(GatherFromTpRegion(full.narrow(2, 2 * r_, 2), *world_), full));
}

TEST_F(TpOpsTest, AllGatherAlongEveryDim) {
  const torch::Tensor full = torch::randn({2 * s_, 3 * s_, 4 * s_});
  for (int64_t dim = 0; dim < 3; ++dim) {
    const int64_t chunk = full.size(dim) / s_;
    const torch::Tensor mine = full.narrow(dim, chunk * r_, chunk);
    EXPECT_TRUE(torch::equal(AllGatherAlongDim(mine, dim, *world_), full)) << "dim " << dim;
  }
  const torch::Tensor mine = full.narrow(2, 4 * r_, 4);
  EXPECT_TRUE(torch::equal(AllGatherAlongDim(mine, -1, *world_), full));
  // Uneven sizes on other dims are fine; only the gathered dim grows.
  const torch::Tensor small = torch::full({1, 2}, static_cast<float>(r_));
  const torch::Tensor gathered = AllGatherAlongDim(small, 1, *world_);
  ASSERT_EQ(gathered.sizes(), (std::vector<int64_t>{1, 2 * s_}));
  for (int r = 0; r < s_; ++r) EXPECT_EQ(gathered[0][2 * r + 1].item<float>(), r);
}

// Launched together and waited on in the other order: the results are the
// blocking forms', on a non-contiguous input with a batch dim before the
// sequence (the gather's rank axis moves past it).
TEST_F(TpOpsTest, PendingCollectivesGiveTheBlockingResults) {
  const torch::Tensor full = torch::randn({3, 4, 2 * s_}).transpose(1, 2);  // [3, 2s, 4]
  const torch::Tensor summed = full * (r_ + 1);
  PendingAlongDim gather = AllGatherAlongDimAsync(full.narrow(1, 2 * r_, 2), 1, *world_);
  PendingAlongDim scatter = ReduceScatterAlongDimAsync(summed, 1, *world_);
  EXPECT_LT(MaxAbsDiff(scatter.Wait(), full.narrow(1, 2 * r_, 2) * SumOfRankPlusOne(s_)), 1e-5);
  EXPECT_TRUE(torch::equal(gather.Wait(), full));
  EXPECT_TRUE(torch::equal(summed, full * (r_ + 1))) << "the input must not be written";
}

TEST_F(TpOpsTest, EveryOpIsIdentityOnAOneRankGroup) {
  std::unique_ptr<Communicator> self = MakeGroup(MPI_COMM_SELF, "self");
  ASSERT_NE(self, nullptr);
  ASSERT_EQ(self->size(), 1);
  using Op = torch::Tensor (*)(const torch::Tensor&, Communicator&);
  const std::vector<Op> ops = {CopyToTpRegion,          ReduceFromTpRegion,  GatherFromTpRegion,
                               ScatterToTpRegion,       ScatterToSpRegion,   GatherFromSpRegion,
                               ReduceScatterToSpRegion, GatherSpToReplicated};
  const torch::Tensor w = torch::randn({2, 3, 4});
  for (size_t i = 0; i < ops.size(); ++i) {
    const torch::Tensor x = Leaf(torch::randn({2, 3, 4}));
    const torch::Tensor y = ops[i](x, *self);
    EXPECT_TRUE(torch::equal(y, x)) << "op " << i;
    (y * w).sum().backward();
    EXPECT_TRUE(torch::equal(x.grad(), w)) << "op " << i;
  }
  EXPECT_TRUE(torch::equal(AllGatherAlongDim(w, 1, *self), w));
  EXPECT_TRUE(torch::equal(AllGatherAlongDimAsync(w, 1, *self).Wait(), w));
  EXPECT_TRUE(torch::equal(ReduceScatterAlongDimAsync(w, 1, *self).Wait(), w));
}

TEST_F(TpOpsTest, AllReducePartialGradientsSumsEveryDtypeInPlace) {
  const torch::Tensor base_a = torch::randn({3, 4});
  const torch::Tensor a = base_a * (r_ + 1);
  // Small integers: exact in bf16 after the sum.
  const torch::Tensor b = (torch::arange(1, 6, torch::kFloat) * (r_ + 1)).to(torch::kBFloat16);
  const torch::Tensor c_storage = torch::randn({2, 4});
  const torch::Tensor c_base = c_storage.clone();
  const torch::Tensor c = c_storage.t();  // [4, 2], not contiguous: written through its strides
  const torch::Tensor d = torch::arange(4, torch::kDouble) * (r_ + 1);
  AllReducePartialGradients({a, torch::Tensor(), b, c, d}, *world_);
  const double k = SumOfRankPlusOne(s_);
  EXPECT_LT(MaxAbsDiff(a, base_a * k), 1e-5);
  EXPECT_EQ(b.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(b.to(torch::kFloat), torch::arange(1, 6, torch::kFloat) * k));
  EXPECT_LT(MaxAbsDiff(c_storage, c_base * s_), 1e-5);
  EXPECT_LT(MaxAbsDiff(d, torch::arange(4, torch::kDouble) * k), 1e-12);
}

TEST_F(TpOpsTest, AllReducePartialGradientsOfNothingIsANoOp) {
  AllReducePartialGradients({}, *world_);
  AllReducePartialGradients({torch::Tensor()}, *world_);
  const torch::Tensor x = torch::ones({2});
  AllReducePartialGradients({x}, *world_);  // collectives still line up afterwards
  EXPECT_TRUE(torch::equal(x, torch::full({2}, static_cast<float>(s_))));
}

}  // namespace
}  // namespace fulcrum::parallel::tensor
