// GradientBuckets under mpirun (2, 3, 4 ranks): after two micro-batches
// (the last one armed) every gradient equals the dp sum, computed here from
// every rank's inputs or in closed form of the ranks; reduce-scatter leaves
// the sum in the owned chunk; AllGatherParameters reassembles parameters;
// reductions launch while backward is still running.
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <algorithm>
#include <string>
#include <vector>

#include "parallel/data_parallel/gradient_buckets.h"
#include "tests/parallel/data_parallel/test_communicators.h"

namespace fulcrum::parallel {
namespace {

using testing::MakeWorldCommunicator;
using testing::RecordingCommunicator;
using testing::WorldRank;
using testing::WorldSize;

// Two linears, a 1-D scale and a parameter the loss never uses.
struct TinyModel : torch::nn::Module {
  TinyModel() {
    torch::manual_seed(7);  // identical initial weights on every rank
    l1 = register_module("l1", torch::nn::Linear(4, 5));
    l2 = register_module("l2", torch::nn::Linear(5, 3));
    scale = register_parameter("scale", torch::rand({3}) + 0.5);
    unused = register_parameter("unused", torch::zeros({2}));
  }
  torch::Tensor Loss(const torch::Tensor& x) {  // x: [batch, 4]
    return (l2(torch::tanh(l1(x))) * scale).pow(2).sum();
  }
  // `unused` first: it lands in the last bucket (buckets launch in order, so
  // a bucket without a gradient holds back the ones after it).
  std::vector<torch::Tensor> Params() {
    return {unused, l1->weight, l1->bias, l2->weight, l2->bias, scale};
  }
  torch::nn::Linear l1{nullptr};
  torch::nn::Linear l2{nullptr};
  torch::Tensor scale;
  torch::Tensor unused;
};

// Rank r's input for micro-batch m: [3, 4].
torch::Tensor InputFor(int rank, int micro_batch) {
  torch::manual_seed(100 * rank + micro_batch + 1);
  return torch::randn({3, 4});
}

// The dp sum of every rank's two micro-batches' gradients, on one rank.
std::vector<torch::Tensor> ReferenceGrads(int world) {
  TinyModel ref;
  for (int r = 0; r < world; ++r) {
    for (int m = 0; m < 2; ++m) ref.Loss(InputFor(r, m)).backward();
  }
  std::vector<torch::Tensor> out;
  for (const torch::Tensor& p : ref.Params()) {
    out.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
  }
  return out;
}

struct ModeCase {
  int64_t bucket_bytes;
  GradReduction reduction;
  bool blocking = false;
};

std::string CaseName(const ModeCase& c) {
  return std::to_string(c.bucket_bytes) +
         (c.reduction == GradReduction::kAllReduce ? " all-reduce" : " reduce-scatter") +
         (c.blocking ? " blocking" : "");
}

TEST(GradientBucketsMpiTest, TwoMicroBatchesGiveDpSumForEveryLayout) {
  auto comm = MakeWorldCommunicator();
  const int rank = WorldRank();
  const int world = WorldSize();
  const std::vector<torch::Tensor> expected = ReferenceGrads(world);
  const std::vector<ModeCase> cases = {
      {int64_t{1} << 20, GradReduction::kAllReduce},  // one bucket
      {1, GradReduction::kAllReduce},                 // one parameter per bucket
      {64, GradReduction::kAllReduce},                // parameters split across buckets
      {int64_t{1} << 20, GradReduction::kReduceScatter},
      {1, GradReduction::kReduceScatter},
      {64, GradReduction::kReduceScatter},
      {64, GradReduction::kAllReduce, true},  // blocking calls as buckets become ready
      {64, GradReduction::kReduceScatter, true},
  };
  for (const ModeCase& c : cases) {
    SCOPED_TRACE(CaseName(c));
    TinyModel model;
    std::vector<torch::Tensor> params = model.Params();
    GradientBuckets buckets(params, *comm, BucketOptions{c.bucket_bytes, c.reduction, c.blocking});
    if (c.bucket_bytes == 1) {
      EXPECT_EQ(buckets.num_buckets(), params.size());
    }
    if (c.bucket_bytes == (int64_t{1} << 20)) {
      EXPECT_EQ(buckets.num_buckets(), 1u);
    }
    if (c.bucket_bytes == 64) {
      EXPECT_GT(buckets.num_buckets(), 1u);
      EXPECT_LT(buckets.num_buckets(), params.size());
    }
    std::vector<void*> ptrs;
    for (const torch::Tensor& p : params) {
      ASSERT_TRUE(p.grad().defined());
      EXPECT_EQ(p.grad().abs().sum().item<float>(), 0.0f);
      ptrs.push_back(p.grad().data_ptr());
    }
    model.Loss(InputFor(rank, 0)).backward();
    buckets.ArmForLastBackward();
    model.Loss(InputFor(rank, 1)).backward();
    buckets.FinishReduction();
    for (size_t i = 0; i < params.size(); ++i) {
      // AccumulateGrad kept writing into the bucket view.
      EXPECT_EQ(params[i].grad().data_ptr(), ptrs[i]) << i;
    }
    int64_t owned_numel = 0;
    for (const auto& owned : buckets.OwnedSegments()) {
      const BucketSegment& s = owned.segment;
      owned_numel += s.numel;
      torch::Tensor got = buckets.BucketGrads(owned.bucket).narrow(0, s.bucket_offset, s.numel);
      torch::Tensor want = expected[s.param_index].view(-1).narrow(0, s.param_offset, s.numel);
      EXPECT_TRUE(torch::allclose(got, want, 1e-5, 1e-5))
          << "param " << s.param_index << " offset " << s.param_offset;
    }
    int64_t total = 0;
    for (const torch::Tensor& p : params) total += p.numel();
    if (c.reduction == GradReduction::kAllReduce) {
      EXPECT_EQ(owned_numel, total);
      for (size_t i = 0; i < params.size(); ++i) {
        EXPECT_TRUE(torch::allclose(params[i].grad(), expected[i], 1e-5, 1e-5)) << i;
      }
    } else {
      // Every element is owned by exactly one rank.
      int64_t sum = 0;
      MPI_Allreduce(&owned_numel, &sum, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
      EXPECT_EQ(sum, total);
      EXPECT_LT(owned_numel, total);
    }
    buckets.ZeroGrads();
    for (size_t i = 0; i < params.size(); ++i) {
      EXPECT_EQ(params[i].grad().data_ptr(), ptrs[i]);
      EXPECT_EQ(params[i].grad().abs().sum().item<float>(), 0.0f);
    }
  }
}

// bf16 parameters; gradients are small integers, exact in bf16: grad of
// sum(p * c) with c[k] = (rank + 1) * (m + 1) * (k % 4) over micro-batches
// m = 0, 1 and ranks r: 3 * (k % 4) * n (n + 1) / 2.
TEST(GradientBucketsMpiTest, Bf16ClosedFormSum) {
  auto comm = MakeWorldCommunicator();
  const int rank = WorldRank();
  const int n = WorldSize();
  for (GradReduction reduction : {GradReduction::kAllReduce, GradReduction::kReduceScatter}) {
    std::vector<torch::Tensor> params = {
        torch::zeros({3, 5}, torch::kBFloat16).requires_grad_(true),
        torch::zeros({7}, torch::kBFloat16).requires_grad_(true)};
    GradientBuckets buckets(params, *comm, BucketOptions{20, reduction});
    EXPECT_EQ(buckets.BucketGrads(0).scalar_type(), torch::kBFloat16);
    for (int m = 0; m < 2; ++m) {
      if (m == 1) buckets.ArmForLastBackward();
      torch::Tensor loss = torch::zeros({}, torch::kFloat);
      for (const torch::Tensor& p : params) {
        torch::Tensor c = torch::arange(p.numel()).remainder(4).mul((rank + 1) * (m + 1));
        loss = loss + (p.view(-1).to(torch::kFloat) * c.to(torch::kFloat)).sum();
      }
      loss.backward();
    }
    buckets.FinishReduction();
    for (const auto& owned : buckets.OwnedSegments()) {
      const BucketSegment& s = owned.segment;
      torch::Tensor want = torch::arange(s.param_offset, s.param_offset + s.numel)
                               .remainder(4)
                               .mul(3 * n * (n + 1) / 2)
                               .to(torch::kBFloat16);
      EXPECT_TRUE(
          torch::equal(buckets.BucketGrads(owned.bucket).narrow(0, s.bucket_offset, s.numel), want))
          << "param " << s.param_index;
    }
  }
}

// Armed once for a pipeline step: two chunks' parameters, each its own
// bucket, accumulate over 3 micro-batches whose backwards interleave (chunk
// 1 of micro-batch m, then chunk 0 of m - 1, as 1F1B's cooldown runs). A
// bucket launched before its last accumulation would miss the later ones:
// the closed form sum over ranks r and micro-batches m of (r + 1)(m + 1)
// per element, 6 n (n + 1) / 2, holds only if each waits for all three.
TEST(GradientBucketsMpiTest, ArmedForAPipelineStepWaitsForEveryMicroBatch) {
  auto comm = MakeWorldCommunicator();
  const int rank = WorldRank();
  const int n = WorldSize();
  for (GradReduction reduction : {GradReduction::kAllReduce, GradReduction::kReduceScatter}) {
    std::vector<torch::Tensor> params = {torch::zeros({6}).requires_grad_(true),
                                         torch::zeros({5}).requires_grad_(true)};
    GradientBuckets buckets(params, *comm, BucketOptions{4, reduction});
    ASSERT_EQ(buckets.num_buckets(), 2u);
    buckets.ArmForLastBackward(3);
    auto backward = [&](int chunk, int m) {
      (params[static_cast<size_t>(chunk)] * static_cast<float>((rank + 1) * (m + 1)))
          .sum()
          .backward();
    };
    backward(1, 0);
    backward(1, 1);
    backward(0, 0);
    backward(1, 2);
    backward(0, 1);
    backward(0, 2);
    buckets.FinishReduction();
    const float want = 6.0f * n * (n + 1) / 2;
    for (const auto& owned : buckets.OwnedSegments()) {
      const BucketSegment& seg = owned.segment;
      EXPECT_TRUE(
          torch::equal(buckets.BucketGrads(owned.bucket).narrow(0, seg.bucket_offset, seg.numel),
                       torch::full({seg.numel}, want)))
          << "param " << seg.param_index;
    }
  }
}

// Each rank writes the true values f(i, k) = 10 i + k only into its owned
// segments and garbage elsewhere; AllGatherParameters restores f everywhere.
TEST(GradientBucketsMpiTest, AllGatherParametersReassemblesOwnedChunks) {
  auto comm = MakeWorldCommunicator();
  const int rank = WorldRank();
  for (torch::ScalarType dtype : {torch::kFloat, torch::kBFloat16}) {
    for (int64_t bucket_bytes : {int64_t{1}, int64_t{40}, int64_t{1} << 20}) {
      std::vector<torch::Tensor> params = {torch::zeros({4, 3}, dtype).requires_grad_(true),
                                           torch::zeros({5}, dtype).requires_grad_(true),
                                           torch::zeros({2, 2}, dtype).requires_grad_(true)};
      GradientBuckets buckets(params, *comm,
                              BucketOptions{bucket_bytes, GradReduction::kReduceScatter});
      torch::NoGradGuard no_grad;
      for (torch::Tensor& p : params) p.fill_(-1000 - rank);
      for (const auto& owned : buckets.OwnedSegments()) {
        const BucketSegment& s = owned.segment;
        params[s.param_index]
            .view(-1)
            .narrow(0, s.param_offset, s.numel)
            .copy_(torch::arange(s.param_offset, s.param_offset + s.numel) +
                   10 * static_cast<int64_t>(s.param_index));
      }
      buckets.AllGatherParameters();
      for (size_t i = 0; i < params.size(); ++i) {
        torch::Tensor want =
            (torch::arange(params[i].numel()) + 10 * static_cast<int64_t>(i)).to(dtype);
        EXPECT_TRUE(torch::equal(params[i].view(-1), want)) << i << " bytes " << bucket_bytes;
      }
    }
  }
}

// Overlap: with one parameter per bucket, the first reduction is launched
// before backward reaches the model's input (the last thing it computes).
TEST(GradientBucketsMpiTest, ReductionLaunchesDuringBackward) {
  auto world = MakeWorldCommunicator();
  RecordingCommunicator comm(*world);
  TinyModel model;
  std::vector<torch::Tensor> params = model.Params();
  GradientBuckets buckets(params, comm, BucketOptions{1, GradReduction::kAllReduce});
  torch::Tensor x = InputFor(WorldRank(), 0).requires_grad_(true);
  x.register_hook([&comm](torch::Tensor g) {
    comm.events().push_back("input_grad");
    return g;
  });
  buckets.ArmForLastBackward();
  model.Loss(x).backward();
  comm.events().push_back("backward_end");
  buckets.FinishReduction();
  const std::vector<std::string>& ev = comm.events();
  const auto input_grad = std::find(ev.begin(), ev.end(), "input_grad");
  const auto backward_end = std::find(ev.begin(), ev.end(), "backward_end");
  ASSERT_NE(input_grad, ev.end());
  ASSERT_FALSE(ev.empty());
  EXPECT_EQ(ev.front().rfind("launch:", 0), 0u) << ev.front();
  const auto launches_before = std::count_if(
      ev.begin(), input_grad, [](const std::string& e) { return e.rfind("launch:", 0) == 0; });
  EXPECT_GE(launches_before, 3);  // scale, l2.bias and l2.weight's buckets
  // All six buckets launch in the end ("unused" only in FinishReduction).
  const auto launches = std::count_if(
      ev.begin(), ev.end(), [](const std::string& e) { return e.rfind("launch:", 0) == 0; });
  EXPECT_EQ(launches, 6);
  EXPECT_NE(backward_end, ev.end());
}

TEST(GradientBucketsMpiTest, UnarmedFinishReducesEverythingAndRepeats) {
  auto comm = MakeWorldCommunicator();
  const int n = WorldSize();
  std::vector<torch::Tensor> params = {torch::zeros({6}).requires_grad_(true)};
  GradientBuckets buckets(params, *comm, BucketOptions{8, GradReduction::kAllReduce});
  for (int step = 1; step <= 2; ++step) {
    buckets.ZeroGrads();
    (params[0] * static_cast<float>(WorldRank() + step)).sum().backward();
    buckets.FinishReduction();  // not armed: reduces now
    // sum over r of (r + step) = n (n - 1) / 2 + n step
    EXPECT_TRUE(torch::allclose(params[0].grad(), torch::full({6}, n * (n - 1) / 2.0 + n * step)))
        << "step " << step;
  }
}

}  // namespace
}  // namespace fulcrum::parallel
