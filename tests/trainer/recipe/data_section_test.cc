// The recipe's data section for text datasets: each key parsed, its errors,
// relative paths, and the validation rules; train.on_nonfinite and
// checkpoint.async.
#include <gtest/gtest.h>

#include <filesystem>

#include "absl/strings/match.h"
#include "tests/test_support.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::recipe {
namespace {

#define EXPECT_CONTAINS(text, part)          \
  EXPECT_TRUE(absl::StrContains(text, part)) \
      << "message: " << (text) << "\nexpected part: " << (part)

constexpr char kModel[] = "model: {path: m}\n";

Recipe ParseOk(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  absl::StatusOr<Recipe> recipe = ParseRecipe(yaml, "r.yaml", overrides);
  EXPECT_TRUE(recipe.ok()) << recipe.status();
  return recipe.ok() ? *recipe : Recipe{};
}

std::string ParseError(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  absl::StatusOr<Recipe> recipe = ParseRecipe(yaml, "r.yaml", overrides);
  EXPECT_FALSE(recipe.ok()) << yaml;
  return recipe.ok() ? "" : std::string(recipe.status().message());
}

std::string ValidationError(const Recipe& r) {
  const absl::Status status = ValidateRecipe(r, 1);
  EXPECT_FALSE(status.ok());
  return std::string(status.message());
}

TEST(DataSection, DefaultsKeepOldRecipesPretokenized) {
  const Recipe r = ParseOk(std::string(kModel) + "data: {path: d.jsonl}\n");
  EXPECT_EQ(r.data.format, "pretokenized");
  EXPECT_FALSE(UsesTextData(r.data));
  EXPECT_TRUE(r.data.datasets.empty());
  EXPECT_EQ(r.data.tokenizer, "");
  EXPECT_EQ(r.data.chat_template, "auto");
  EXPECT_FALSE(r.data.train_on_prompt);
  EXPECT_FALSE(r.data.mask_history);
  EXPECT_EQ(r.data.on_error, "fail");
  EXPECT_EQ(r.data.truncation, "truncate");
  EXPECT_EQ(r.data.validation.fraction, 0.0);
  EXPECT_EQ(r.data.validation.path, "");
  EXPECT_EQ(r.data.cache_dir, "");
  EXPECT_EQ(r.data.num_workers, 0);
  EXPECT_EQ(r.train.eval_every, 0);
  EXPECT_TRUE(ValidateRecipe(r, 1).ok());
}

TEST(DataSection, ReadsEveryKey) {
  const Recipe r =
      ParseOk(std::string(kModel) +
              "data:\n"
              "  format: instruction\n"
              "  datasets:\n"
              "    - {path: a.jsonl, weight: 2.5, fields: {instruction: q, output: a}}\n"
              "    - {path: b.jsonl, format: messages}\n"
              "  tokenizer: tok.json\n"
              "  chat_template: chatml\n"
              "  train_on_prompt: true\n"
              "  mask_history: true\n"
              "  on_error: skip\n"
              "  truncation: drop\n"
              "  validation: {fraction: 0.1}\n"
              "  cache_dir: cache\n"
              "  num_workers: 2\n"
              "train: {eval_every: 5}\n");
  EXPECT_TRUE(UsesTextData(r.data));
  ASSERT_EQ(r.data.datasets.size(), 2u);
  EXPECT_EQ(r.data.datasets[0].path, "a.jsonl");
  EXPECT_EQ(r.data.datasets[0].format, "");  // = data.format
  EXPECT_EQ(r.data.datasets[0].weight, 2.5);
  EXPECT_EQ(r.data.datasets[0].fields.at("instruction"), "q");
  EXPECT_EQ(r.data.datasets[0].fields.at("output"), "a");
  EXPECT_EQ(r.data.datasets[1].format, "messages");
  EXPECT_EQ(r.data.datasets[1].weight, 1.0);
  EXPECT_EQ(r.data.tokenizer, "tok.json");
  EXPECT_EQ(r.data.chat_template, "chatml");
  EXPECT_TRUE(r.data.train_on_prompt);
  EXPECT_TRUE(r.data.mask_history);
  EXPECT_EQ(r.data.on_error, "skip");
  EXPECT_EQ(r.data.truncation, "drop");
  EXPECT_EQ(r.data.validation.fraction, 0.1);
  EXPECT_EQ(r.data.cache_dir, "cache");
  EXPECT_EQ(r.data.num_workers, 2);
  EXPECT_EQ(r.train.eval_every, 5);
  EXPECT_TRUE(ValidateRecipe(r, 1).ok()) << ValidateRecipe(r, 1);
}

TEST(DataSection, OverridesSetNestedKeys) {
  const Recipe r = ParseOk(std::string(kModel) + "data: {path: d.jsonl}\n",
                           {"data.format=messages", "data.validation.path=v.jsonl",
                            "data.datasets=[{path: x.jsonl, format: text}]", "data.path="});
  EXPECT_EQ(r.data.format, "messages");
  EXPECT_EQ(r.data.validation.path, "v.jsonl");
  ASSERT_EQ(r.data.datasets.size(), 1u);
  EXPECT_EQ(r.data.datasets[0].format, "text");
}

TEST(DataSection, TyposAndBadValuesNameTheKey) {
  EXPECT_CONTAINS(ParseError("data: {path: d, tokeniser: t}\n"),
                  "unknown key data.tokeniser (did you mean data.tokenizer?)");
  EXPECT_CONTAINS(ParseError("data: {datasets: [{path: a, wieght: 2}]}\n"),
                  "unknown key data.datasets[0].wieght (did you mean data.datasets[0].weight?)");
  EXPECT_CONTAINS(ParseError("data: {validation: {fration: 0.1}}\n"),
                  "unknown key data.validation.fration (did you mean data.validation.fraction?)");
  EXPECT_CONTAINS(ParseError("data: {format: chat}\n"),
                  "data.format: expected one of pretokenized | text | instruction | messages | "
                  "sharegpt, got \"chat\"");
  EXPECT_CONTAINS(ParseError("data: {on_error: ignore}\n"),
                  "data.on_error: expected one of fail | skip");
  EXPECT_CONTAINS(ParseError("data: {truncation: cut}\n"),
                  "data.truncation: expected one of truncate | drop");
  EXPECT_CONTAINS(ParseError("data: {datasets: a.jsonl}\n"), "data.datasets: expected a list");
  EXPECT_CONTAINS(ParseError("data: {datasets: [a.jsonl]}\n"),
                  "data.datasets[0]: expected a section");
  EXPECT_CONTAINS(ParseError("data: {datasets: [{path: a, fields: [x]}]}\n"),
                  "data.datasets[0].fields: expected a map");
  EXPECT_CONTAINS(ParseError("data: {datasets: [{path: a, weight: heavy}]}\n"),
                  "data.datasets[0].weight: expected a number");
  EXPECT_CONTAINS(ParseError("train: {eval_every: often}\n"),
                  "train.eval_every: expected an integer");
  EXPECT_CONTAINS(ParseError("data: {mask_history: 1}\n"),
                  "data.mask_history: expected true or false");
}

// train.on_nonfinite and checkpoint.async (the checkpoint issue's keys).
TEST(DataSection, NonfinitePolicyAndAsyncCheckpoints) {
  const Recipe defaults = ParseOk(std::string(kModel) + "data: {path: d.jsonl}\n");
  EXPECT_EQ(defaults.train.on_nonfinite, "abort");
  EXPECT_FALSE(defaults.checkpoint.async);
  const Recipe set = ParseOk(std::string(kModel) + "data: {path: d.jsonl}\n",
                             {"train.on_nonfinite=skip", "checkpoint.async=true"});
  EXPECT_EQ(set.train.on_nonfinite, "skip");
  EXPECT_TRUE(set.checkpoint.async);
  const Recipe round_trip = ParseOk(RecipeToYaml(set));
  EXPECT_EQ(round_trip.train.on_nonfinite, "skip");
  EXPECT_TRUE(round_trip.checkpoint.async);
  EXPECT_CONTAINS(ParseError("train: {on_nonfinite: ignore}\n"),
                  "train.on_nonfinite: expected one of abort | skip");
  EXPECT_CONTAINS(ParseError("checkpoint: {async: soon}\n"),
                  "checkpoint.async: expected true or false");
}

TEST(DataSection, ValidationRules) {
  Recipe r;
  r.source = "r.yaml";
  r.model.path = "m";
  r.data.path = "d.jsonl";
  r.data.datasets = {{"a.jsonl", "text", 1.0, {}}};
  EXPECT_CONTAINS(ValidationError(r), "r.yaml: data.datasets: set data.path or data.datasets");
  r.data.path = "";
  r.data.datasets = {{"", "text", 0.0, {{"text", ""}}}};
  const std::string message = ValidationError(r);
  EXPECT_CONTAINS(message, "data.datasets[0].path: must be set");
  EXPECT_CONTAINS(message, "data.datasets[0].weight: must be > 0, got 0");
  EXPECT_CONTAINS(message, "data.datasets[0].fields.text: must name a record key");
  // A dataset without its own format takes data.format, which must then be a text format.
  r.data.datasets = {{"a.jsonl", "", 1.0, {}}};
  EXPECT_CONTAINS(ValidationError(r),
                  "data.datasets[0].format: pretokenized data goes through data.path");
  r.data.datasets[0].format = "csv";
  EXPECT_CONTAINS(ValidationError(r),
                  "data.datasets[0].format: expected one of text | instruction | messages | "
                  "sharegpt, got \"csv\"");
  r.data.datasets[0].format = "";
  r.data.format = "sharegpt";
  EXPECT_TRUE(ValidateRecipe(r, 1).ok()) << ValidateRecipe(r, 1);

  r.data.validation.fraction = 1.0;
  EXPECT_CONTAINS(ValidationError(r), "data.validation.fraction: must be in [0, 1), got 1");
  r.data.validation.fraction = 0.1;
  r.data.validation.path = "v.jsonl";
  EXPECT_CONTAINS(ValidationError(r), "data.validation: set fraction or path, not both");
  r.data.validation = {};
  r.train.eval_every = 10;
  EXPECT_CONTAINS(ValidationError(r), "train.eval_every: needs a validation split");
  r.data.validation.path = "v.jsonl";
  EXPECT_TRUE(ValidateRecipe(r, 1).ok()) << ValidateRecipe(r, 1);
  r.train.eval_every = -1;
  EXPECT_CONTAINS(ValidationError(r), "train.eval_every: must be >= 0");
  r.train.eval_every = 0;
  r.data.num_workers = -2;
  EXPECT_CONTAINS(ValidationError(r), "data.num_workers: must be >= 0");
  r.data.num_workers = 0;
  r.data.chat_template = "";
  EXPECT_CONTAINS(ValidationError(r), "data.chat_template: must be auto or a template name");
}

TEST(DataSection, RelativePathsResolveAgainstTheRecipeFile) {
  const std::string dir = testing::ScratchDir() + "/recipes";
  std::filesystem::create_directories(dir);
  testing::WriteFile(dir + "/r.yaml",
                     "model: {path: m}\n"
                     "data:\n"
                     "  format: text\n"
                     "  datasets: [{path: a.jsonl}, {path: /abs/b.jsonl}]\n"
                     "  tokenizer: tok\n"
                     "  validation: {path: v.jsonl}\n"
                     "  cache_dir: c\n");
  absl::StatusOr<Recipe> r = LoadRecipe(dir + "/r.yaml", {"data.cache_dir=rel"});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->data.datasets[0].path, dir + "/a.jsonl");
  EXPECT_EQ(r->data.datasets[1].path, "/abs/b.jsonl");
  EXPECT_EQ(r->data.tokenizer, dir + "/tok");
  EXPECT_EQ(r->data.validation.path, dir + "/v.jsonl");
  EXPECT_EQ(r->data.cache_dir, "rel");  // overrides are taken as given
}

TEST(DataSection, MakePathsAbsolute) {
  Recipe r;
  r.data.datasets = {{"a.jsonl", "", 1.0, {}}};
  r.data.tokenizer = "t";
  r.data.cache_dir = "c";
  MakePathsAbsolute(r);
  const std::string cwd = std::filesystem::current_path().string();
  EXPECT_EQ(r.data.datasets[0].path, cwd + "/a.jsonl");
  EXPECT_EQ(r.data.tokenizer, cwd + "/t");
  EXPECT_EQ(r.data.cache_dir, cwd + "/c");
  EXPECT_EQ(r.data.path, "");  // empty stays empty
}

}  // namespace
}  // namespace fulcrum::recipe
