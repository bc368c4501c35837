// The pipeline keys of the parallel section (pp_layers, pp_virtual,
// pp_schedule): parsing from YAML and overrides with strict types, the YAML
// round trip, ValidateRecipe's pipeline checks (each problem once, with the
// arithmetic) and the layer split in ValidateParallelForModel. Table-driven.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::recipe {
namespace {

#define EXPECT_CONTAINS(text, part)          \
  EXPECT_TRUE(absl::StrContains(text, part)) \
      << "message: " << (text) << "\nexpected part: " << (part)

constexpr char kMinimal[] = "model: {path: m}\ndata: {path: d.jsonl}\n";

Recipe Valid() {
  Recipe r;
  r.source = "r.yaml";
  r.model.path = "model";
  r.data.path = "data.jsonl";
  return r;
}

std::vector<std::string> Lines(const absl::Status& status) {
  if (status.ok()) return {};
  return absl::StrSplit(status.message(), '\n');
}

TEST(PipelineSection, Defaults) {
  absl::StatusOr<Recipe> r = ParseRecipe(kMinimal, "p.yaml");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->parallel.pp_layers.empty());
  EXPECT_EQ(r->parallel.pp_virtual, 1);
  EXPECT_EQ(r->parallel.pp_schedule, "1f1b");
}

TEST(PipelineSection, ParsesTheKeysFromYaml) {
  const std::string yaml = std::string(kMinimal) +
                           "parallel:\n  pp: 4\n  pp_layers: [7, 8, 8, 9]\n  pp_virtual: 1\n"
                           "  pp_schedule: zb_h1\n";
  absl::StatusOr<Recipe> r = ParseRecipe(yaml, "p.yaml");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->parallel.pp, 4);
  EXPECT_EQ(r->parallel.pp_layers, (std::vector<int64_t>{7, 8, 8, 9}));
  EXPECT_EQ(r->parallel.pp_virtual, 1);
  EXPECT_EQ(r->parallel.pp_schedule, "zb_h1");
}

struct ParseCase {
  std::vector<std::string> overrides;
  std::function<void(const ParallelSection&)> check;  // when parsing succeeds
  std::string error;                                  // else a part of the error
};

TEST(PipelineSection, ParsesOverridesWithStrictTypes) {
  const std::vector<ParseCase> cases = {
      {{"parallel.pp_layers=[7,8,8,9]"},
       [](const ParallelSection& p) {
         EXPECT_EQ(p.pp_layers, (std::vector<int64_t>{7, 8, 8, 9}));
       },
       ""},
      {{"parallel.pp_layers=[7,8]", "parallel.pp_layers=[]"},
       [](const ParallelSection& p) { EXPECT_TRUE(p.pp_layers.empty()); },
       ""},
      {{"parallel.pp_virtual=2"}, [](const ParallelSection& p) { EXPECT_EQ(p.pp_virtual, 2); }, ""},
      {{"parallel.pp_schedule=gpipe"},
       [](const ParallelSection& p) { EXPECT_EQ(p.pp_schedule, "gpipe"); },
       ""},
      {{"parallel.pp_schedule=interleaved_1f1b"},
       [](const ParallelSection& p) { EXPECT_EQ(p.pp_schedule, "interleaved_1f1b"); },
       ""},
      {{"parallel.pp_layers=8"},
       nullptr,
       "override parallel.pp_layers=8: parallel.pp_layers: expected a list of integers (e.g. "
       "[7, 8, 8, 9]), got 8"},
      {{"parallel.pp_layers=[7,x]"},
       nullptr,
       "parallel.pp_layers: expected a list of integers (e.g. [7, 8, 8, 9]), got \"x\" in the "
       "list"},
      {{"parallel.pp_layers=[7.5,8]"}, nullptr, "got 7.5 in the list"},
      {{"parallel.pp_layers=[[7]]"}, nullptr, "got a list in the list"},
      {{"parallel.pp_virtual=two"},
       nullptr,
       "parallel.pp_virtual: expected an integer, got \"two\""},
      {{"parallel.pp_schedule=1f1f"},
       nullptr,
       "override parallel.pp_schedule=1f1f: parallel.pp_schedule: unknown pipeline schedule "
       "\"1f1f\""},
      {{"parallel.pp_schedule=[gpipe]"}, nullptr, "parallel.pp_schedule: expected a string"},
      {{"parallel.pp_layer=[8,8]"},
       nullptr,
       "unknown key parallel.pp_layer (did you mean parallel.pp_layers?)"},
      {{"parallel.pp_schedul=gpipe"},
       nullptr,
       "unknown key parallel.pp_schedul (did you mean parallel.pp_schedule?)"},
  };
  for (const ParseCase& c : cases) {
    SCOPED_TRACE(c.overrides.back());
    absl::StatusOr<Recipe> r = ParseRecipe(kMinimal, "p.yaml", c.overrides);
    if (c.error.empty()) {
      ASSERT_TRUE(r.ok()) << r.status();
      c.check(r->parallel);
    } else {
      ASSERT_FALSE(r.ok());
      EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_CONTAINS(std::string(r.status().message()), c.error);
    }
  }
}

