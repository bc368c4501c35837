#include "parallel/comm/completion_watchdog.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>

namespace fulcrum::parallel {
namespace {

using std::chrono::milliseconds;

std::shared_ptr<const CommIdentity> Tp() {
  return std::make_shared<const CommIdentity>(CommIdentity{"tp", 1, 2});
}

// An operation completing when `done` is set, counting its polls and releases.
struct FakeOperation {
  std::atomic<bool> done{false};
  std::atomic<int> polls{0};
  std::atomic<int> releases{0};
  std::atomic<bool> polled_elsewhere{false};

  CompletionWatchdog::Operation Watched(std::thread::id caller) {
    return {OpDescription("all_reduce", 8, torch::kFloat, ReduceOp::kSum),
            [this, caller]() -> absl::StatusOr<bool> {
              ++polls;
              if (std::this_thread::get_id() != caller) polled_elsewhere = true;
              return done.load();
            },
            [this] { ++releases; }, [] {}};
  }
};

TEST(CompletionWatchdogTest, ReleasesEachOperationOnceItIsDoneAndNotBefore) {
  CompletionWatchdog watchdog(Tp(), 30.0);
  FakeOperation first, second;
  watchdog.Watch(first.Watched(std::this_thread::get_id()));
  watchdog.Watch(second.Watched(std::this_thread::get_id()));
  std::this_thread::sleep_for(milliseconds(50));
  // Polled (about every 10 ms), on the watchdog's thread, and still held.
  EXPECT_GE(first.polls.load(), 2);
  EXPECT_TRUE(first.polled_elsewhere.load());
  EXPECT_EQ(first.releases.load(), 0);
  EXPECT_EQ(second.releases.load(), 0);

  second.done = true;
  const auto start = std::chrono::steady_clock::now();
  while (second.releases.load() == 0 &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(10)) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  EXPECT_EQ(second.releases.load(), 1);
  EXPECT_EQ(first.releases.load(), 0);

  first.done = true;
  watchdog.Drain();
  EXPECT_EQ(first.releases.load(), 1);
  EXPECT_EQ(second.releases.load(), 1);
  // Released operations are no longer polled.
  const int polls = first.polls.load();
  std::this_thread::sleep_for(milliseconds(30));
  EXPECT_EQ(first.polls.load(), polls);
}

TEST(CompletionWatchdogTest, DrainReturnsAtOnceWhenNothingIsWatched) {
  CompletionWatchdog watchdog(Tp(), 30.0);
  watchdog.Drain();
  FakeOperation done_already;
  done_already.done = true;
  watchdog.Watch(done_already.Watched(std::this_thread::get_id()));
  watchdog.Drain();
  EXPECT_EQ(done_already.releases.load(), 1);
}

TEST(CompletionWatchdogTest, DestructionSeesWatchedOperationsThrough) {
  FakeOperation late;
  std::thread finisher;
  {
    CompletionWatchdog watchdog(Tp(), 30.0);
    watchdog.Watch(late.Watched(std::this_thread::get_id()));
    finisher = std::thread([&late] {
      std::this_thread::sleep_for(milliseconds(100));
      late.done = true;
    });
  }
  EXPECT_TRUE(late.done.load());
  EXPECT_EQ(late.releases.load(), 1);
  finisher.join();
}

TEST(CompletionWatchdogDeathTest, AnOperationPendingAtItsDeadlineIsAbortedAndEndsTheRun) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        CompletionWatchdog watchdog(Tp(), 0.2);
        watchdog.Watch({OpDescription("all_reduce", 8, torch::kFloat, ReduceOp::kSum),
                        []() -> absl::StatusOr<bool> { return false; }, [] {},
                        [] { std::fprintf(stderr, "aborted the communicator\n"); }});
        std::this_thread::sleep_for(std::chrono::seconds(20));
      },
      "aborted the communicator(.|\n)*communicator 'tp' rank 1 of 2: all_reduce of 8 x float32 "
      "\\(sum\\) did not complete within 0.2 s");
}

TEST(CompletionWatchdogDeathTest, AnErrorThePollReportsEndsTheRunWithIt) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        CompletionWatchdog watchdog(Tp(), 30.0);
        watchdog.Watch({OpDescription("all_to_all", 4, torch::kFloat),
                        []() -> absl::StatusOr<bool> {
                          return absl::InternalError(
                              "NCCL reported an error: remote process exited");
                        },
                        [] {}, [] { std::fprintf(stderr, "aborted the communicator\n"); }});
        std::this_thread::sleep_for(std::chrono::seconds(20));
      },
      "aborted the communicator(.|\n)*communicator 'tp' rank 1 of 2: all_to_all of 4 x float32: "
      "NCCL reported an error: remote process exited");
}

}  // namespace
}  // namespace fulcrum::parallel
