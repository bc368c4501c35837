// World::AgreeOn on 2, 3 and 4 ranks: every rank returns the first failing
// rank's status, named by rank on the others, whatever order the ranks
// arrive in. The DISABLED_ cases end their job (a rank that never arrives):
// world_test runs them under mpirun and checks how the job ends.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "parallel/runtime/world.h"
#include "tests/test_support.h"

namespace fulcrum::parallel {
namespace {

TEST(WorldAgreeMpiTest, EveryRankOkIsOk) {
  const World& world = testing::MpiTestWorld();
  EXPECT_TRUE(world.AgreeOn(absl::OkStatus()).ok());
}

TEST(WorldAgreeMpiTest, OneFailingRankFailsEveryRankNamingIt) {
  const World& world = testing::MpiTestWorld();
  const int failing = world.size() - 1;
  const absl::Status mine =
      world.rank() == failing ? absl::NotFoundError("data.path: no such file") : absl::OkStatus();
  const absl::Status agreed = world.AgreeOn(mine);
  EXPECT_EQ(agreed.code(), absl::StatusCode::kNotFound);
  if (world.rank() == failing) {
    EXPECT_EQ(agreed.message(), "data.path: no such file");
  } else {
    EXPECT_EQ(agreed.message(), absl::StrCat("rank ", failing, ": data.path: no such file"));
  }
}

TEST(WorldAgreeMpiTest, TheLowestFailingRankWins) {
  const World& world = testing::MpiTestWorld();
  // Ranks 1.. fail, each with its own message; rank 0 does not.
  const absl::Status mine = world.rank() == 0
                                ? absl::OkStatus()
                                : absl::InvalidArgumentError(absl::StrCat("bad on ", world.rank()));
  const absl::Status agreed = world.AgreeOn(mine);
  EXPECT_EQ(agreed.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(agreed.message(), world.rank() == 1 ? "bad on 1" : "rank 1: bad on 1");
}

TEST(WorldAgreeMpiTest, RootFailureReachesEveryRank) {
  const World& world = testing::MpiTestWorld();
  const absl::Status mine =
      world.rank() == 0 ? absl::DataLossError("checkpoint: torn file") : absl::OkStatus();
  const absl::Status agreed = world.AgreeOn(mine);
  EXPECT_EQ(agreed.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(agreed.message(),
            world.rank() == 0 ? "checkpoint: torn file" : "rank 0: checkpoint: torn file");
}

TEST(WorldAgreeMpiTest, LongMessagesArriveWhole) {
  const World& world = testing::MpiTestWorld();
  // Validation reports every problem: larger than an eager MPI message.
  std::string report;
  for (int i = 0; report.size() < 300000; ++i) report += absl::StrCat("line ", i, ": problem\n");
  const int failing = world.size() - 1;
  const absl::Status agreed = world.AgreeOn(
      world.rank() == failing ? absl::InvalidArgumentError(report) : absl::OkStatus());
  EXPECT_EQ(agreed.message(),
            world.rank() == failing ? report : absl::StrCat("rank ", failing, ": ", report));
}

TEST(WorldAgreeMpiTest, RanksArrivingApartStillAgree) {
  const World& world = testing::MpiTestWorld();
  // The last rank arrives 300 ms late, then rank 0 in the next agreement.
  if (world.rank() == world.size() - 1) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_TRUE(world.AgreeOn(absl::OkStatus(), absl::Seconds(30)).ok());
  if (world.rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const absl::Status agreed =
      world.AgreeOn(world.rank() == 0 ? absl::AbortedError("late and failing") : absl::OkStatus(),
                    absl::Seconds(30));
  EXPECT_EQ(agreed.code(), absl::StatusCode::kAborted);
}

TEST(WorldAgreeMpiTest, SuccessiveAgreementsDoNotMix) {
  const World& world = testing::MpiTestWorld();
  // Each round a different rank fails (or none): a verdict read in the
  // wrong round would name the wrong rank.
  for (int round = 0; round < 40; ++round) {
    const int failing = round % (world.size() + 1);  // == size: none fails
    const absl::Status mine = world.rank() == failing
                                  ? absl::InternalError(absl::StrCat("round ", round))
                                  : absl::OkStatus();
    const absl::Status agreed = world.AgreeOn(mine);
    if (failing == world.size()) {
      EXPECT_TRUE(agreed.ok()) << "round " << round << ": " << agreed;
    } else {
      const std::string expected = absl::StrCat("round ", round);
      EXPECT_EQ(agreed.message(), world.rank() == failing
                                      ? expected
                                      : absl::StrCat("rank ", failing, ": ", expected));
    }
  }
}

// Rank 1 arrives 20 s late; rank 0 waits 500 ms and ends the job.
TEST(WorldAgreeMpiTest, DISABLED_RankThatNeverArrivesEndsTheJob) {
  const World& world = testing::MpiTestWorld();
  if (world.rank() == 1) std::this_thread::sleep_for(std::chrono::seconds(20));
  (void)world.AgreeOn(absl::OkStatus(), absl::Milliseconds(500));
  ADD_FAILURE() << "rank " << world.rank() << ": AgreeOn returned";
}

// Rank 0 arrives 20 s late; the others wait 500 ms and end the job.
TEST(WorldAgreeMpiTest, DISABLED_RootThatNeverAnswersEndsTheJob) {
  const World& world = testing::MpiTestWorld();
  if (world.rank() == 0) std::this_thread::sleep_for(std::chrono::seconds(20));
  (void)world.AgreeOn(absl::OkStatus(), absl::Milliseconds(500));
  ADD_FAILURE() << "rank " << world.rank() << ": AgreeOn returned";
}

}  // namespace
}  // namespace fulcrum::parallel