TEST(PipelineSection, ErrorsInTheFileGiveLineAndColumn) {
  const std::string yaml = std::string(kMinimal) + "parallel:\n  pp_schedule: 1f1f\n";
  absl::StatusOr<Recipe> r = ParseRecipe(yaml, "p.yaml");
  ASSERT_FALSE(r.ok());
  EXPECT_CONTAINS(std::string(r.status().message()),
                  "p.yaml:4:16: parallel.pp_schedule: unknown pipeline schedule \"1f1f\"");
  // The message lists the valid names.
  for (const char* name : {"gpipe", "1f1b", "interleaved_1f1b", "zb_h1"}) {
    EXPECT_CONTAINS(std::string(r.status().message()), name);
  }
  const std::string list = std::string(kMinimal) + "parallel:\n  pp_layers: [4, four]\n";
  r = ParseRecipe(list, "p.yaml");
  ASSERT_FALSE(r.ok());
  EXPECT_CONTAINS(std::string(r.status().message()), "p.yaml:4:18: parallel.pp_layers:");
}

TEST(PipelineSection, RoundTripsThroughYaml) {
  struct Keys {
    std::vector<int64_t> layers;
    int64_t virtual_stages;
    std::string schedule;
  };
  const std::vector<Keys> cases = {
      {{}, 1, "1f1b"},
      {{7, 8, 8, 9}, 1, "gpipe"},
      {{}, 2, "interleaved_1f1b"},
      {{1, 3, 3, 1}, 2, "interleaved_1f1b"},
      {{16, 16}, 1, "zb_h1"},
  };
  for (const Keys& c : cases) {
    Recipe r = Valid();
    r.parallel.pp = 2;
    r.parallel.pp_layers = c.layers;
    r.parallel.pp_virtual = c.virtual_stages;
    r.parallel.pp_schedule = c.schedule;
    const std::string yaml = RecipeToYaml(r);
    EXPECT_CONTAINS(yaml, "pp_layers: [");
    absl::StatusOr<Recipe> out = ParseRecipe(yaml, "r.yaml");
    ASSERT_TRUE(out.ok()) << out.status() << "\n" << yaml;
    EXPECT_EQ(out->parallel.pp_layers, c.layers) << yaml;
    EXPECT_EQ(out->parallel.pp_virtual, c.virtual_stages) << yaml;
    EXPECT_EQ(out->parallel.pp_schedule, c.schedule) << yaml;
    EXPECT_EQ(RecipeToYaml(*out), yaml);
  }
}

struct ValidateCase {
  std::string name;
  std::function<void(Recipe&)> mutate;
  int world_size;
  std::string error;  // "" = valid
};

// pp 2 on 2 ranks, global_batch 8 = 8 micro-batches of 1.
void Pp2(Recipe& r) { r.parallel.pp = 2; }

