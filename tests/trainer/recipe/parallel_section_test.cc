// The parallel section: parsing of sequence_parallel, zero, bucket_mb and
// comm_timeout_s, their YAML round trip, ValidateRecipe's parallel checks,
// RecipeWarnings and ValidateParallelForModel. Table-driven.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
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

TEST(ParallelSection, DefaultsOfTheNewKeys) {
  absl::StatusOr<Recipe> r = ParseRecipe(kMinimal, "p.yaml");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->parallel.sequence_parallel);
  EXPECT_EQ(r->parallel.zero, 0);
  EXPECT_EQ(r->parallel.bucket_mb, 25.0);
  EXPECT_EQ(r->parallel.comm_timeout_s, 60.0);
}

struct ParseCase {
  std::vector<std::string> overrides;
  std::function<void(const ParallelSection&)> check;  // when parsing succeeds
  std::string error;                                  // else a part of the error
};

TEST(ParallelSection, ParsesTheNewKeysWithStrictTypes) {
  const std::vector<ParseCase> cases = {
      {{"parallel.sequence_parallel=true"},
       [](const ParallelSection& p) { EXPECT_TRUE(p.sequence_parallel); },
       ""},
      {{"parallel.zero=1"}, [](const ParallelSection& p) { EXPECT_EQ(p.zero, 1); }, ""},
      {{"parallel.bucket_mb=0.5"},
       [](const ParallelSection& p) { EXPECT_EQ(p.bucket_mb, 0.5); },
       ""},
      {{"parallel.bucket_mb=40"},
       [](const ParallelSection& p) { EXPECT_EQ(p.bucket_mb, 40.0); },
       ""},
      {{"parallel.comm_timeout_s=30"},
       [](const ParallelSection& p) { EXPECT_EQ(p.comm_timeout_s, 30.0); },
       ""},
      {{"parallel={tp: 2, sequence_parallel: true, zero: 1, bucket_mb: 8, comm_timeout_s: 5}"},
       [](const ParallelSection& p) {
         EXPECT_EQ(p.tp, 2);
         EXPECT_TRUE(p.sequence_parallel);
         EXPECT_EQ(p.zero, 1);
         EXPECT_EQ(p.bucket_mb, 8.0);
         EXPECT_EQ(p.comm_timeout_s, 5.0);
       },
       ""},
      {{"parallel.sequence_parallel=yes"},
       nullptr,
       "parallel.sequence_parallel: expected true or false, got \"yes\""},
      {{"parallel.sequence_parallel=1"},
       nullptr,
       "parallel.sequence_parallel: expected true or false, got 1"},
      {{"parallel.zero=1.5"}, nullptr, "parallel.zero: expected an integer, got 1.5"},
      {{"parallel.zero=true"}, nullptr, "parallel.zero: expected an integer"},
      {{"parallel.bucket_mb=big"}, nullptr, "parallel.bucket_mb: expected a number, got \"big\""},
      {{"parallel.comm_timeout_s=[1]"},
       nullptr,
       "parallel.comm_timeout_s: expected a number, got a list"},
      {{"parallel.zero_stage=1"}, nullptr, "unknown key parallel.zero_stage"},
      {{"parallel.bucket_md=1"}, nullptr, "did you mean parallel.bucket_mb?"},
  };
  for (const ParseCase& c : cases) {
    SCOPED_TRACE(c.overrides.front());
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

TEST(ParallelSection, RoundTripsThroughYaml) {
  // dp, tp, pp, ep, sequence_parallel, zero, bucket_mb, comm_timeout_s.
  auto make = [](int64_t dp, int64_t tp, int64_t pp, int64_t ep, bool sp, int64_t zero,
                 double bucket_mb, double timeout) {
    ParallelSection p;
    p.dp = dp, p.tp = tp, p.pp = pp, p.ep = ep, p.sequence_parallel = sp, p.zero = zero;
    p.bucket_mb = bucket_mb, p.comm_timeout_s = timeout;
    return p;
  };
  const std::vector<ParallelSection> sections = {
      {},
      make(2, 4, 1, 1, true, 1, 0.25, 60.0),
      make(1, 2, 1, 1, false, 0, 100.0, 1e-3),
      make(8, 8, 2, 4, true, 1, 1.0 / 3.0, 7200.5),
  };
  for (const ParallelSection& in : sections) {
    Recipe r = Valid();
    r.parallel = in;
    const std::string yaml = RecipeToYaml(r);
    EXPECT_CONTAINS(yaml, "sequence_parallel: ");
    absl::StatusOr<Recipe> out = ParseRecipe(yaml, "r.yaml");
    ASSERT_TRUE(out.ok()) << out.status() << "\n" << yaml;
    const ParallelSection& p = out->parallel;
    EXPECT_EQ(p.dp, in.dp);
    EXPECT_EQ(p.tp, in.tp);
    EXPECT_EQ(p.pp, in.pp);
    EXPECT_EQ(p.ep, in.ep);
    EXPECT_EQ(p.sequence_parallel, in.sequence_parallel) << yaml;
    EXPECT_EQ(p.zero, in.zero) << yaml;
    EXPECT_EQ(p.bucket_mb, in.bucket_mb) << yaml;  // exact: shortest round-trip decimal
    EXPECT_EQ(p.comm_timeout_s, in.comm_timeout_s) << yaml;
    EXPECT_EQ(RecipeToYaml(*out), yaml);
  }
}

struct ValidateCase {
  std::string name;
  std::function<void(Recipe&)> mutate;
  int world_size;
  std::string error;  // "" = valid; else the whole line that must appear
};

TEST(ParallelSection, ValidateChecksEveryParallelOption) {
  const std::vector<ValidateCase> cases = {
      {"tp2", [](Recipe& r) { r.parallel.tp = 2; }, 2, ""},
      {"tp2 dp2", [](Recipe& r) { r.parallel.tp = r.parallel.dp = 2; }, 4, ""},
      {"tp2 sp", [](Recipe& r) { r.parallel.tp = 2, r.parallel.sequence_parallel = true; }, 2, ""},
      {"sp needs tp", [](Recipe& r) { r.parallel.sequence_parallel = true; }, 1,
       "r.yaml: parallel.sequence_parallel: needs parallel.tp > 1 (it shards the sequence over "
       "the tp ranks), got tp=1"},
      {"sp seq_len",
       [](Recipe& r) {
         r.parallel.tp = 4, r.parallel.sequence_parallel = true;
         r.batch.seq_len = 10;
       },
       4,
       "r.yaml: parallel.sequence_parallel: batch.seq_len(10) is not divisible by tp(4): "
       "10 % 4 = 2"},
      {"seq_len without sp", [](Recipe& r) { r.parallel.tp = 4, r.batch.seq_len = 10; }, 4, ""},
      {"zero 1 dp 2", [](Recipe& r) { r.parallel.zero = 1, r.parallel.dp = 2; }, 2, ""},
      {"zero 1 dp 1 is a warning", [](Recipe& r) { r.parallel.zero = 1; }, 1, ""},
      {"zero 2", [](Recipe& r) { r.parallel.zero = 2; }, 1,
       "r.yaml: parallel.zero: expected 0 (off) or 1 (ZeRO-1: optimizer state sharded over dp), "
       "got 2"},
      {"zero -1", [](Recipe& r) { r.parallel.zero = -1; }, 1,
       "r.yaml: parallel.zero: expected 0 (off) or 1 (ZeRO-1: optimizer state sharded over dp), "
       "got -1"},
      {"bucket 0", [](Recipe& r) { r.parallel.bucket_mb = 0; }, 1,
       "r.yaml: parallel.bucket_mb: must be > 0, got 0"},
      {"bucket negative", [](Recipe& r) { r.parallel.bucket_mb = -2.5; }, 1,
       "r.yaml: parallel.bucket_mb: must be > 0, got -2.5"},
      {"timeout 0", [](Recipe& r) { r.parallel.comm_timeout_s = 0; }, 1,
       "r.yaml: parallel.comm_timeout_s: must be > 0, got 0"},
      {"ep 2 of dp 2", [](Recipe& r) { r.parallel.ep = 2, r.parallel.dp = 2; }, 2, ""},
      {"ep 2 of dp 3",
       [](Recipe& r) {
         r.parallel.ep = 2, r.parallel.dp = 3;
         r.batch.global_batch = 6;
       },
       3,
       "r.yaml: parallel.ep: ep(2) must divide dp(3): the expert-parallel ranks are data-parallel "
       "ranks"},
      {"world", [](Recipe& r) { r.parallel.tp = r.parallel.dp = 2; }, 2,
       "r.yaml: parallel: dp(2) x tp(2) x pp(1) = 4 != world size 2"},
      {"global batch",
       [](Recipe& r) {
         r.parallel.tp = r.parallel.dp = 2;
         r.batch.micro_batch = 3;
       },
       4,
       "r.yaml: batch.global_batch: global_batch(8) is not a multiple of micro_batch(3) x dp(2) "
       "= 6"},
  };
  for (const ValidateCase& c : cases) {
    SCOPED_TRACE(c.name);
    Recipe r = Valid();
    c.mutate(r);
    const absl::Status status = ValidateRecipe(r, c.world_size);
    if (c.error.empty()) {
      EXPECT_TRUE(status.ok()) << status;
    } else {
      ASSERT_FALSE(status.ok());
      EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
      // Whole lines: the problem is reported exactly once, as written.
      std::vector<std::string> lines = absl::StrSplit(status.message(), '\n');
      EXPECT_EQ(std::count(lines.begin(), lines.end(), c.error), 1) << status.message();
    }
  }
}

TEST(ParallelSection, ZeroWithOneDpRankIsAWarning) {
  Recipe r = Valid();
  EXPECT_TRUE(RecipeWarnings(r).empty());
  r.parallel.zero = 1;
  const std::vector<std::string> warnings = RecipeWarnings(r);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_EQ(warnings[0],
            "r.yaml: parallel.zero: zero=1 with dp=1 has no effect (there is no other dp rank to "
            "shard the optimizer state with)");
  r.parallel.dp = 2;
  EXPECT_TRUE(RecipeWarnings(r).empty());
}

struct ModelCase {
  std::string name;
  int64_t tp, heads, kv_heads, intermediate, vocab;
  std::vector<std::string> errors;  // empty = valid; else every one is a line
};

TEST(ParallelSection, ModelDivisibilityByTp) {
  const std::string kTp3 = "r.yaml: parallel.tp=3: ";
  const std::vector<ModelCase> cases = {
      {"tp1 anything", 1, 5, 3, 7, 11, {}},
      {"tp2", 2, 4, 2, 64, 128, {}},
      {"tp4 replicates kv", 4, 8, 2, 64, 128, {}},
      {"tp4 one kv head", 4, 8, 1, 64, 128, {}},
      {"tp2 splits kv heads", 2, 8, 8, 64, 128, {}},
      {"heads",
       3,
       4,
       1,
       6,
       9,
       {kTp3 + "num_attention_heads 4 of model/config.json is not divisible by 3 (4 % 3 = 1)"}},
      {"ffn",
       3,
       6,
       3,
       10,
       9,
       {kTp3 + "intermediate_size 10 of model/config.json is not divisible by 3 (10 % 3 = 1)"}},
      {"vocab",
       3,
       6,
       3,
       9,
       32000,
       {kTp3 + "vocab_size 32000 of model/config.json is not divisible by 3 (32000 % 3 = 2)"}},
      {"kv",
       4,
       8,
       6,
       64,
       128,
       {"r.yaml: parallel.tp=4: num_key_value_heads 6 of model/config.json is neither divisible "
        "by 4 (6 % 4 = 2) nor divides it (kv heads are replicated only when tp is a multiple of "
        "them)"}},
      {"all at once",
       3,
       4,
       2,
       10,
       32000,
       {kTp3 + "num_attention_heads 4 of", kTp3 + "intermediate_size 10 of",
        kTp3 + "vocab_size 32000 of", kTp3 + "num_key_value_heads 2 of"}},
  };
  for (const ModelCase& c : cases) {
    SCOPED_TRACE(c.name);
    Recipe r = Valid();
    r.parallel.tp = c.tp;
    const absl::Status status =
        ValidateParallelForModel(r, c.heads, c.kv_heads, c.intermediate, c.vocab, 4);
    if (c.errors.empty()) {
      EXPECT_TRUE(status.ok()) << status;
      continue;
    }
    ASSERT_FALSE(status.ok());
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    const std::vector<std::string> lines = absl::StrSplit(status.message(), '\n');
    EXPECT_EQ(lines.size(), c.errors.size()) << status.message();
    for (const std::string& error : c.errors) EXPECT_CONTAINS(std::string(status.message()), error);
  }
}

TEST(ParallelSection, ModelErrorsNameTheConfigOfARandomInit) {
  Recipe r = Valid();
  r.model = {"", "cfg/tiny.json", ""};
  r.parallel.tp = 2;
  const absl::Status status = ValidateParallelForModel(r, 3, 3, 8, 8, 4);
  EXPECT_EQ(status.message(),
            "r.yaml: parallel.tp=2: num_attention_heads 3 of cfg/tiny.json is not divisible by 2 "
            "(3 % 2 = 1)\n"
            "r.yaml: parallel.tp=2: num_key_value_heads 3 of cfg/tiny.json is neither divisible "
            "by 2 (3 % 2 = 1) nor divides it (kv heads are replicated only when tp is a multiple "
            "of them)");
}

}  // namespace
}  // namespace fulcrum::recipe
