// ValidateRecipe, GradAccumulationSteps and the shipped recipes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "tests/test_support.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::recipe {
namespace {

#define EXPECT_CONTAINS(text, part)          \
  EXPECT_TRUE(absl::StrContains(text, part)) \
      << "message: " << (text) << "\nexpected part: " << (part)

Recipe Valid() {
  Recipe r;
  r.source = "r.yaml";
  r.model.path = "model";
  r.data.path = "data.jsonl";
  return r;
}

// The message of a validation that must fail.
std::string Problems(const Recipe& r, int world_size = 1) {
  const absl::Status status = ValidateRecipe(r, world_size);
  EXPECT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  return std::string(status.message());
}

TEST(ValidateRecipe, DefaultsWithModelAndDataAreValid) {
  EXPECT_TRUE(ValidateRecipe(Valid(), 1).ok()) << ValidateRecipe(Valid(), 1);
  Recipe from_config = Valid();
  from_config.model = {"", "config.json", ""};
  EXPECT_TRUE(ValidateRecipe(from_config, 1).ok());
}

TEST(ValidateRecipe, RecomputeMode) {
  Recipe r = Valid();
  for (const char* mode : {"none", "selective", "full"}) {
    r.train.recompute = mode;
    EXPECT_TRUE(ValidateRecipe(r, 1).ok()) << mode;
  }
  r.train.recompute = "attention";
  EXPECT_EQ(Problems(r),
            "r.yaml: train.recompute: expected one of none | selective | full, got \"attention\"");
}

TEST(ValidateRecipe, BatchArithmetic) {
  Recipe r = Valid();
  r.batch = {10, 4, 64};
  EXPECT_EQ(Problems(r),
            "r.yaml: batch.global_batch: global_batch(10) is not a multiple of micro_batch(4) x "
            "dp(1) = 4");
  r.batch = {8, 2, 64};
  r.parallel.dp = 3;
  EXPECT_CONTAINS(Problems(r, 3),
                  "global_batch(8) is not a multiple of micro_batch(2) x dp(3) = 6");
  r.batch = {12, 2, 64};
  EXPECT_TRUE(ValidateRecipe(r, 3).ok());
}

TEST(ValidateRecipe, WorldSizeMustMatchTheDegrees) {
  Recipe r = Valid();
  EXPECT_EQ(Problems(r, 2), "r.yaml: parallel: dp(1) x tp(1) x pp(1) = 1 != world size 2");
  r.parallel.dp = 2;  // data parallel is allowed
  EXPECT_TRUE(ValidateRecipe(r, 2).ok()) << ValidateRecipe(r, 2);
  EXPECT_CONTAINS(Problems(r, 4), "dp(2) x tp(1) x pp(1) = 2 != world size 4");
}

TEST(ValidateRecipe, ExpertParallelismDividesDataParallelism) {
  Recipe r = Valid();
  r.parallel.tp = 2;  // tensor and pipeline parallelism are supported
  EXPECT_TRUE(ValidateRecipe(r, 2).ok()) << ValidateRecipe(r, 2);
  r.parallel = ParallelSection();
  r.parallel.pp = 2;
  EXPECT_TRUE(ValidateRecipe(r, 2).ok()) << ValidateRecipe(r, 2);
  r.parallel = ParallelSection();
  r.parallel.dp = 4;
  r.parallel.ep = 2;
  r.batch.global_batch = 8;
  EXPECT_TRUE(ValidateRecipe(r, 4).ok()) << ValidateRecipe(r, 4);
  r.parallel.ep = 3;
  EXPECT_CONTAINS(Problems(r, 4),
                  "r.yaml: parallel.ep: ep(3) must divide dp(4): the expert-parallel ranks are "
                  "data-parallel ranks");
}

TEST(ValidateRecipe, ExactlyOneModelSourceAndDataPath) {
  Recipe r = Valid();
  r.model.config = "c.json";
  EXPECT_CONTAINS(Problems(r), "r.yaml: model: set only one of model.path and model.config");
  r.model = {};
  EXPECT_CONTAINS(Problems(r), "r.yaml: model: set one of model.path");
  r = Valid();
  r.data.path = "";
  EXPECT_EQ(Problems(r), "r.yaml: data.path: must be set (a JSONL file)");
}

TEST(ValidateRecipe, Ranges) {
  struct Case {
    void (*mutate)(Recipe&);
    const char* expected;
  };
  const Case cases[] = {
      {[](Recipe& r) { r.optim.lr = 0; }, "r.yaml: optim.lr: must be > 0, got 0"},
      {[](Recipe& r) { r.batch.micro_batch = 0; }, "r.yaml: batch.micro_batch: must be > 0, got 0"},
      {[](Recipe& r) { r.batch.seq_len = -1; }, "r.yaml: batch.seq_len: must be > 0, got -1"},
      {[](Recipe& r) { r.train.steps = 0; }, "r.yaml: train.steps: must be > 0, got 0"},
      {[](Recipe& r) { r.finetune.lora.rank = 0; }, "finetune.lora.rank: must be > 0, got 0"},
      {[](Recipe& r) { r.finetune.lora.dropout = 1.0; },
       "finetune.lora.dropout: must be in [0, 1), got 1"},
      {[](Recipe& r) { r.finetune.lora.targets = {}; }, "finetune.lora.targets: must name"},
      {[](Recipe& r) {
         r.finetune.lora.targets = {"all-linear", "q_proj"};
       },
       "all-linear must be the only target"},
      {[](Recipe& r) { r.optim.beta2 = 1.0; }, "optim.betas[1]: must be in [0, 1), got 1"},
      {[](Recipe& r) { r.optim.weight_decay = -0.1; }, "optim.weight_decay: must be >= 0"},
      {[](Recipe& r) { r.optim.grad_clip = -1; }, "optim.grad_clip: must be >= 0"},
      {[](Recipe& r) { r.schedule.warmup_steps = -1; }, "schedule.warmup_steps: must be >= 0"},
      {[](Recipe& r) { r.schedule.warmup_steps = 101; },
       "schedule.warmup_steps: warmup_steps(101) > train.steps(100)"},
      {[](Recipe& r) { r.schedule.min_lr_ratio = 1.5; },
       "schedule.min_lr_ratio: must be in [0, 1], got 1.5"},
      {[](Recipe& r) { r.checkpoint.every = -5; }, "checkpoint.every: must be >= 0, got -5"},
      {[](Recipe& r) { r.checkpoint.resume = "latest"; },
       "checkpoint.resume: \"latest\" needs checkpoint.dir"},
      {[](Recipe& r) { r.logging.every = 0; }, "logging.every: must be > 0, got 0"},
      {[](Recipe& r) { r.parallel.dp = 0; }, "parallel.dp: must be > 0, got 0"},
  };
  for (const Case& c : cases) {
    Recipe r = Valid();
    c.mutate(r);
    EXPECT_CONTAINS(Problems(r), c.expected);
  }
}

TEST(ValidateRecipe, EnumValuesOfRecipesBuiltInCode) {
  Recipe r = Valid();
  r.finetune.method = "qlora";
  EXPECT_EQ(Problems(r), "r.yaml: finetune.method: expected one of lora | full, got \"qlora\"");
  r = Valid();
  r.precision.dtype = "fp16";
  EXPECT_CONTAINS(Problems(r), "precision.dtype: expected one of fp32 | bf16, got \"fp16\"");
  r = Valid();
  r.device = "tpu";
  EXPECT_CONTAINS(Problems(r), "device: expected one of cpu | cuda");
  r = Valid();
  r.schedule.type = "step";
  EXPECT_CONTAINS(Problems(r), "schedule.type: expected one of constant | linear | cosine");
  r = Valid();
  r.data.format = "messages";  // text formats are supported now
  EXPECT_TRUE(ValidateRecipe(r, 1).ok()) << ValidateRecipe(r, 1);
  r.data.format = "csv";
  EXPECT_CONTAINS(Problems(r), "data.format: expected one of pretokenized | text");
}

TEST(ValidateRecipe, ReportsEveryProblemOnePerLine) {
  Recipe r = Valid();
  r.optim.lr = -1;
  r.batch.micro_batch = 3;
  r.parallel.tp = 2;
  r.parallel.ep = 2;
  const std::string message = Problems(r, 1);
  EXPECT_CONTAINS(message, "r.yaml: optim.lr: must be > 0, got -1\n");
  EXPECT_CONTAINS(message, "r.yaml: batch.global_batch: global_batch(8) is not a multiple");
  EXPECT_CONTAINS(message, "r.yaml: parallel.ep: ep(2) must divide dp(1)");
  EXPECT_CONTAINS(message, "r.yaml: parallel: dp(1) x tp(2) x pp(1) = 2 != world size 1");
}

TEST(ValidateRecipe, ParsedRecipeThenValidated) {
  absl::StatusOr<Recipe> r = ParseRecipe("model: {path: m}\ndata: {path: d}\n", "p.yaml",
                                         {"batch.global_batch=6", "batch.micro_batch=4"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(Problems(*r),
            "p.yaml: batch.global_batch: global_batch(6) is not a multiple of "
            "micro_batch(4) x dp(1) = 4");
}

TEST(GradAccumulationSteps, Arithmetic) {
  EXPECT_EQ(GradAccumulationSteps({8, 1, 512}, 1), 8);
  EXPECT_EQ(GradAccumulationSteps({8, 4, 64}, 1), 2);
  EXPECT_EQ(GradAccumulationSteps({16, 2, 64}, 2), 4);
  EXPECT_EQ(GradAccumulationSteps({8, 8, 64}, 1), 1);
  EXPECT_EQ(GradAccumulationSteps({64, 2, 4096}, 8), 4);
}

TEST(GradAccumulationStepsDeathTest, NotDividingIsABug) {
  EXPECT_DEATH(GradAccumulationSteps({10, 4, 64}, 1), "global_batch=10 micro_batch=4 dp=1");
}

std::string Repo(const std::string& relative) { return testing::SourceDir() + "/" + relative; }

TEST(ShippedRecipes, TinyLoraParsesAndValidates) {
  absl::StatusOr<Recipe> r = LoadRecipe(Repo("recipes/tiny/lora.yaml"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(ValidateRecipe(*r, 1).ok()) << ValidateRecipe(*r, 1);
  EXPECT_EQ(r->finetune.method, "lora");
  EXPECT_EQ(r->finetune.lora.rank, 8);
  EXPECT_DOUBLE_EQ(r->finetune.lora.alpha, 16.0);
  EXPECT_EQ(r->finetune.lora.targets, std::vector<std::string>{"all-linear"});
  EXPECT_DOUBLE_EQ(r->optim.lr, 3e-3);
  EXPECT_EQ(r->schedule.type, "cosine");
  EXPECT_EQ(r->schedule.warmup_steps, 10);
  EXPECT_EQ(r->train.steps, 200);
  EXPECT_EQ(r->checkpoint.every, 100);
  EXPECT_EQ(GradAccumulationSteps(r->batch, r->parallel.dp), 2);
  EXPECT_EQ(r->batch.seq_len, 64);
  EXPECT_EQ(r->data.path, Repo("recipes/tiny/instructions.jsonl"));
  EXPECT_EQ(r->data.format, "instruction");
  EXPECT_EQ(r->data.tokenizer, Repo("recipes/tiny/tokenizer.json"));
  EXPECT_TRUE(std::filesystem::is_regular_file(r->data.path));
  EXPECT_TRUE(std::filesystem::is_regular_file(r->data.tokenizer));
  EXPECT_EQ(r->train.eval_every, 100);
  EXPECT_EQ(r->model.path, Repo("recipes/tiny/out/tiny/model"));
  // The demo passes the model directory; dp=2 runs need only an override.
  absl::StatusOr<Recipe> demo =
      LoadRecipe(Repo("recipes/tiny/lora.yaml"), {"model.path=demo_out/model", "parallel.dp=2"});
  ASSERT_TRUE(demo.ok()) << demo.status();
  EXPECT_EQ(demo->model.path, "demo_out/model");
  EXPECT_TRUE(ValidateRecipe(*demo, 2).ok()) << ValidateRecipe(*demo, 2);
}

TEST(ShippedRecipes, TinyFullParsesAndValidates) {
  absl::StatusOr<Recipe> r = LoadRecipe(Repo("recipes/tiny/full.yaml"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(ValidateRecipe(*r, 1).ok()) << ValidateRecipe(*r, 1);
  EXPECT_EQ(r->finetune.method, "full");
  EXPECT_DOUBLE_EQ(r->optim.lr, 1e-3);
}

TEST(ShippedRecipes, LlamaExamplesParseAndValidateOnTheirWorld) {
  for (const char* name :
       {"recipes/llama/llama3_8b_lora.yaml", "recipes/llama/llama3_8b_full.yaml"}) {
    absl::StatusOr<Recipe> r = LoadRecipe(Repo(name));
    ASSERT_TRUE(r.ok()) << r.status();
    const absl::Status status = ValidateRecipe(*r, static_cast<int>(r->parallel.dp));
    EXPECT_TRUE(status.ok()) << name << ": " << status;
    EXPECT_EQ(r->device, "cuda");
    EXPECT_EQ(r->precision.dtype, "bf16");
  }
}

TEST(ShippedRecipes, TinyConfigIsASmallLlama) {
  std::ifstream in(Repo("recipes/tiny/config.json"));
  ASSERT_TRUE(in.good());
  const nlohmann::json config = nlohmann::json::parse(in);
  EXPECT_EQ(config.at("model_type"), "llama");
  EXPECT_EQ(config.at("architectures").at(0), "LlamaForCausalLM");
  EXPECT_EQ(config.at("vocab_size"), 512);
  EXPECT_EQ(config.at("hidden_size"), 64);
  EXPECT_EQ(config.at("num_attention_heads"), 4);
  EXPECT_EQ(config.at("num_key_value_heads"), 2);
  EXPECT_EQ(config.at("head_dim"), 16);
  EXPECT_EQ(config.at("intermediate_size"), 128);
  EXPECT_EQ(config.at("num_hidden_layers"), 2);
  EXPECT_EQ(config.at("max_position_embeddings"), 256);
  EXPECT_EQ(config.at("tie_word_embeddings"), false);
  // The demo tokenizer's <|begin_of_text|> and <|im_end|>.
  EXPECT_EQ(config.at("bos_token_id"), 508);
  EXPECT_EQ(config.at("eos_token_id"), 510);
}

TEST(ShippedRecipes, TinyDataIsPretokenizedInVocab) {
  std::ifstream in(Repo("recipes/tiny/data.jsonl"));
  ASSERT_TRUE(in.good());
  std::string line;
  int lines = 0;
  while (std::getline(in, line)) {
    const nlohmann::json sample = nlohmann::json::parse(line);
    const auto& ids = sample.at("input_ids");
    ASSERT_GE(ids.size(), 20u);
    ASSERT_LE(ids.size(), 60u);
    for (const auto& id : ids) {
      ASSERT_GE(id.get<int>(), 3);
      ASSERT_LE(id.get<int>(), 511);
    }
    ++lines;
  }
  EXPECT_EQ(lines, 400);
}

TEST(ValidateRecipe, AllLinearMayAddTheRoutersOnly) {
  Recipe r = Valid();
  r.finetune.lora.targets = {"all-linear", "gate"};
  EXPECT_TRUE(ValidateRecipe(r, 1).ok()) << ValidateRecipe(r, 1);
  r.finetune.lora.targets = {"all-linear", "gate", "q_proj"};
  EXPECT_CONTAINS(Problems(r), "finetune.lora.targets: all-linear must be the only target");
}

}  // namespace
}  // namespace fulcrum::recipe