TEST(PipelineSection, ValidateAcceptsEverySchedule) {
  const std::vector<ValidateCase> cases = {
      {"1f1b", Pp2, 2, ""},
      {"gpipe", [](Recipe& r) { Pp2(r), r.parallel.pp_schedule = "gpipe"; }, 2, ""},
      {"zb_h1", [](Recipe& r) { Pp2(r), r.parallel.pp_schedule = "zb_h1"; }, 2, ""},
      {"interleaved",
       [](Recipe& r) {
         Pp2(r), r.parallel.pp_schedule = "interleaved_1f1b", r.parallel.pp_virtual = 2;
       },
       2, ""},
      {"pp_layers",
       [](Recipe& r) {
         r.parallel.pp = 4, r.parallel.pp_layers = {7, 8, 8, 9};
       },
       4, ""},
      {"interleaved pp_layers",
       [](Recipe& r) {
         Pp2(r), r.parallel.pp_schedule = "interleaved_1f1b", r.parallel.pp_virtual = 3;
         r.parallel.pp_layers = {1, 2, 2, 2, 2, 1};
       },
       2, ""},
      {"gpipe with fewer micro-batches than stages",
       [](Recipe& r) {
         r.parallel.pp = 4, r.parallel.pp_schedule = "gpipe", r.batch.global_batch = 2;
       },
       4, ""},
      {"m = pp exactly", [](Recipe& r) { r.parallel.pp = 4, r.batch.global_batch = 4; }, 4, ""},
      {"pp x dp", [](Recipe& r) { Pp2(r), r.parallel.dp = 2; }, 4, ""},
  };
  for (const ValidateCase& c : cases) {
    SCOPED_TRACE(c.name);
    Recipe r = Valid();
    c.mutate(r);
    EXPECT_TRUE(ValidateRecipe(r, c.world_size).ok()) << ValidateRecipe(r, c.world_size);
  }
  // pp 1 with the default keys, and with another schedule named: valid.
  Recipe r = Valid();
  EXPECT_TRUE(ValidateRecipe(r, 1).ok()) << ValidateRecipe(r, 1);
  r.parallel.pp_schedule = "gpipe";
  EXPECT_TRUE(ValidateRecipe(r, 1).ok()) << ValidateRecipe(r, 1);
}

