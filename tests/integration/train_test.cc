// `fulcrum train` end to end: the AdamW curve of transformers, LoRA export
// consistency, exact resume, data-parallel layout equivalence, and the
// TensorBoard and plotted metrics.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tests/integration/fixture_compare.h"
#include "tests/integration/layout_compare.h"
#include "tests/integration/train_recipes.h"
#include "tests/test_support.h"

namespace fulcrum::testing {
namespace {
namespace fs = std::filesystem;

TEST(TrainTest, FullFineTuneReproducesTransformersAdamWCurve) {
  for (const std::string family : {"llama", "qwen2"}) {
    const std::string dir = ScratchDir() + "/" + family;
    const Tensors expected = ReadTensors(FixturesDir() + "/" + family + "/expected.safetensors");
    WriteFixtureBatchJsonl(expected, dir + "/data.jsonl");
    const std::string recipe = dir + "/recipe.yaml";
    WriteFile(recipe, FixtureAdamWRecipe(FixturesDir() + "/" + family + "/model", dir));
    const CommandResult r = RunFulcrum("train " + recipe);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const std::vector<double> losses = ReadLosses(dir + "/metrics.jsonl");
    ASSERT_EQ(losses.size(), 5u);
    const torch::Tensor ref = expected.at("adamw_losses");
    for (int k = 0; k < 5; ++k) {
      EXPECT_NEAR(losses[k], ref[k].item<double>(), 1e-4) << family << " step " << k;
    }
  }
}

TEST(TrainTest, LoraAdamWCurveAndMicroBatchAccumulation) {
  // The same batch as two micro-batches of one row: accumulation must give
  // the one-batch gradient (loss normalised by the global target count).
  const std::string dir = ScratchDir();
  const Tensors expected = ReadTensors(FixturesDir() + "/llama/expected.safetensors");
  WriteFixtureBatchJsonl(expected, dir + "/data.jsonl");
  std::string recipe = FixtureAdamWRecipe(FixturesDir() + "/llama/model", dir);
  WriteFile(dir + "/full.yaml", recipe);
  const CommandResult r = RunFulcrum("train " + dir + "/full.yaml batch.micro_batch=1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::vector<double> losses = ReadLosses(dir + "/metrics.jsonl");
  ASSERT_EQ(losses.size(), 5u);
  for (int k = 0; k < 5; ++k) {
    EXPECT_NEAR(losses[k], expected.at("adamw_losses")[k].item<double>(), 1e-4) << k;
  }
}

TEST(TrainTest, ExactResumeReproducesUninterruptedLosses) {
  const std::string dir = ScratchDir();
  const std::string model = TinyModel(dir);
  WriteTinyData(dir + "/data.jsonl", 64, 512);
  WriteFile(dir + "/r.yaml", TinyTrainRecipe(model, dir + "/data.jsonl", "lora", 10));
  CommandResult r =
      RunFulcrum("train " + dir + "/r.yaml checkpoint.dir=" + dir +
                 "/ckpt_a checkpoint.every=5 logging.metrics_file=" + dir + "/a.jsonl");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(fs::exists(dir + "/ckpt_a/step-00000005"));
  r = RunFulcrum("train " + dir + "/r.yaml checkpoint.dir=" + dir + "/ckpt_b checkpoint.resume=" +
                 dir + "/ckpt_a/step-00000005 logging.metrics_file=" + dir + "/b.jsonl");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::vector<double> a = ReadLosses(dir + "/a.jsonl");
  const std::vector<double> b = ReadLosses(dir + "/b.jsonl");
  ASSERT_EQ(a.size(), 10u);
  ASSERT_EQ(b.size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(a[5 + i], b[i]) << "step " << 6 + i;  // bit for bit
  // The resumed run's final state equals the uninterrupted run's.
  const Tensors final_a = ReadCheckpointTensors(dir + "/ckpt_a/step-00000010");
  const Tensors final_b = ReadCheckpointTensors(dir + "/ckpt_b/step-00000010");
  ASSERT_EQ(final_a.size(), final_b.size());
  for (const auto& [name, t] : final_a) EXPECT_TRUE(torch::equal(t, final_b.at(name))) << name;
}

TEST(TrainTest, ResumeLatestAndFullFineTuneResume) {
  const std::string dir = ScratchDir();
  const std::string model = TinyModel(dir);
  WriteTinyData(dir + "/data.jsonl", 64, 512);
  WriteFile(dir + "/r.yaml", TinyTrainRecipe(model, dir + "/data.jsonl", "full", 6));
  CommandResult r = RunFulcrum("train " + dir + "/r.yaml checkpoint.dir=" + dir +
                               "/a checkpoint.every=3 logging.metrics_file=" + dir + "/a.jsonl");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // Drop the final checkpoint: `latest` must then name step 3 again.
  fs::remove_all(dir + "/a/step-00000006");
  WriteFile(dir + "/a/latest", "step-00000003\n");
  r = RunFulcrum("train " + dir + "/r.yaml checkpoint.dir=" + dir +
                 "/a checkpoint.resume=latest logging.metrics_file=" + dir + "/b.jsonl");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::vector<double> a = ReadLosses(dir + "/a.jsonl");
  const std::vector<double> b = ReadLosses(dir + "/b.jsonl");
  ASSERT_EQ(b.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(a[3 + i], b[i]);
}

TEST(TrainTest, LoraTrainingExportsMergedAndPeftWithSameLogits) {
  const std::string dir = ScratchDir();
  const std::string model = TinyModel(dir);
  // A handful of samples seen again and again: the loss must fall.
  WriteTinyData(dir + "/data.jsonl", 4, 512);
  WriteFile(dir + "/r.yaml", TinyTrainRecipe(model, dir + "/data.jsonl", "lora", 8));
  CommandResult r = RunFulcrum("train " + dir + "/r.yaml optim.lr=0.01 checkpoint.dir=" + dir +
                               "/ckpt logging.metrics_file=" + dir + "/m.jsonl");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::vector<double> losses = ReadLosses(dir + "/m.jsonl");
  ASSERT_EQ(losses.size(), 8u);
  EXPECT_LT(losses.back(), losses.front());
  r = RunFulcrum("export --checkpoint " + dir + "/ckpt --format merged --out " + dir + "/merged");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = RunFulcrum("export --checkpoint " + dir + "/ckpt --format peft --out " + dir + "/peft");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string batch = FixturesDir() + "/batch.safetensors";
  r = RunFulcrum("score --model " + dir + "/merged --batch " + batch + " --out " + dir + "/m.st");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = RunFulcrum("score --model " + model + " --adapter " + dir + "/peft --batch " + batch +
                 " --out " + dir + "/p.st");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = RunFulcrum("score --model " + model + " --batch " + batch + " --out " + dir + "/base.st");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const torch::Tensor merged = ReadTensors(dir + "/m.st").at("logits");
  const torch::Tensor adapter = ReadTensors(dir + "/p.st").at("logits");
  const torch::Tensor base = ReadTensors(dir + "/base.st").at("logits");
  EXPECT_LE((merged - adapter).abs().max().item<double>(), 1e-5);
  EXPECT_GT((adapter - base).abs().max().item<double>(), 1e-4);  // training changed something
}

TEST(TrainTest, Bf16TrainingExportsBf16Model) {
  const std::string dir = ScratchDir();
  const std::string model = TinyModel(dir);
  WriteTinyData(dir + "/data.jsonl", 16, 512);
  WriteFile(dir + "/r.yaml", TinyTrainRecipe(model, dir + "/data.jsonl", "full", 3));
  CommandResult r =
      RunFulcrum("train " + dir + "/r.yaml precision.dtype=bf16 checkpoint.dir=" + dir +
                 "/ckpt logging.metrics_file=" + dir + "/m.jsonl");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (double loss : ReadLosses(dir + "/m.jsonl")) EXPECT_TRUE(std::isfinite(loss));
  r = RunFulcrum("export --checkpoint " + dir + "/ckpt --format hf --out " + dir + "/hf");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const auto& [name, t] : ReadTensors(dir + "/hf/model.safetensors")) {
    EXPECT_EQ(t.scalar_type(), torch::kBFloat16) << name;
  }
  const nlohmann::json config = nlohmann::json::parse(ReadFile(dir + "/hf/config.json"));
  EXPECT_EQ(config.at("torch_dtype"), "bfloat16");
  // And to fp32 on request.
  r = RunFulcrum("export --checkpoint " + dir + "/ckpt --format hf --dtype fp32 --out " + dir +
                 "/hf32");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(nlohmann::json::parse(ReadFile(dir + "/hf32/config.json")).at("torch_dtype"),
            "float32");
}

// logging.tensorboard_dir under 2 ranks: one event file, rank 0's (its
// records are decoded in tests/trainer/metrics/tensorboard_writer_test.cc);
// scripts/plot_metrics draws the JSONL as a PNG.
// Each JSONL step line breaks step_seconds down into phases that add up to
// no more than the step, with forward, backward and optimizer time measured.
void ExpectStepTimeBreakdown(const std::string& jsonl, int steps) {
  std::istringstream lines(ReadFile(jsonl));
  std::string line;
  int seen = 0;
  while (std::getline(lines, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (!j.contains("step_seconds")) continue;
    ++seen;
    double sum = 0.0;
    for (const char* key : {"data_wait_seconds", "forward_seconds", "backward_seconds",
                            "comm_wait_seconds", "optimizer_seconds"}) {
      ASSERT_TRUE(j.contains(key)) << key << " missing in " << line;
      EXPECT_GE(j.at(key).get<double>(), 0.0) << key;
      sum += j.at(key).get<double>();
    }
    for (const char* key : {"forward_seconds", "backward_seconds", "optimizer_seconds"}) {
      EXPECT_GT(j.at(key).get<double>(), 0.0) << key << " in " << line;
    }
    EXPECT_LE(sum, j.at("step_seconds").get<double>() * 1.001 + 1e-4) << line;
    EXPECT_GT(sum, 0.5 * j.at("step_seconds").get<double>()) << "most of the step unaccounted";
  }
  EXPECT_EQ(seen, steps);
}

// Under pp 2 the schedule's compute actions are the forward and backward
// time, the rest of the schedule (sends, receives, bubble) exposed waiting.
TEST(TrainTest, PipelineStepTimeBreakdown) {
  const std::string dir = ScratchDir();
  WriteTinyData(dir + "/data.jsonl", 64, 512);
  WriteFile(dir + "/r.yaml",
            TinyTrainRecipe(FixturesDir() + "/llama/model", dir + "/data.jsonl", "full", 3));
  const CommandResult r = RunFulcrum(
      "train " + dir + "/r.yaml parallel.pp=2 batch.micro_batch=1 logging.metrics_file=" + dir +
          "/m.jsonl",
      2);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ExpectStepTimeBreakdown(dir + "/m.jsonl", 3);
}

TEST(TrainTest, TensorBoardEventsAndMetricsPlot) {
  const std::string dir = ScratchDir();
  WriteTinyData(dir + "/data.jsonl", 64, 512);
  WriteFile(dir + "/r.yaml",
            TinyTrainRecipe(FixturesDir() + "/llama/model", dir + "/data.jsonl", "lora", 6));
  CommandResult r =
      RunFulcrum("train " + dir + "/r.yaml parallel.dp=2 logging.metrics_file=" + dir +
                     "/m.jsonl logging.tensorboard_dir=" + dir + "/tb",
                 2);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<fs::path> events;
  for (const auto& entry : fs::directory_iterator(dir + "/tb")) events.push_back(entry.path());
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].filename().string().rfind("events.out.tfevents.", 0), 0u) << events[0];
  EXPECT_GT(fs::file_size(events[0]), 6u * 200);  // 6 steps of 14 scalars, plus the header event
  ExpectStepTimeBreakdown(dir + "/m.jsonl", 6);

  r = RunCommand(SourceDir() + "/scripts/plot_metrics " + dir + "/m.jsonl --out " + dir +
                 "/curves.png");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string png = ReadFile(dir + "/curves.png");
  ASSERT_GT(png.size(), 24u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  const auto be32 = [&](size_t at) {
    return (static_cast<uint32_t>(static_cast<uint8_t>(png[at])) << 24) |
           (static_cast<uint32_t>(static_cast<uint8_t>(png[at + 1])) << 16) |
           (static_cast<uint32_t>(static_cast<uint8_t>(png[at + 2])) << 8) |
           static_cast<uint32_t>(static_cast<uint8_t>(png[at + 3]));
  };
  EXPECT_EQ(be32(16), 1500u);  // IHDR width: 15 in at 100 dpi
  EXPECT_EQ(be32(20), 450u);
  EXPECT_GT(png.size(), 20000u);  // three panels of curves, not a blank image
  r = RunCommand(SourceDir() + "/scripts/plot_metrics " + dir + "/r.yaml --out " + dir + "/x.png");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("r.yaml:1: not JSON"), std::string::npos) << r.output;
}

TEST(TrainTest, DataParallelTwoRanksReproducesOneRank) {
  const std::string dir = ScratchDir();
  const std::string model = TinyModel(dir);
  WriteTinyData(dir + "/data.jsonl", 64, 512);
  for (const std::string method : {"full", "lora"}) {
    WriteFile(dir + "/r.yaml", TinyTrainRecipe(model, dir + "/data.jsonl", method, 6));
    CommandResult r = RunFulcrum("train " + dir + "/r.yaml logging.metrics_file=" + dir + "/one_" +
                                 method + ".jsonl");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    r = RunFulcrum("train " + dir + "/r.yaml parallel.dp=2 logging.metrics_file=" + dir + "/two_" +
                       method + ".jsonl",
                   2);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const std::vector<double> one = ReadLosses(dir + "/one_" + method + ".jsonl");
    const std::vector<double> two = ReadLosses(dir + "/two_" + method + ".jsonl");
    ASSERT_EQ(one.size(), two.size());
    for (size_t i = 0; i < one.size(); ++i) {
      EXPECT_NEAR(one[i], two[i], 1e-5 * std::abs(one[i])) << method << " step " << i + 1;
    }
  }
}

}  // namespace
}  // namespace fulcrum::testing
