#include "parallel/runtime/world.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "absl/strings/str_cat.h"
#include "parallel/runtime/logger.h"
#include "parallel/runtime/mpirun.h"
#include "tests/test_support.h"

namespace fulcrum::parallel {
namespace {

TEST(WorldTest, StartedWithoutMpirunIsOneRank) {
  int argc = 0;
  char** argv = nullptr;
  auto world = World::Init(&argc, &argv);
  ASSERT_TRUE(world.ok()) << world.status();
  EXPECT_EQ((*world)->rank(), 0);
  EXPECT_EQ((*world)->size(), 1);
  EXPECT_EQ((*world)->local_rank(), 0);
  auto cpu = (*world)->DeviceFor("cpu");
  ASSERT_TRUE(cpu.ok());
  EXPECT_TRUE(cpu->is_cpu());
  EXPECT_FALSE((*world)->DeviceFor("tpu").ok());
  EXPECT_TRUE((*world)->AgreeOn(absl::OkStatus()).ok());
  EXPECT_GE((*world)->CpuThreadsPerRank(), 1);
  EXPECT_EQ((*world)->AgreeOn(absl::InvalidArgumentError("x")).message(), "x");
}

// A rank that never reaches an agreement (or a gather) ends the job, every rank, within
// the timeout and with a message naming it (world_agree_mpi_test.cc's
// DISABLED_ cases: the late rank sleeps 20 s, the others wait 500 ms).
TEST(WorldTest, AgreementWithAMissingRankEndsTheJobNamingIt) {
  struct Case {
    const char* test;
    const char* message;
  };
  for (const Case& c :
       {Case{"RankThatNeverArrivesEndsTheJob",
             "rank 1 did not reach the point every rank agrees at within 500ms"},
        Case{"RootThatNeverAnswersEndsTheJob",
             "rank 0 did not answer at the point every rank agrees at within 500ms"},
        Case{"GatherWithARankThatNeverArrivesEndsTheJob",
             "rank 1 did not reach the point every rank shares its part at within 500ms"}}) {
    SCOPED_TRACE(c.test);
    const auto start = std::chrono::steady_clock::now();
    const testing::CommandResult r = testing::RunCommand(
        absl::StrCat(MpirunCommand(2), " ", FULCRUM_WORLD_AGREE_MPI_TEST,
                     " --gtest_also_run_disabled_tests --gtest_filter=*", c.test));
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("AgreeOn returned"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("AllGatherStrings returned"), std::string::npos) << r.output;
    EXPECT_LT(took.count(), 15.0) << r.output;
  }
}

}  // namespace
}  // namespace fulcrum::parallel