TEST(PipelineSection, ValidateReportsEveryPipelineProblem) {
  const std::vector<ValidateCase> cases = {
      {"virtual 0", [](Recipe& r) { Pp2(r), r.parallel.pp_virtual = 0; }, 2,
       "r.yaml: parallel.pp_virtual: must be >= 1, got 0"},
      {"virtual without interleaving", [](Recipe& r) { Pp2(r), r.parallel.pp_virtual = 2; }, 2,
       "r.yaml: parallel.pp_virtual: pp_virtual(2) > 1 needs parallel.pp_schedule: "
       "interleaved_1f1b (the only schedule with virtual stages), got 1f1b"},
      {"interleaving without virtual",
       [](Recipe& r) { Pp2(r), r.parallel.pp_schedule = "interleaved_1f1b"; }, 2,
       "r.yaml: parallel.pp_schedule: interleaved_1f1b needs parallel.pp_virtual >= 2 (model "
       "chunks per stage), got 1"},
      {"virtual with pp 1",
       [](Recipe& r) { r.parallel.pp_schedule = "interleaved_1f1b", r.parallel.pp_virtual = 2; }, 1,
       "r.yaml: parallel.pp_virtual: pp_virtual(2) needs parallel.pp > 1, got pp=1"},
      {"unknown schedule", [](Recipe& r) { Pp2(r), r.parallel.pp_schedule = "1f1f"; }, 2,
       "r.yaml: parallel.pp_schedule: unknown pipeline schedule \"1f1f\"; valid: gpipe, 1f1b, "
       "interleaved_1f1b, zb_h1"},
      {"pp_layers with pp 1", [](Recipe& r) { r.parallel.pp_layers = {4}; }, 1,
       "r.yaml: parallel.pp_layers: [4] is set but parallel.pp is 1 (it splits layers over "
       "pipeline stages)"},
      {"pp_layers length",
       [](Recipe& r) {
         r.parallel.pp = 4, r.parallel.pp_layers = {7, 8, 8};
       },
       4, "r.yaml: parallel.pp_layers: [7, 8, 8] has 3 entries, pp(4) x pp_virtual(1) = 4 needed"},
      {"pp_layers length interleaved",
       [](Recipe& r) {
         Pp2(r), r.parallel.pp_schedule = "interleaved_1f1b", r.parallel.pp_virtual = 2;
         r.parallel.pp_layers = {4, 4};
       },
       2, "r.yaml: parallel.pp_layers: [4, 4] has 2 entries, pp(2) x pp_virtual(2) = 4 needed"},
      {"pp_layers zero",
       [](Recipe& r) {
         Pp2(r), r.parallel.pp_layers = {0, 8};
       },
       2, "r.yaml: parallel.pp_layers[0]: must be >= 1 (every virtual stage holds a layer), got 0"},
      {"pp_layers negative",
       [](Recipe& r) {
         Pp2(r), r.parallel.pp_layers = {8, -2};
       },
       2,
       "r.yaml: parallel.pp_layers[1]: must be >= 1 (every virtual stage holds a layer), got -2"},
      {"1f1b fewer micro-batches than stages",
       [](Recipe& r) { r.parallel.pp = 4, r.batch.global_batch = 2; }, 4,
       "r.yaml: parallel.pp_schedule: pipeline schedule 1f1b needs at least as many "
       "micro-batches per step (batch.global_batch / (batch.micro_batch x dp)) as stages: 2 < "
       "parallel.pp (4); fewer leave a stage with nothing to overlap (batch.global_batch(2) / "
       "(batch.micro_batch(1) x dp(1)) = 2 micro-batches)"},
      {"zb_h1 fewer micro-batches than stages",
       [](Recipe& r) {
         Pp2(r), r.parallel.dp = 2, r.parallel.pp_schedule = "zb_h1";
         r.batch.global_batch = 4, r.batch.micro_batch = 2;
       },
       4,
       "r.yaml: parallel.pp_schedule: pipeline schedule zb_h1 needs at least as many "
       "micro-batches per step (batch.global_batch / (batch.micro_batch x dp)) as stages: 1 < "
       "parallel.pp (2); fewer leave a stage with nothing to overlap (batch.global_batch(4) / "
       "(batch.micro_batch(2) x dp(2)) = 1 micro-batches)"},
      {"interleaved fewer micro-batches than stages",
       [](Recipe& r) {
         r.parallel.pp = 4, r.parallel.pp_schedule = "interleaved_1f1b";
         r.parallel.pp_virtual = 2, r.batch.global_batch = 2;
       },
       4,
       "r.yaml: parallel.pp_schedule: pipeline schedule interleaved_1f1b needs at least as many "
       "micro-batches per step (batch.global_batch / (batch.micro_batch x dp)) as stages: 2 < "
       "parallel.pp (4); fewer leave a stage with nothing to overlap (batch.global_batch(2) / "
       "(batch.micro_batch(1) x dp(1)) = 2 micro-batches)"},
      {"interleaved micro-batches not a multiple of pp",
       [](Recipe& r) {
         Pp2(r), r.parallel.pp_schedule = "interleaved_1f1b", r.parallel.pp_virtual = 2;
         r.batch.global_batch = 3;
       },
       2,
       "r.yaml: parallel.pp_schedule: pipeline schedule interleaved_1f1b runs the micro-batches "
       "per step (batch.global_batch / (batch.micro_batch x dp)) in groups of parallel.pp: 3 % 2 "
       "= 1, must be 0 (batch.global_batch(3) / (batch.micro_batch(1) x dp(1)) = 3 "
       "micro-batches)"},
  };
  for (const ValidateCase& c : cases) {
    SCOPED_TRACE(c.name);
    Recipe r = Valid();
    c.mutate(r);
    const absl::Status status = ValidateRecipe(r, c.world_size);
    ASSERT_FALSE(status.ok());
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    // Whole lines: the problem is reported exactly once, as written.
    const std::vector<std::string> lines = Lines(status);
    EXPECT_EQ(std::count(lines.begin(), lines.end(), c.error), 1) << status.message();
    // Nothing else.
    for (const std::string& line : lines) EXPECT_EQ(line, c.error);
  }
}

