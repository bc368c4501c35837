// Pipeline parallelism through `fulcrum score` and checkpoints:
// `score --grads` under pp2, pp2 x tp2 and pp2 x dp2 gives the single-rank
// logits, loss and gradients of the fixtures (with and without a LoRA
// adapter) and, with virtual stages, of an 8-layer model, and a pp checkpoint holds the whole
// model: its export equals the single-rank run's and it resumes under another layout.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "tests/integration/fixture_compare.h"
#include "tests/integration/layout_compare.h"
#include "tests/integration/train_recipes.h"
#include "tests/test_support.h"

namespace fulcrum::testing {
namespace {

class PipelineScoreTest : public ::testing::TestWithParam<FamilyAndAdapter> {};

TEST_P(PipelineScoreTest, GradientsUnderPipelineLayoutsEqualTheSingleRankOnes) {
  const auto& [family, adapter] = GetParam();
  ExpectScoresMatchSingleRank(family, adapter,
                              {{"parallel.pp=2", 2},
                               {"parallel.pp=2 parallel.tp=2", 4},
                               {"parallel.pp=2 parallel.dp=2", 4}});
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PipelineScoreTest, DenseFamiliesWithAndWithoutAdapter(),
                         FamilyAndAdapterName);

// Virtual stages: an 8-layer model in 4 chunks over 2 stages (score runs
// them breadth-first, gpipe's loop) gives the single-rank gradients.
TEST(PipelineScoreTest, VirtualStagesGiveTheSingleRankGradients) {
  const std::string dir = ScratchDir();
  const std::string model = EightLayerModel(dir, /*tied=*/false);
  ExpectModelScoresMatchSingleRank("--model " + model, {{"parallel.pp=2 parallel.pp_virtual=2", 2}},
                                   dir);
}

// A pp checkpoint holds every stage's tensors: the merged export of a LoRA
// run under pp2 x dp2 with ZeRO-1 is the single-rank run's, and resuming it
// under pp 2 continues the single-rank loss curve.
TEST(PipelineCheckpointTest, PipelineRunExportsAndResumesLikeTheSingleRankRun) {
  const std::string root = ScratchDir();
  const std::string data = root + "/data.jsonl";
  WriteTinyData(data, 96, 512);
  const std::string model = EightLayerModel(root, /*tied=*/true);
  auto train = [&](const std::string& name, const std::string& overrides, int ranks) {
    const std::string dir = root + "/" + name;
    WriteFile(dir + "/recipe.yaml", PipelineRecipe(model, data, "lora", dir));
    const CommandResult r = RunFulcrum("train " + dir + "/recipe.yaml checkpoint.dir=" + dir +
                                           "/ckpt checkpoint.every=5 " + overrides,
                                       ranks);
    EXPECT_EQ(r.exit_code, 0) << overrides << "\n" << r.output;
    return dir;
  };
  const std::string single = train("single", "", 1);
  const std::string piped = train("piped", "parallel.pp=2 parallel.dp=2 parallel.zero=1", 4);
  ExpectSameMergedExports(single, piped);
  // Resume the pp run's step-5 checkpoint under pp 2 (another layout).
  const std::string resumed = root + "/resumed";
  WriteFile(resumed + "/recipe.yaml", PipelineRecipe(model, data, "lora", resumed));
  const CommandResult r =
      RunFulcrum("train " + resumed + "/recipe.yaml checkpoint.dir=" + resumed +
                     "/ckpt checkpoint.resume=" + piped + "/ckpt/step-00000005 parallel.pp=2",
                 2);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const StepLog tail = ReadStepLog(resumed + "/metrics.jsonl");
  const StepLog full = ReadStepLog(single + "/metrics.jsonl");
  ASSERT_EQ(tail.losses.size(), 5u);
  for (size_t s = 0; s < 5; ++s) {
    EXPECT_NEAR(tail.losses[s], full.losses[s + 5], 1e-5 * std::abs(full.losses[s + 5]))
        << "resumed step " << s + 6;
  }
}

}  // namespace
}  // namespace fulcrum::testing
