// ShardedAdamW (ZeRO-1) under mpirun (2, 3, 4 ranks): three steps at dp=n
// equal AdamW on one rank given the same summed gradients; StateDict is
// AdamW's (full tensors); LoadStateDict round trip; bf16 parameters;
// optimizer state per rank ~1/dp of AdamW's.
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "parallel/data_parallel/gradient_buckets.h"
#include "tests/parallel/data_parallel/test_communicators.h"
#include "trainer/optim/adamw.h"
#include "trainer/optim/sharded_adamw.h"

namespace fulcrum::optim {
namespace {

using parallel::BucketOptions;
using parallel::GradientBuckets;
using parallel::GradReduction;
using parallel::testing::MakeWorldCommunicator;
using parallel::testing::WorldRank;
using parallel::testing::WorldSize;

const std::vector<std::vector<int64_t>> kShapes = {{6, 5}, {5}, {3, 7}, {4}};

// Identical initial values on every rank.
std::vector<torch::Tensor> MakeParams(torch::ScalarType dtype) {
  torch::manual_seed(3);
  std::vector<torch::Tensor> out;
  for (const auto& shape : kShapes)
    out.push_back(torch::randn(shape).to(dtype).requires_grad_(true));
  return out;
}

std::vector<NamedParameter> Named(const std::vector<torch::Tensor>& params) {
  std::vector<NamedParameter> out;
  for (size_t i = 0; i < params.size(); ++i) {
    out.push_back({"p" + std::to_string(i), params[i], /*decay=*/params[i].dim() >= 2});
  }
  return out;
}

// Rank r's gradient of param i at step s (in the params' dtype).
torch::Tensor GradFor(int rank, int step, size_t i, torch::ScalarType dtype) {
  torch::manual_seed(10000 * rank + 100 * step + static_cast<int64_t>(i));
  return torch::randn(kShapes[i]).to(dtype);
}

std::map<std::string, torch::Tensor> ToMap(const std::vector<checkpoint::NamedTensor>& v) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& nt : v) out[nt.name] = nt.tensor.clone();
  return out;
}

struct Layout {
  int64_t bucket_bytes;
  GradReduction reduction;
};

void RunEquivalence(torch::ScalarType dtype, const Layout& layout) {
  auto comm = MakeWorldCommunicator();
  const int rank = WorldRank();
  const int n = WorldSize();
  const AdamWOptions options{0.9, 0.95, 1e-8, 0.1};

  std::vector<torch::Tensor> params = MakeParams(dtype);
  GradientBuckets buckets(params, *comm, BucketOptions{layout.bucket_bytes, layout.reduction});
  ShardedAdamW sharded(Named(params), buckets, *comm, options);

  std::vector<torch::Tensor> ref_params = MakeParams(dtype);
  AdamW reference(Named(ref_params), options);

  for (int step = 0; step < 3; ++step) {
    buckets.ZeroGrads();
    {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < params.size(); ++i)
        params[i].grad().copy_(GradFor(rank, step, i, dtype));
    }
    buckets.FinishReduction();
    sharded.Step(1e-2, 1.0f);
    // The reference sums every rank's grads in fp32, in rank order.
    for (size_t i = 0; i < ref_params.size(); ++i) {
      torch::Tensor sum = torch::zeros(kShapes[i]);
      for (int r = 0; r < n; ++r) sum += GradFor(r, step, i, dtype).to(torch::kFloat);
      ref_params[i].mutable_grad() = sum.to(dtype);
    }
    reference.Step(1e-2, 1.0f);
    const double tol = dtype == torch::kFloat ? 1e-6 : 1e-2;
    for (size_t i = 0; i < params.size(); ++i) {
      EXPECT_TRUE(
          torch::allclose(params[i].to(torch::kFloat), ref_params[i].to(torch::kFloat), tol, tol))
          << "step " << step << " param " << i << " max diff "
          << (params[i].to(torch::kFloat) - ref_params[i].to(torch::kFloat)).abs().max();
    }
  }
  EXPECT_EQ(sharded.step_count(), 3);

  // StateDict: AdamW's keys, shapes and (within tolerance) values.
  std::map<std::string, torch::Tensor> mine = ToMap(sharded.StateDict());
  std::map<std::string, torch::Tensor> ref = ToMap(reference.StateDict());
  ASSERT_EQ(mine.size(), ref.size());
  for (const auto& [key, value] : ref) {
    ASSERT_EQ(mine.count(key), 1u) << key;
    ASSERT_EQ(mine[key].sizes(), value.sizes()) << key;
    if (key == "step") {
      EXPECT_TRUE(torch::equal(mine[key], value));
    } else {
      const double tol = dtype == torch::kFloat ? 1e-6 : 1e-3;
      EXPECT_TRUE(torch::allclose(mine[key], value, tol, tol)) << key;
    }
  }

  // Round trip: a fresh optimizer loaded from the state continues exactly
  // like the original.
  std::vector<torch::Tensor> params2 = MakeParams(dtype);
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) params2[i].copy_(params[i]);
  }
  GradientBuckets buckets2(params2, *comm, BucketOptions{layout.bucket_bytes, layout.reduction});
  ShardedAdamW loaded(Named(params2), buckets2, *comm, options);
  ASSERT_TRUE(loaded.LoadStateDict(mine).ok());
  EXPECT_EQ(loaded.step_count(), 3);
  std::map<std::string, torch::Tensor> again = ToMap(loaded.StateDict());
  for (const auto& [key, value] : mine) EXPECT_TRUE(torch::equal(again[key], value)) << key;
  for (auto* pair : {&buckets, &buckets2}) {
    pair->ZeroGrads();
  }
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) {
      params[i].grad().copy_(GradFor(rank, 7, i, dtype));
      params2[i].grad().copy_(GradFor(rank, 7, i, dtype));
    }
  }
  buckets.FinishReduction();
  buckets2.FinishReduction();
  sharded.Step(1e-2, 1.0f);
  loaded.Step(1e-2, 1.0f);
  for (size_t i = 0; i < params.size(); ++i) EXPECT_TRUE(torch::equal(params[i], params2[i])) << i;
}

