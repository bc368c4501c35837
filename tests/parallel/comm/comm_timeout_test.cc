// What both communicator backends share, without ranks: argument checks,
// layouts, messages and the deadline loop; plus one mpirun job in which a
// peer never arrives and the run must end with a named timeout, not hang.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <string>

#include "parallel/comm/comm_common.h"
#include "tests/test_support.h"

namespace fulcrum::parallel {
namespace {

// gtest only (no gmock here): a substring check that prints the text.
#define EXPECT_CONTAINS(text, part) \
  EXPECT_NE(std::string(text).find(part), std::string::npos) << "in: " << (text)

std::string MessageOf(const absl::Status& status) { return std::string(status.message()); }

TEST(CommCommonTest, DescribesOperations) {
  EXPECT_EQ(DescribeOp({"all_reduce", 1024, torch::kBFloat16, ReduceOp::kSum}),
            "all_reduce of 1024 x bfloat16 (sum)");
  EXPECT_EQ(DescribeOp({"send", 8, torch::kFloat, std::nullopt, 1}),
            "send of 8 x float32 to rank 1");
  EXPECT_EQ(DescribeOp({"barrier"}), "barrier");
  const CommIdentity tp{"tp", 1, 2};
  EXPECT_EQ(TimeoutMessage(tp, {"all_reduce", 1024, torch::kBFloat16, ReduceOp::kSum}, 2.0),
            "communicator 'tp' rank 1 of 2: all_reduce of 1024 x bfloat16 (sum) did not complete "
            "within 2.0 s: a peer rank crashed, hung, or never called it");
}

TEST(CommCommonTest, TensorChecks) {
  EXPECT_TRUE(ValidateCommTensor("all_reduce", "tensor", torch::ones({4}), torch::kCPU).ok());
  const absl::Status strided =
      ValidateCommTensor("all_reduce", "tensor", torch::ones({4, 4}).t(), torch::kCPU);
  EXPECT_CONTAINS(MessageOf(strided), "all_reduce: tensor is not contiguous");
  const absl::Status dtype =
      ValidateCommTensor("broadcast", "tensor", torch::ones({4}, torch::kBool), torch::kCPU);
  EXPECT_CONTAINS(MessageOf(dtype), "broadcast: tensor has dtype Bool");
  const absl::Status device = ValidateCommTensor("send", "tensor", torch::ones({4}), torch::kCUDA);
  EXPECT_CONTAINS(MessageOf(device), "send: tensor is on cpu");
  EXPECT_FALSE(ValidateCommTensor("send", "tensor", torch::Tensor(), torch::kCPU).ok());
  const absl::Status mixed =
      ValidatePair("all_gather", torch::ones({2}), torch::ones({4}, torch::kHalf), torch::kCPU);
  EXPECT_CONTAINS(MessageOf(mixed), "input is float32 but output is float16");
  EXPECT_CONTAINS(MessageOf(ValidatePeer("recv", "peer", 3, 3)),
                  "recv: peer 3 is not a rank of a group of 3");
  EXPECT_TRUE(ValidatePeer("recv", "peer", 2, 3).ok());
}

TEST(CommCommonTest, OutputSizes) {
  EXPECT_TRUE(ValidateReduceScatter(torch::ones({12}), torch::ones({4}), 3, torch::kCPU).ok());
  EXPECT_CONTAINS(
      MessageOf(ValidateReduceScatter(torch::ones({12}), torch::ones({5}), 3, torch::kCPU)),
      "reduce_scatter: input has 12 elements, expected group size 3 x output's 5 = 15");
  EXPECT_TRUE(ValidateAllGather(torch::ones({2, 2}), torch::ones({8}), 2, torch::kCPU).ok());
  EXPECT_CONTAINS(MessageOf(ValidateAllGather(torch::ones({4}), torch::ones({7}), 2, torch::kCPU)),
                  "all_gather: output has 7 elements, expected group size 2 x input's 4 = 8");
}

TEST(CommCommonTest, AllGatherVLayout) {
  auto layout = AllGatherVLayout(torch::ones({2}), torch::ones({6}), {1, 2, 3}, 1, 3, torch::kCPU);
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->displs, (std::vector<int64_t>{0, 1, 3}));
  EXPECT_EQ(layout->total, 6);
  EXPECT_CONTAINS(
      MessageOf(AllGatherVLayout(torch::ones({2}), torch::ones({7}), {1, 2, 3}, 1, 3, torch::kCPU)
                    .status()),
      "counts [1, 2, 3] sum to 6 but output has 7 elements");
  EXPECT_CONTAINS(
      MessageOf(AllGatherVLayout(torch::ones({3}), torch::ones({6}), {1, 2, 3}, 1, 3, torch::kCPU)
                    .status()),
      "counts[1] = 2 but this rank's input has 3 elements");
  EXPECT_FALSE(
      AllGatherVLayout(torch::ones({2}), torch::ones({3}), {1, 2}, 1, 3, torch::kCPU).ok());
  EXPECT_FALSE(
      AllGatherVLayout(torch::ones({2}), torch::ones({3}), {-1, 2, 2}, 1, 3, torch::kCPU).ok());
}

TEST(CommCommonTest, AllToAllLayout) {
  // Rows of 3 elements; 5 rows sent as [2, 0, 3], 4 received as [1, 1, 2].
  auto layout = AllToAllLayoutFor(torch::ones({5, 3}), torch::ones({4, 3}), {1, 1, 2}, {2, 0, 3}, 3,
                                  torch::kCPU);
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->send.counts, (std::vector<int64_t>{6, 0, 9}));
  EXPECT_EQ(layout->send.displs, (std::vector<int64_t>{0, 6, 6}));
  EXPECT_EQ(layout->recv.counts, (std::vector<int64_t>{3, 3, 6}));
  EXPECT_EQ(layout->recv.displs, (std::vector<int64_t>{0, 3, 6}));
  auto equal = AllToAllLayoutFor(torch::ones({6}), torch::ones({6}), {}, {}, 3, torch::kCPU);
  ASSERT_TRUE(equal.ok());
  EXPECT_EQ(equal->send.counts, (std::vector<int64_t>{2, 2, 2}));

