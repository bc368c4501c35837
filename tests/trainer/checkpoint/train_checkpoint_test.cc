#include "trainer/checkpoint/train_checkpoint.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "tests/test_support.h"

namespace fulcrum::checkpoint {
namespace {
namespace fs = std::filesystem;

TrainCheckpoint Make(int64_t step) {
  TrainCheckpoint c;
  c.step = step;
  c.data_step = step;
  c.recipe_yaml = "seed: 1\n";
  c.model = {{"w", torch::full({2, 3}, static_cast<float>(step))}};
  c.optimizer = {{"step", torch::tensor({step})}};
  c.rng = {{"gen.0", torch::arange(4, torch::kByte)}};
  return c;
}

TEST(TrainCheckpointTest, SaveLoadAndLatest) {
  const std::string root = testing::ScratchDir();
  auto dir = SaveTrainCheckpoint(root, Make(3), 0);
  ASSERT_TRUE(dir.ok()) << dir.status();
  EXPECT_EQ(fs::path(*dir).filename(), "step-00000003");
  auto resolved = ResolveCheckpoint(root, "latest");
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(*resolved, *dir);
  auto loaded = LoadTrainCheckpoint(*resolved);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->step, 3);
  EXPECT_EQ(loaded->recipe_yaml, "seed: 1\n");
  EXPECT_TRUE(torch::equal(loaded->model.at("w"), torch::full({2, 3}, 3.0f)));
  EXPECT_TRUE(torch::equal(loaded->rng.at("gen.0"), torch::arange(4, torch::kByte)));
  // No staging directory is left behind.
  for (const auto& entry : fs::directory_iterator(root)) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos);
  }
}

TEST(TrainCheckpointTest, KeepLastPrunesOnlyOlderComplete) {
  const std::string root = testing::ScratchDir();
  for (int64_t step : {1, 2, 3, 4}) ASSERT_TRUE(SaveTrainCheckpoint(root, Make(step), 2).ok());
  EXPECT_FALSE(fs::exists(root + "/step-00000001"));
  EXPECT_FALSE(fs::exists(root + "/step-00000002"));
  EXPECT_TRUE(fs::exists(root + "/step-00000003"));
  EXPECT_TRUE(fs::exists(root + "/step-00000004"));
  EXPECT_EQ(*ResolveCheckpoint(root, "latest"), root + "/step-00000004");
}

TEST(TrainCheckpointTest, ResolveErrors) {
  const std::string root = testing::ScratchDir();
  auto missing = ResolveCheckpoint(root, "latest");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("checkpoint.resume"), std::string::npos);
  testing::WriteFile(root + "/latest", "step-00000009\n");
  auto dangling = ResolveCheckpoint(root, "latest");
  ASSERT_FALSE(dangling.ok());
  EXPECT_NE(dangling.status().message().find("step-00000009"), std::string::npos);
  EXPECT_FALSE(ResolveCheckpoint("", "latest").ok());
}

TEST(TrainCheckpointTest, CorruptStateIsAnError) {
  const std::string root = testing::ScratchDir();
  auto dir = SaveTrainCheckpoint(root, Make(1), 0);
  ASSERT_TRUE(dir.ok());
  testing::WriteFile(*dir + "/trainer_state.json", "{not json");
  auto loaded = LoadTrainCheckpoint(*dir);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.status().message().find("trainer_state.json"), std::string::npos);
}

}  // namespace
}  // namespace fulcrum::checkpoint
