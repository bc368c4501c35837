// NcclCommunicator on one GPU (a group of one rank, MPI_COMM_SELF): Wait()
// orders the compute stream after the collective without the host waiting
// for it, the results are those of the MPI backend, and Barrier() does wait.
// Registered with ctest only when LibTorch has CUDA (scripts/gpu_check.sh);
// compiled everywhere so that it keeps building.
#include <gtest/gtest.h>
#include <mpi.h>

#include "parallel/comm/communicator.h"

#if defined(FULCRUM_WITH_NCCL) && __has_include(<c10/cuda/impl/cuda_cmake_macros.h>)
#include <ATen/cuda/Sleep.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "parallel/comm/nccl_communicator.h"
#define FULCRUM_TEST_NCCL 1
#endif

namespace fulcrum::parallel {
namespace {

// A singleton MPI world (no mpirun): NcclCommunicator bootstraps over MPI.
class MpiEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) MPI_Init(nullptr, nullptr);
  }
  void TearDown() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
};
const ::testing::Environment* const kMpi =
    ::testing::AddGlobalTestEnvironment(new MpiEnvironment);  // NOLINT: gtest owns it

#ifdef FULCRUM_TEST_NCCL
std::unique_ptr<Communicator> SelfGroup() {
  auto comm = NcclCommunicator::Create(MPI_COMM_SELF, "tp", CommOptions{});
  EXPECT_TRUE(comm.ok()) << comm.status();
  return comm.ok() ? std::move(*comm) : nullptr;
}

TEST(NcclCommunicatorTest, WaitOrdersTheComputeStreamWithoutAHostSync) {
  ASSERT_TRUE(torch::cuda::is_available()) << "this test needs a CUDA device";
  const torch::Device cuda(torch::kCUDA, 0);
  std::unique_ptr<Communicator> tp = SelfGroup();
  ASSERT_NE(tp, nullptr);
  const torch::Tensor x = torch::arange(1024, torch::TensorOptions(torch::kFloat).device(cuda));
  torch::cuda::synchronize();
  // The compute stream is busy for about a second (2e9 cycles at ~2 GHz)
  // ahead of the all-reduce.
  at::cuda::sleep(int64_t{2'000'000'000});
  WorkHandle work = tp->AllReduceAsync(x, ReduceOp::kSum);
  work->Wait();
  cudaEvent_t after_wait = nullptr;
  ASSERT_EQ(cudaEventCreateWithFlags(&after_wait, cudaEventDisableTiming), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(after_wait, c10::cuda::getCurrentCUDAStream().stream()), cudaSuccess);
  // Had Wait() waited on the host, the sleep would be over.
  EXPECT_EQ(cudaEventQuery(after_wait), cudaErrorNotReady)
      << "Wait() returned only after the GPU reached the all-reduce";
  // Queued after Wait(): sees the all-reduce's result (a group of one: x).
  const torch::Tensor doubled = x * 2;
  EXPECT_TRUE(torch::equal(doubled.cpu(), torch::arange(1024, torch::kFloat) * 2));
  EXPECT_EQ(cudaEventQuery(after_wait), cudaSuccess);
  cudaEventDestroy(after_wait);
}

TEST(NcclCommunicatorTest, CollectivesOfAGroupOfOneAndABarrierThatWaits) {
  ASSERT_TRUE(torch::cuda::is_available()) << "this test needs a CUDA device";
  const torch::Device cuda(torch::kCUDA, 0);
  std::unique_ptr<Communicator> tp = SelfGroup();
  ASSERT_NE(tp, nullptr);
  const torch::Tensor input = torch::randn({6, 4}, torch::TensorOptions().device(cuda));
  torch::Tensor gathered = torch::empty_like(input);
  tp->AllGatherAsync(input, gathered)->Wait();
  torch::Tensor scattered = torch::empty_like(input);
  tp->ReduceScatterAsync(input, scattered, ReduceOp::kSum)->Wait();
  torch::Tensor exchanged = torch::empty_like(input);
  tp->AllToAllAsync(input, exchanged, {6}, {6})->Wait();
  torch::Tensor bf16 = input.to(torch::kBFloat16);
  tp->AllReduceAsync(bf16, ReduceOp::kMax)->Wait();
  EXPECT_TRUE(torch::equal(gathered, input));
  EXPECT_TRUE(torch::equal(scattered, input));
  EXPECT_TRUE(torch::equal(exchanged, input));
  EXPECT_TRUE(torch::equal(bf16, input.to(torch::kBFloat16)));
  // The barrier's all-reduce follows the compute stream's work so far, and
  // the host waits for it.
  at::cuda::sleep(int64_t{200'000'000});
  cudaEvent_t before_barrier = nullptr;
  ASSERT_EQ(cudaEventCreateWithFlags(&before_barrier, cudaEventDisableTiming), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(before_barrier, c10::cuda::getCurrentCUDAStream().stream()),
            cudaSuccess);
  tp->Barrier();
  EXPECT_EQ(cudaEventQuery(before_barrier), cudaSuccess)
      << "Barrier() returned before the GPU reached it";
  cudaEventDestroy(before_barrier);
}
#else
TEST(NcclCommunicatorTest, NeedsNcclAndACudaLibTorch) {
  GTEST_SKIP() << "built without NCCL or without a CUDA LibTorch: nothing to check";
}
#endif

}  // namespace
}  // namespace fulcrum::parallel