TEST(ShardedAdamWMpiTest, MatchesAdamWFp32ReduceScatter) {
  for (int64_t bytes : {int64_t{1}, int64_t{64}, int64_t{1} << 20}) {
    SCOPED_TRACE(bytes);
    RunEquivalence(torch::kFloat, {bytes, GradReduction::kReduceScatter});
  }
}

TEST(ShardedAdamWMpiTest, MatchesAdamWFp32AllReduceBuckets) {
  RunEquivalence(torch::kFloat, {64, GradReduction::kAllReduce});
}

TEST(ShardedAdamWMpiTest, MatchesAdamWBf16) {
  RunEquivalence(torch::kBFloat16, {64, GradReduction::kReduceScatter});
}

// ZeRO-1 state per rank is AdamW's / dp, up to padding (< dp elements per
// bucket and state tensor kind); over the ranks it adds up to AdamW's.
TEST(ShardedAdamWMpiTest, StateBytesAreOneDpth) {
  auto comm = MakeWorldCommunicator();
  const int n = WorldSize();
  for (torch::ScalarType dtype : {torch::kFloat, torch::kBFloat16}) {
    std::vector<torch::Tensor> params = MakeParams(dtype);
    GradientBuckets buckets(params, *comm, BucketOptions{64, GradReduction::kReduceScatter});
    ShardedAdamW sharded(Named(params), buckets, *comm, AdamWOptions{});
    std::vector<torch::Tensor> ref_params = MakeParams(dtype);
    AdamW reference(Named(ref_params), AdamWOptions{});
    const int64_t full = reference.state_bytes();
    const int64_t kinds = dtype == torch::kFloat ? 2 : 3;
    EXPECT_EQ(full, 4 * kinds * (30 + 5 + 21 + 4));
    const int64_t mine = sharded.state_bytes();
    const int64_t slack = static_cast<int64_t>(buckets.num_buckets()) * n * kinds * 4;
    EXPECT_LE(mine, full / n + slack) << "dtype " << dtype;
    EXPECT_GE(mine, full / n - slack) << "dtype " << dtype;
    int64_t total = 0;
    MPI_Allreduce(&mine, &total, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    EXPECT_EQ(total, full);
  }
}

TEST(ShardedAdamWMpiTest, LoadStateDictRejectsBadStateWithoutChanges) {
  auto comm = MakeWorldCommunicator();
  std::vector<torch::Tensor> params = MakeParams(torch::kFloat);
  GradientBuckets buckets(params, *comm, BucketOptions{64, GradReduction::kReduceScatter});
  ShardedAdamW opt(Named(params), buckets, *comm, AdamWOptions{});
  std::map<std::string, torch::Tensor> good = ToMap(opt.StateDict());
  std::map<std::string, torch::Tensor> bad = good;
  bad["exp_avg.p2"] = torch::zeros({7, 3});
  bad["step"] = torch::full({1}, int64_t{5}, torch::kLong);
  absl::Status status = opt.LoadStateDict(bad);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(std::string(status.message()).find("exp_avg.p2"), std::string::npos) << status;
  EXPECT_EQ(opt.step_count(), 0);
  bad = good;
  bad["exp_avg.nope"] = torch::zeros({1});
  status = opt.LoadStateDict(bad);
  EXPECT_NE(std::string(status.message()).find("exp_avg.nope"), std::string::npos) << status;
  bad = good;
  bad.erase("exp_avg_sq.p1");
  status = opt.LoadStateDict(bad);
  EXPECT_NE(std::string(status.message()).find("exp_avg_sq.p1"), std::string::npos) << status;
}

}  // namespace
}  // namespace fulcrum::optim