TEST(PipelineSection, ValidateCollectsSeveralPipelineProblems) {
  Recipe r = Valid();
  r.parallel.pp = 2;
  r.parallel.pp_virtual = 2;         // without interleaving
  r.parallel.pp_layers = {8, 0, 8};  // wrong length and a zero
  const std::vector<std::string> lines = Lines(ValidateRecipe(r, 2));
  const std::string all = absl::StrJoin(lines, "\n");
  EXPECT_CONTAINS(all, "parallel.pp_virtual: pp_virtual(2) > 1 needs");
  EXPECT_CONTAINS(all, "parallel.pp_layers: [8, 0, 8] has 3 entries");
  EXPECT_CONTAINS(all, "parallel.pp_layers[1]: must be >= 1");
  EXPECT_EQ(lines.size(), 3u) << all;
}

struct ModelCase {
  std::string name;
  std::function<void(Recipe&)> mutate;
  int64_t num_layers;
  std::string error;  // "" = OK; else the whole message
};

TEST(PipelineSection, ModelLayersSplitIntoTheStages) {
  const std::vector<ModelCase> cases = {
      {"pp 1 any layers", [](Recipe&) {}, 7, ""},
      {"even", [](Recipe& r) { r.parallel.pp = 4; }, 32, ""},
      {"explicit",
       [](Recipe& r) {
         r.parallel.pp = 4, r.parallel.pp_layers = {7, 8, 8, 9};
       },
       32, ""},
      {"interleaved",
       [](Recipe& r) {
         r.parallel.pp = 2, r.parallel.pp_virtual = 2;
         r.parallel.pp_schedule = "interleaved_1f1b";
       },
       8, ""},
      {"not divisible", [](Recipe& r) { r.parallel.pp = 4; }, 30,
       "r.yaml: parallel.pp=4: num_hidden_layers 30 of model/config.json: parallel.pp: 30 layers "
       "are not divisible by pp(4) (30 % 4 = 2); set parallel.pp_layers to split them "
       "unevenly"},
      {"not divisible by virtual stages",
       [](Recipe& r) {
         r.parallel.pp = 2, r.parallel.pp_virtual = 2;
         r.parallel.pp_schedule = "interleaved_1f1b";
       },
       10,
       "r.yaml: parallel.pp=2: num_hidden_layers 10 of model/config.json: parallel.pp_virtual: "
       "10 layers are not divisible by pp(2) x pp_virtual(2) = 4 (10 % 4 = 2); set "
       "parallel.pp_layers to split them unevenly"},
      {"wrong sum",
       [](Recipe& r) {
         r.parallel.pp = 4, r.parallel.pp_layers = {7, 8, 8, 8};
       },
       32,
       "r.yaml: parallel.pp=4: num_hidden_layers 32 of model/config.json: parallel.pp_layers: "
       "[7, 8, 8, 8] sums to 7 + 8 + 8 + 8 = 31, but the model has 32 layers"},
  };
  for (const ModelCase& c : cases) {
    SCOPED_TRACE(c.name);
    Recipe r = Valid();
    c.mutate(r);
    const absl::Status status = ValidateParallelForModel(r, 4, 4, 16, 32, c.num_layers);
    if (c.error.empty()) {
      EXPECT_TRUE(status.ok()) << status;
    } else {
      EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(status.message(), c.error);
    }
  }
}

TEST(PipelineSection, ModelProblemsOfTpAndPpAreBothReported) {
  Recipe r = Valid();
  r.model = {"", "cfg/tiny.json", ""};
  r.parallel.tp = 2;
  r.parallel.pp = 2;
  const absl::Status status = ValidateParallelForModel(r, 3, 2, 8, 8, 5);
  const std::vector<std::string> lines = Lines(status);
  ASSERT_EQ(lines.size(), 2u) << status;
  EXPECT_CONTAINS(lines[0], "r.yaml: parallel.pp=2: num_hidden_layers 5 of cfg/tiny.json:");
  EXPECT_CONTAINS(lines[1], "r.yaml: parallel.tp=2: num_attention_heads 3 of cfg/tiny.json");
}

}  // namespace
}  // namespace fulcrum::recipe
