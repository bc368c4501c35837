#include "parallel/runtime/world.h"

#include <gtest/gtest.h>

#include "parallel/runtime/logger.h"
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

}  // namespace
}  // namespace fulcrum::parallel
