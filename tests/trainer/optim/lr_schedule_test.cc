#include "trainer/optim/lr_schedule.h"

#include <gtest/gtest.h>

#include <cmath>

namespace fulcrum::optim {
namespace {

TEST(LearningRateTest, WarmupIsLinearFromZero) {
  for (const char* type : {"constant", "linear", "cosine"}) {
    ScheduleOptions o{type, 4, 0.0};
    EXPECT_DOUBLE_EQ(LearningRate(o, 1.0, 0, 100), 0.0) << type;
    EXPECT_DOUBLE_EQ(LearningRate(o, 1.0, 1, 100), 0.25) << type;
    EXPECT_DOUBLE_EQ(LearningRate(o, 1.0, 3, 100), 0.75) << type;
    EXPECT_DOUBLE_EQ(LearningRate(o, 1.0, 4, 100), 1.0) << type;  // warmup edge: full lr
  }
}

TEST(LearningRateTest, Constant) {
  ScheduleOptions o{"constant", 0, 0.5};
  EXPECT_DOUBLE_EQ(LearningRate(o, 2e-4, 0, 10), 2e-4);
  EXPECT_DOUBLE_EQ(LearningRate(o, 2e-4, 9, 10), 2e-4);
}

TEST(LearningRateTest, LinearDecaysToMin) {
  ScheduleOptions o{"linear", 2, 0.0};
  // progress = (step - 2) / 8
  EXPECT_DOUBLE_EQ(LearningRate(o, 1.0, 2, 10), 1.0);
  EXPECT_DOUBLE_EQ(LearningRate(o, 1.0, 6, 10), 0.5);
  EXPECT_DOUBLE_EQ(LearningRate(o, 1.0, 9, 10), 0.125);
  EXPECT_DOUBLE_EQ(LearningRate(o, 1.0, 10, 10), 0.0);
  EXPECT_DOUBLE_EQ(LearningRate(o, 1.0, 20, 10), 0.0);  // clamped past the end
  o.min_lr_ratio = 0.1;
  EXPECT_DOUBLE_EQ(LearningRate(o, 1.0, 6, 10), 0.1 + 0.9 * 0.5);
  EXPECT_DOUBLE_EQ(LearningRate(o, 1.0, 10, 10), 0.1);
}

TEST(LearningRateTest, CosineDecaysToMin) {
  ScheduleOptions o{"cosine", 0, 0.0};
  EXPECT_DOUBLE_EQ(LearningRate(o, 3.0, 0, 8), 3.0);
  EXPECT_NEAR(LearningRate(o, 3.0, 2, 8), 3.0 * 0.5 * (1 + std::cos(M_PI * 0.25)), 1e-15);
  EXPECT_NEAR(LearningRate(o, 3.0, 4, 8), 1.5, 1e-15);
  EXPECT_NEAR(LearningRate(o, 3.0, 8, 8), 0.0, 1e-15);
  o.min_lr_ratio = 0.2;
  o.warmup_steps = 2;
  // progress = (5 - 2) / 6 = 0.5 -> factor 0.5 -> 0.2 + 0.8 * 0.5
  EXPECT_NEAR(LearningRate(o, 1.0, 5, 8), 0.6, 1e-15);
  EXPECT_NEAR(LearningRate(o, 1.0, 8, 8), 0.2, 1e-15);
}

TEST(LearningRateTest, WarmupLongerThanTotalDoesNotDivideByZero) {
  ScheduleOptions o{"cosine", 10, 0.0};
  EXPECT_DOUBLE_EQ(LearningRate(o, 1.0, 10, 10), 1.0);
  EXPECT_TRUE(std::isfinite(LearningRate(o, 1.0, 12, 10)));
  EXPECT_TRUE(IsKnownSchedule("linear"));
  EXPECT_FALSE(IsKnownSchedule("cosin"));
}

}  // namespace
}  // namespace fulcrum::optim