  auto bad_sum = AllToAllLayoutFor(torch::ones({5, 3}), torch::ones({4, 3}), {1, 1, 2}, {2, 0, 2},
                                   3, torch::kCPU);
  EXPECT_CONTAINS(MessageOf(bad_sum.status()),
                  "all_to_all: input splits [2, 0, 2] sum to 4 but the input has 5 rows");
  auto uneven = AllToAllLayoutFor(torch::ones({5}), torch::ones({6}), {}, {}, 3, torch::kCPU);
  EXPECT_CONTAINS(MessageOf(uneven.status()), "input has 5 rows, not divisible by group size 3");
  auto rows = AllToAllLayoutFor(torch::ones({3, 2}), torch::ones({3, 4}), {}, {}, 3, torch::kCPU);
  EXPECT_CONTAINS(MessageOf(rows.status()), "differ in shape");
  auto count = AllToAllLayoutFor(torch::ones({3}), torch::ones({3}), {1, 2}, {}, 3, torch::kCPU);
  EXPECT_CONTAINS(MessageOf(count.status()), "output splits have 2 entries, group size is 3");
}

TEST(CommCommonDeathTest, BadArgumentsAreFatalAndNamed) {
  const CommIdentity tp{"tp", 1, 2};
  const absl::Status bad =
      ValidateReduceScatter(torch::ones({12}), torch::ones({5}), 2, torch::kCPU);
  EXPECT_DEATH(CheckCommArgs(tp, bad),
               "communicator 'tp' rank 1 of 2: reduce_scatter: input has 12 elements");
  CheckCommArgs(tp, absl::OkStatus());  // returns
}

TEST(CommCommonTest, PollUntilDoneStopsAtTheDeadline) {
  int calls = 0;
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(PollUntilDone([&] { return ++calls < 0; }, 0.1));
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(waited, 0.1);
  EXPECT_LT(waited, 2.0);
  int countdown = 1000;
  EXPECT_TRUE(PollUntilDone([&] { return --countdown <= 0; }, 10.0));
  EXPECT_EQ(countdown, 0);
}

std::string SelfDir() {
  return std::filesystem::read_symlink("/proc/self/exe").parent_path().string();
}

// Rank 1 never joins rank 0's all_reduce (timeout 1 s): every rank must end,
// non-zero, naming rank 0 and the operation, well before the test timeout;
// for the blocking call (timed by the watchdog) and the async one (Wait()).
class CommTimeoutTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CommTimeoutTest, PeerThatNeverArrivesEndsTheRunWithANamedError) {
  const std::string binary = SelfDir() + "/parallel_comm_communicator_mpi_test";
  ASSERT_EQ(access(binary.c_str(), X_OK), 0) << binary << " is not built";
  const auto start = std::chrono::steady_clock::now();
  const testing::CommandResult result = testing::RunCommand(
      "FULCRUM_COMM_HANG_TEST=" + GetParam() + " OMP_NUM_THREADS=1 timeout 60 " +
      testing::SourceDir() + "/scripts/mpirun.sh 2 " + binary +
      " --gtest_filter=MpiCommunicatorTest.PeerThatNeverArrivesIsAFatalTimeout");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_NE(result.exit_code, 0) << result.output;
  EXPECT_LT(seconds, 30.0) << result.output;
  EXPECT_CONTAINS(result.output,
                  "communicator 'world' rank 0 of 2: all_reduce of 1024 x "
                  "bfloat16 (sum) did not complete within 1.0 s")
      << result.output;
}

INSTANTIATE_TEST_SUITE_P(BlockingAndAsync, CommTimeoutTest, ::testing::Values("blocking", "async"));

}  // namespace
}  // namespace fulcrum::parallel
