// ParseRecipe / LoadRecipe / RecipeToYaml: typing, locations in messages,
// unknown keys, overrides, relative paths, round trip.
#include "trainer/recipe/recipe.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "absl/strings/match.h"
#include "tests/test_support.h"
#include "trainer/recipe/did_you_mean.h"

namespace fulcrum::recipe {
namespace {

// A substring check that prints the whole message when it fails.
#define EXPECT_CONTAINS(text, part)          \
  EXPECT_TRUE(absl::StrContains(text, part)) \
      << "message: " << (text) << "\nexpected part: " << (part)

constexpr char kMinimal[] =
    "model:\n"
    "  path: m\n"
    "data:\n"
    "  path: d.jsonl\n";

// The message of a parse that must fail.
std::string ParseError(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  absl::StatusOr<Recipe> recipe = ParseRecipe(yaml, "recipe.yaml", overrides);
  EXPECT_FALSE(recipe.ok()) << yaml;
  if (recipe.ok()) return "";
  EXPECT_EQ(recipe.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(recipe.status().message());
}

Recipe ParseOk(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  absl::StatusOr<Recipe> recipe = ParseRecipe(yaml, "recipe.yaml", overrides);
  EXPECT_TRUE(recipe.ok()) << recipe.status();
  return recipe.ok() ? *recipe : Recipe{};
}

TEST(ParseRecipe, MinimalRecipeGetsDefaults) {
  const Recipe r = ParseOk(kMinimal);
  const Recipe d;
  EXPECT_EQ(r.source, "recipe.yaml");
  EXPECT_EQ(r.model.path, "m");
  EXPECT_EQ(r.model.config, "");
  EXPECT_EQ(r.data.path, "d.jsonl");
  EXPECT_EQ(r.data.format, "pretokenized");
  EXPECT_TRUE(r.data.shuffle);
  EXPECT_EQ(r.finetune.method, "lora");
  EXPECT_EQ(r.finetune.lora.rank, 8);
  EXPECT_EQ(r.finetune.lora.targets, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_DOUBLE_EQ(r.optim.lr, 2e-4);
  EXPECT_DOUBLE_EQ(r.optim.beta2, 0.95);
  EXPECT_EQ(r.schedule.type, "cosine");
  EXPECT_EQ(r.batch.seq_len, 512);
  EXPECT_EQ(r.train.steps, 100);
  EXPECT_EQ(r.train.recompute, "none");
  EXPECT_EQ(r.parallel.dp, 1);
  EXPECT_EQ(r.checkpoint.every, 0);
  EXPECT_EQ(r.logging.every, 1);
  EXPECT_EQ(r.seed, 1234);
  EXPECT_EQ(r.device, "cpu");
  // Every field: the defaults survive parsing unchanged.
  Recipe expected = d;
  expected.source = "recipe.yaml";
  expected.model.path = "m";
  expected.data.path = "d.jsonl";
  EXPECT_EQ(RecipeToYaml(r), RecipeToYaml(expected));
}

TEST(ParseRecipe, FullRecipe) {
  const Recipe r = ParseOk(R"(
model: {config: cfg.json}
data: {path: train.jsonl, format: pretokenized, shuffle: false, pack: false}
finetune:
  method: full
  lora: {rank: 4, alpha: 8.5, dropout: 0.1, targets: [all-linear], rslora: true}
optim:
  lr: 1e-3
  betas: [0.8, 0.99]
  eps: 1.0e-6
  weight_decay: 0.1
  decay_norms_and_biases: true
  grad_clip: 0
schedule: {type: linear, warmup_steps: 5, min_lr_ratio: 0.25}
batch: {global_batch: 16, micro_batch: 2, seq_len: 128}
train: {steps: 7, recompute: selective}
precision: {dtype: bf16}
parallel: {dp: 2, tp: 1, pp: 1, ep: 1}
checkpoint: {dir: ck, every: 3, resume: latest, keep_last: 2}
logging: {every: 5, metrics_file: m.jsonl, tensorboard_dir: tb, all_ranks: true, peak_flops: 1.5e12}
seed: 7
device: cuda
)");
  EXPECT_EQ(r.model.config, "cfg.json");
  EXPECT_FALSE(r.data.shuffle);
  EXPECT_FALSE(r.data.pack);
  EXPECT_EQ(r.finetune.method, "full");
  EXPECT_EQ(r.finetune.lora.rank, 4);
  EXPECT_DOUBLE_EQ(r.finetune.lora.alpha, 8.5);
  EXPECT_DOUBLE_EQ(r.finetune.lora.dropout, 0.1);
  EXPECT_EQ(r.finetune.lora.targets, std::vector<std::string>{"all-linear"});
  EXPECT_TRUE(r.finetune.lora.rslora);
  EXPECT_DOUBLE_EQ(r.optim.lr, 1e-3);
  EXPECT_DOUBLE_EQ(r.optim.beta1, 0.8);
  EXPECT_DOUBLE_EQ(r.optim.beta2, 0.99);
  EXPECT_DOUBLE_EQ(r.optim.eps, 1e-6);
  EXPECT_DOUBLE_EQ(r.optim.weight_decay, 0.1);
  EXPECT_TRUE(r.optim.decay_norms_and_biases);
  EXPECT_DOUBLE_EQ(r.optim.grad_clip, 0.0);
  EXPECT_EQ(r.schedule.type, "linear");
  EXPECT_EQ(r.schedule.warmup_steps, 5);
  EXPECT_DOUBLE_EQ(r.schedule.min_lr_ratio, 0.25);
  EXPECT_EQ(r.batch.global_batch, 16);
  EXPECT_EQ(r.batch.micro_batch, 2);
  EXPECT_EQ(r.batch.seq_len, 128);
  EXPECT_EQ(r.train.steps, 7);
  EXPECT_EQ(r.train.recompute, "selective");
  EXPECT_EQ(r.precision.dtype, "bf16");
  EXPECT_EQ(r.parallel.dp, 2);
  EXPECT_EQ(r.checkpoint.dir, "ck");
  EXPECT_EQ(r.checkpoint.every, 3);
  EXPECT_EQ(r.checkpoint.resume, "latest");
  EXPECT_EQ(r.checkpoint.keep_last, 2);
  EXPECT_EQ(r.logging.every, 5);
  EXPECT_EQ(r.logging.metrics_file, "m.jsonl");
  EXPECT_EQ(r.logging.tensorboard_dir, "tb");
  EXPECT_TRUE(r.logging.all_ranks);
  EXPECT_DOUBLE_EQ(r.logging.peak_flops, 1.5e12);
  EXPECT_EQ(r.seed, 7);
  EXPECT_EQ(r.device, "cuda");
}

TEST(ParseRecipe, RecomputeModes) {
  for (const std::string mode : {"none", "selective", "full"}) {
    const Recipe r = ParseOk(kMinimal, {"train.recompute=" + mode});
    EXPECT_EQ(r.train.recompute, mode);
    EXPECT_EQ(ParseOk(RecipeToYaml(r)).train.recompute, mode);  // round trip
  }
  const std::string message = ParseError(std::string(kMinimal) + "train:\n  recompute: partial\n");
  EXPECT_CONTAINS(message, "recipe.yaml:6:");
  EXPECT_CONTAINS(message, "train.recompute: expected one of none | selective | full");
  EXPECT_CONTAINS(message, "partial");
  EXPECT_CONTAINS(ParseError(kMinimal, {"train.recompute=yes"}), "train.recompute");
}

TEST(ParseRecipe, EmptySectionKeepsDefaults) {
  const Recipe r = ParseOk(std::string(kMinimal) + "optim:\nlogging: ~\n");
  EXPECT_DOUBLE_EQ(r.optim.lr, 2e-4);
  EXPECT_EQ(r.logging.every, 1);
}

TEST(ParseRecipe, UnknownKeyNamesLocationAndSuggests) {
  EXPECT_EQ(ParseError("model:\n  path: m\noptim:\n  lrr: 0.1\n"),
            "recipe.yaml:4:3: unknown key optim.lrr (did you mean optim.lr?)");
  EXPECT_EQ(ParseError("optm:\n  lr: 0.1\n"),
            "recipe.yaml:1:1: unknown key optm (did you mean optim?)");
  EXPECT_EQ(ParseError("finetune:\n  lora:\n    rnak: 4\n"),
            "recipe.yaml:3:5: unknown key finetune.lora.rnak (did you mean finetune.lora.rank?)");
  EXPECT_EQ(ParseError("optim:\n  beta1: 0.9\n"),
            "recipe.yaml:2:3: unknown key optim.beta1 (did you mean optim.betas?)");
}

TEST(ParseRecipe, UnknownKeyWithoutCloseMatchListsKnownKeys) {
  const std::string message = ParseError("batch:\n  tokens_per_step: 4096\n");
  EXPECT_CONTAINS(message, "recipe.yaml:2:3: unknown key batch.tokens_per_step");
  EXPECT_CONTAINS(message, "known keys of batch: global_batch, micro_batch, seq_len");
}

TEST(ParseRecipe, WrongTypes) {
  EXPECT_EQ(ParseError("model:\n  path: m\noptim:\n  lr: \"fast\"\n"),
            "recipe.yaml:4:7: optim.lr: expected a number, got \"fast\"");
  EXPECT_EQ(ParseError("optim:\n  lr: fast\n"),
            "recipe.yaml:2:7: optim.lr: expected a number, got \"fast\"");
  // A quoted number is a string in YAML.
  EXPECT_CONTAINS(ParseError("optim:\n  lr: \"3e-4\"\n"),
                  "optim.lr: expected a number, got \"3e-4\"");
  EXPECT_CONTAINS(ParseError("optim:\n  lr: .inf\n"), "optim.lr: expected a number");
  EXPECT_CONTAINS(ParseError("optim:\n  lr: [1]\n"), "optim.lr: expected a number, got a list");
  EXPECT_CONTAINS(ParseError("optim:\n  lr:\n"), "optim.lr: expected a number, got nothing");
  EXPECT_CONTAINS(ParseError("model:\n  path: {a: 1}\n"),
                  "recipe.yaml:2:9: model.path: expected a string, got a map");
}

TEST(ParseRecipe, IntegerForStringIsFineFloatForIntegerIsNot) {
  EXPECT_EQ(ParseOk("model:\n  path: 123\n").model.path, "123");
  EXPECT_EQ(ParseError("batch:\n  micro_batch: 2.5\n"),
            "recipe.yaml:2:16: batch.micro_batch: expected an integer, got 2.5");
  EXPECT_CONTAINS(ParseError("train:\n  steps: 1e3\n"),
                  "train.steps: expected an integer, got 1e3");
  EXPECT_CONTAINS(ParseError("seed: abc\n"), "recipe.yaml:1:7: seed: expected an integer");
  // An integer is a fine number.
  EXPECT_DOUBLE_EQ(ParseOk("optim:\n  lr: 1\n").optim.lr, 1.0);
}

TEST(ParseRecipe, BoolsMustBeTrueOrFalse) {
  EXPECT_FALSE(ParseOk("data:\n  shuffle: false\n").data.shuffle);
  EXPECT_EQ(ParseError("data:\n  shuffle: yes\n"),
            "recipe.yaml:2:12: data.shuffle: expected true or false, got \"yes\"");
  EXPECT_CONTAINS(ParseError("data:\n  pack: 1\n"), "data.pack: expected true or false, got 1");
  EXPECT_CONTAINS(ParseError("logging:\n  all_ranks: \"true\"\n"),
                  "logging.all_ranks: expected true or false");
}

TEST(ParseRecipe, ListsExpected) {
  EXPECT_EQ(ParseError("finetune:\n  lora:\n    targets: q_proj\n"),
            "recipe.yaml:3:14: finetune.lora.targets: expected a list (e.g. [q_proj, v_proj]), "
            "got \"q_proj\"");
  EXPECT_CONTAINS(ParseError("finetune:\n  lora:\n    targets: [q_proj, [v_proj]]\n"),
                  "finetune.lora.targets: expected a list of names, got a list");
  EXPECT_CONTAINS(ParseError("optim:\n  betas: 0.9\n"),
                  "recipe.yaml:2:10: optim.betas: expected a list of 2 numbers, got 0.9");
  EXPECT_CONTAINS(ParseError("optim:\n  betas: [0.9, 0.95, 0.99]\n"),
                  "optim.betas: expected a list of 2 numbers");
  EXPECT_CONTAINS(ParseError("optim:\n  betas: [0.9, x]\n"),
                  "optim.betas: expected a list of 2 numbers");
}

TEST(ParseRecipe, BadEnumListsAllowedValues) {
  EXPECT_EQ(ParseError("schedule:\n  type: cosin\n"),
            "recipe.yaml:2:9: schedule.type: expected one of constant | linear | cosine, got "
            "\"cosin\"");
  EXPECT_CONTAINS(ParseError("finetune:\n  method: qlora\n"),
                  "finetune.method: expected one of lora | full, got \"qlora\"");
  EXPECT_CONTAINS(ParseError("precision:\n  dtype: fp16\n"),
                  "precision.dtype: expected one of fp32 | bf16");
  EXPECT_CONTAINS(ParseError("device: tpu\n"),
                  "recipe.yaml:1:9: device: expected one of cpu | cuda, got \"tpu\"");
}

TEST(ParseRecipe, SectionMustBeAMap) {
  EXPECT_EQ(ParseError("optim: 3\n"),
            "recipe.yaml:1:8: optim: expected a section (a map of key: value), got 3");
  EXPECT_CONTAINS(ParseError("finetune:\n  lora: [1, 2]\n"),
                  "recipe.yaml:2:9: finetune.lora: expected a section");
}

TEST(ParseRecipe, MalformedEmptyAndNonMapFiles) {
  const std::string malformed = ParseError("model:\n  path: [a, b\ndata: x\n");
  EXPECT_TRUE(absl::StartsWith(malformed, "recipe.yaml:")) << malformed;
  EXPECT_CONTAINS(malformed, "malformed YAML");
  EXPECT_CONTAINS(ParseError("model:\n\tpath: m\n"), "malformed YAML");
  EXPECT_CONTAINS(ParseError(""), "recipe.yaml: the recipe is empty");
  EXPECT_CONTAINS(ParseError("# just a comment\n"), "recipe.yaml: the recipe is empty");
  EXPECT_CONTAINS(ParseError("- a\n- b\n"),
                  "recipe.yaml:1:1: the recipe must be a map of sections");
  EXPECT_CONTAINS(ParseError("just text\n"), "the recipe must be a map of sections");
}

TEST(ParseRecipe, DuplicateKey) {
  EXPECT_EQ(ParseError("optim:\n  lr: 1\n  lr: 2\n"), "recipe.yaml:3:3: duplicate key optim.lr");
}

TEST(ParseRecipe, OverridesOfScalarsAndNestedLists) {
  const Recipe r = ParseOk(
      std::string(kMinimal) + "optim:\n  lr: 0.1\n",
      {"optim.lr=3e-4", "finetune.lora.targets=[q_proj,k_proj]", "optim.betas=[0.9,0.99]",
       "checkpoint.dir=out/ck", "parallel.dp=2", "data.shuffle=false", "finetune.lora.rank=4"});
  EXPECT_DOUBLE_EQ(r.optim.lr, 3e-4);
  EXPECT_EQ(r.finetune.lora.targets, (std::vector<std::string>{"q_proj", "k_proj"}));
  EXPECT_DOUBLE_EQ(r.optim.beta1, 0.9);
  EXPECT_DOUBLE_EQ(r.optim.beta2, 0.99);
  EXPECT_EQ(r.checkpoint.dir, "out/ck");
  EXPECT_EQ(r.parallel.dp, 2);
  EXPECT_FALSE(r.data.shuffle);
  EXPECT_EQ(r.finetune.lora.rank, 4);
  EXPECT_EQ(r.model.path, "m");  // untouched
}

TEST(ParseRecipe, LaterOverrideWinsAndSectionsCanBeReplaced) {
  const Recipe r = ParseOk(kMinimal, {"optim.lr=1", "optim.lr=2", "batch={micro_batch: 2}",
                                      "model.path=", "model.config=c.json"});
  EXPECT_DOUBLE_EQ(r.optim.lr, 2.0);
  EXPECT_EQ(r.batch.micro_batch, 2);
  EXPECT_EQ(r.batch.global_batch, 8);
  EXPECT_EQ(r.model.path, "");
  EXPECT_EQ(r.model.config, "c.json");
}

TEST(ParseRecipe, BadOverrides) {
  EXPECT_EQ(ParseError(kMinimal, {"optim.lr"}),
            "override optim.lr: expected key=value (e.g. optim.lr=3e-4)");
  EXPECT_CONTAINS(ParseError(kMinimal, {"optim..lr=1"}),
                  "override optim..lr=1: bad key path \"optim..lr\"");
  EXPECT_CONTAINS(ParseError(kMinimal, {"=1"}), "override =1: bad key path");
  EXPECT_EQ(ParseError(kMinimal, {"optim.lrr=0.1"}),
            "override optim.lrr=0.1: unknown key optim.lrr (did you mean optim.lr?)");
  EXPECT_EQ(ParseError(kMinimal, {"optm.lr=0.1"}),
            "override optm.lr=0.1: unknown key optm (did you mean optim?)");
  EXPECT_EQ(ParseError(kMinimal, {"optim.lr=fast"}),
            "override optim.lr=fast: optim.lr: expected a number, got \"fast\"");
  EXPECT_EQ(ParseError(kMinimal, {"batch={micro_batch: 2.5}"}),
            "override batch={micro_batch: 2.5}: batch.micro_batch: expected an integer, got 2.5");
  // A missing key on the way becomes a section; its type is then checked.
  EXPECT_EQ(ParseError(kMinimal, {"seed.x=1"}),
            "override seed.x=1: seed: expected an integer, got a map");
  EXPECT_CONTAINS(ParseError("seed: 5\n", {"seed.x=1"}),
                  "override seed.x=1: seed is not a section (it is 5)");
  EXPECT_CONTAINS(ParseError(kMinimal, {"optim.betas=[0.9,"}),
                  "override optim.betas=[0.9,: value is not valid YAML");
}

TEST(ParseRecipe, FileErrorsKeepFileLocationsNextToOverrides) {
  // The file's own mistake is still reported at its line, not as the override's.
  EXPECT_EQ(ParseError("optim:\n  lr: 1\n  lrr: 2\n", {"optim.lr=3"}),
            "recipe.yaml:3:3: unknown key optim.lrr (did you mean optim.lr?)");
}

TEST(LoadRecipe, ResolvesFilePathsAgainstRecipeDirButNotOverrides) {
  const std::string dir = testing::ScratchDir();
  const std::string path = dir + "/r.yaml";
  testing::WriteFile(path,
                     "model: {path: model}\n"
                     "data: {path: ../data/train.jsonl}\n"
                     "checkpoint: {dir: /abs/ck}\n");
  absl::StatusOr<Recipe> r = LoadRecipe(path, {"checkpoint.resume=latest"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->source, path);
  EXPECT_EQ(r->model.path, dir + "/model");
  EXPECT_EQ(r->data.path, (std::filesystem::path(dir).parent_path() / "data/train.jsonl").string());
  EXPECT_EQ(r->checkpoint.dir, "/abs/ck");
  EXPECT_EQ(r->checkpoint.resume, "latest");

  absl::StatusOr<Recipe> o = LoadRecipe(path, {"model.path=rel/m", "data={path: x.jsonl}"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->model.path, "rel/m");
  EXPECT_EQ(o->data.path, "x.jsonl");
}

TEST(LoadRecipe, MissingFileAndErrorsNameThePath) {
  const std::string dir = testing::ScratchDir();
  absl::StatusOr<Recipe> missing = LoadRecipe(dir + "/nope.yaml");
  ASSERT_FALSE(missing.ok());
  EXPECT_CONTAINS(std::string(missing.status().message()), dir + "/nope.yaml");

  testing::WriteFile(dir + "/bad.yaml", "optim:\n  lrr: 1\n");
  absl::StatusOr<Recipe> bad = LoadRecipe(dir + "/bad.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(),
            dir + "/bad.yaml:2:3: unknown key optim.lrr (did you mean optim.lr?)");
}

Recipe EveryFieldChanged() {
  Recipe r;
  r.source = "x.yaml";
  r.model = {"models/m: with colon", "cfg.json", "skip"};
  r.data.path = "d.jsonl";
  r.data.format = "messages";
  r.data.shuffle = false;
  r.data.pack = false;
  r.data.datasets = {{"a.jsonl", "instruction", 2.5, {{"instruction", "q"}, {"output", "a"}}},
                     {"b.jsonl", "", 1.0, {}}};
  r.data.tokenizer = "tok/tokenizer.json";
  r.data.chat_template = "chatml";
  r.data.train_on_prompt = true;
  r.data.mask_history = true;
  r.data.on_error = "skip";
  r.data.truncation = "drop";
  r.data.validation = {0.25, "v.jsonl", "sharegpt"};
  r.data.cache_dir = "cache";
  r.data.num_workers = 3;
  r.train.eval_every = 11;
  r.finetune.method = "full";
  r.finetune.lora = {3,
                     5.5,
                     0.125,
                     {"q_proj", "true", "123", "", "null", "~", " spaced ", "a, b", "[x]", "#c"},
                     true};
  r.optim = {1.0 / 3.0, 0.85, 0.975, 1e-7, 0.05, true, 0.0};
  r.schedule = {"linear", 17, 0.3};
  r.batch = {24, 3, 96};
  r.train.steps = 1000001;
  r.precision.dtype = "bf16";
  r.parallel.dp = 2, r.parallel.tp = 3, r.parallel.pp = 4, r.parallel.ep = 5;
  r.parallel.pp_layers = {1, 2, 3, 4, 5, 6, 7, 8};
  r.parallel.pp_virtual = 2;
  r.parallel.pp_schedule = "interleaved_1f1b";
  r.parallel.sequence_parallel = true, r.parallel.zero = 1;
  r.parallel.bucket_mb = 12.5, r.parallel.comm_timeout_s = 0.75;
  r.checkpoint = {"", 9, "latest", 4};
  r.logging = {7, "null", "~", true, 3.125e14};
  r.seed = 99;
  r.device = "cuda";
  return r;
}

TEST(RecipeToYaml, RoundTripsEveryField) {
  const Recipe in = EveryFieldChanged();
  const std::string yaml = RecipeToYaml(in);
  absl::StatusOr<Recipe> out = ParseRecipe(yaml, "x.yaml");
  ASSERT_TRUE(out.ok()) << out.status() << "\n" << yaml;
  EXPECT_EQ(out->model.path, in.model.path);
  EXPECT_EQ(out->model.config, in.model.config);
  EXPECT_EQ(out->model.mtp_layers, in.model.mtp_layers);
  EXPECT_EQ(out->data.path, in.data.path);
  EXPECT_EQ(out->data.format, in.data.format);
  EXPECT_EQ(out->data.shuffle, in.data.shuffle);
  EXPECT_EQ(out->data.pack, in.data.pack);
  ASSERT_EQ(out->data.datasets.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(out->data.datasets[i].path, in.data.datasets[i].path);
    EXPECT_EQ(out->data.datasets[i].format, in.data.datasets[i].format);
    EXPECT_EQ(out->data.datasets[i].weight, in.data.datasets[i].weight);
    EXPECT_EQ(out->data.datasets[i].fields, in.data.datasets[i].fields);
  }
  EXPECT_EQ(out->data.tokenizer, in.data.tokenizer);
  EXPECT_EQ(out->data.chat_template, in.data.chat_template);
  EXPECT_EQ(out->data.train_on_prompt, in.data.train_on_prompt);
  EXPECT_EQ(out->data.mask_history, in.data.mask_history);
  EXPECT_EQ(out->data.on_error, in.data.on_error);
  EXPECT_EQ(out->data.truncation, in.data.truncation);
  EXPECT_EQ(out->data.validation.fraction, in.data.validation.fraction);
  EXPECT_EQ(out->data.validation.path, in.data.validation.path);
  EXPECT_EQ(out->data.validation.format, in.data.validation.format);
  EXPECT_EQ(out->data.cache_dir, in.data.cache_dir);
  EXPECT_EQ(out->data.num_workers, in.data.num_workers);
  EXPECT_EQ(out->train.eval_every, in.train.eval_every);
  EXPECT_EQ(out->finetune.method, in.finetune.method);
  EXPECT_EQ(out->finetune.lora.rank, in.finetune.lora.rank);
  EXPECT_EQ(out->finetune.lora.alpha, in.finetune.lora.alpha);
  EXPECT_EQ(out->finetune.lora.dropout, in.finetune.lora.dropout);
  EXPECT_EQ(out->finetune.lora.targets, in.finetune.lora.targets);
  EXPECT_EQ(out->finetune.lora.rslora, in.finetune.lora.rslora);
  EXPECT_EQ(out->optim.lr, in.optim.lr);  // exact: shortest round-trip decimal
  EXPECT_EQ(out->optim.beta1, in.optim.beta1);
  EXPECT_EQ(out->optim.beta2, in.optim.beta2);
  EXPECT_EQ(out->optim.eps, in.optim.eps);
  EXPECT_EQ(out->optim.weight_decay, in.optim.weight_decay);
  EXPECT_EQ(out->optim.decay_norms_and_biases, in.optim.decay_norms_and_biases);
  EXPECT_EQ(out->optim.grad_clip, in.optim.grad_clip);
  EXPECT_EQ(out->schedule.type, in.schedule.type);
  EXPECT_EQ(out->schedule.warmup_steps, in.schedule.warmup_steps);
  EXPECT_EQ(out->schedule.min_lr_ratio, in.schedule.min_lr_ratio);
  EXPECT_EQ(out->batch.global_batch, in.batch.global_batch);
  EXPECT_EQ(out->batch.micro_batch, in.batch.micro_batch);
  EXPECT_EQ(out->batch.seq_len, in.batch.seq_len);
  EXPECT_EQ(out->train.steps, in.train.steps);
  EXPECT_EQ(out->precision.dtype, in.precision.dtype);
  EXPECT_EQ(out->parallel.dp, in.parallel.dp);
  EXPECT_EQ(out->parallel.tp, in.parallel.tp);
  EXPECT_EQ(out->parallel.pp, in.parallel.pp);
  EXPECT_EQ(out->parallel.pp_layers, in.parallel.pp_layers);
  EXPECT_EQ(out->parallel.pp_virtual, in.parallel.pp_virtual);
  EXPECT_EQ(out->parallel.pp_schedule, in.parallel.pp_schedule);
  EXPECT_EQ(out->parallel.ep, in.parallel.ep);
  EXPECT_EQ(out->parallel.sequence_parallel, in.parallel.sequence_parallel);
  EXPECT_EQ(out->parallel.zero, in.parallel.zero);
  EXPECT_EQ(out->parallel.bucket_mb, in.parallel.bucket_mb);
  EXPECT_EQ(out->parallel.comm_timeout_s, in.parallel.comm_timeout_s);
  EXPECT_EQ(out->checkpoint.dir, in.checkpoint.dir);
  EXPECT_EQ(out->checkpoint.every, in.checkpoint.every);
  EXPECT_EQ(out->checkpoint.resume, in.checkpoint.resume);
  EXPECT_EQ(out->checkpoint.keep_last, in.checkpoint.keep_last);
  EXPECT_EQ(out->logging.every, in.logging.every);
  EXPECT_EQ(out->logging.metrics_file, in.logging.metrics_file);
  EXPECT_EQ(out->logging.tensorboard_dir, in.logging.tensorboard_dir);
  EXPECT_EQ(out->logging.all_ranks, in.logging.all_ranks);
  EXPECT_EQ(out->logging.peak_flops, in.logging.peak_flops);
  EXPECT_EQ(out->seed, in.seed);
  EXPECT_EQ(out->device, in.device);
  // And the text is a fixed point.
  EXPECT_EQ(RecipeToYaml(*out), yaml);
}

TEST(RecipeToYaml, DefaultsRoundTripAndTextIsReadable) {
  const std::string yaml = RecipeToYaml(Recipe{});
  EXPECT_CONTAINS(yaml, "lr: 0.0002");
  EXPECT_CONTAINS(yaml, "betas: [0.9, 0.95]");
  EXPECT_CONTAINS(yaml, "eps: 1e-08");
  absl::StatusOr<Recipe> out = ParseRecipe(yaml, "defaults.yaml");
  ASSERT_TRUE(out.ok()) << out.status() << "\n" << yaml;
  EXPECT_EQ(out->source, "defaults.yaml");
  EXPECT_TRUE(absl::StartsWith(RecipeToYaml(*out), "# effective recipe from defaults.yaml\n"))
      << RecipeToYaml(*out);
  out->source.clear();
  EXPECT_EQ(RecipeToYaml(*out), yaml);
}

TEST(DidYouMean, EditDistanceAndSuggestions) {
  EXPECT_EQ(EditDistance("lr", "lr"), 0);
  EXPECT_EQ(EditDistance("lrr", "lr"), 1);
  EXPECT_EQ(EditDistance("wieght_decay", "weight_decay"), 1);  // one transposition
  EXPECT_EQ(EditDistance("", "abc"), 3);
  EXPECT_EQ(EditDistance("kitten", "sitting"), 3);
  const std::vector<std::string> keys = {"lr", "betas", "eps", "weight_decay", "grad_clip"};
  EXPECT_EQ(DidYouMean("lrr", keys), "lr");
  EXPECT_EQ(DidYouMean("weight_deacy", keys), "weight_decay");
  EXPECT_EQ(DidYouMean("momentum", keys), "");
  EXPECT_EQ(DidYouMean("x", {}), "");
}

}  // namespace
}  // namespace fulcrum::recipe
