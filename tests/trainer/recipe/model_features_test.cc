// model.mtp_layers (parsing, YAML round trip, ValidateRecipe) and
// ValidateRecipeForModel: multi-token-prediction layers need an explicit
// choice; mixture-of-experts / latent-attention families refuse tp for now
// (and split into pipeline stages like any model); expert parallelism needs routed experts that
// split evenly; the dense checks still apply to dense models.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "trainer/models/model_config.h"
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

models::ModelConfig Dense() {
  models::ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.intermediate_size = 16;
  c.vocab_size = 64;
  c.num_layers = 4;
  return c;
}

models::ModelConfig DeepseekV3() {
  models::ModelConfig c = Dense();
  c.architecture = "DeepseekV3ForCausalLM";
  c.num_kv_heads = 4;
  c.moe.num_experts = 8;
  c.mla.kv_lora_rank = 16;
  c.num_mtp_layers = 1;
  return c;
}

TEST(ModelFeatures, MtpLayersKeyParsesAndRoundTrips) {
  absl::StatusOr<Recipe> unset = ParseRecipe(kMinimal, "p.yaml");
  ASSERT_TRUE(unset.ok()) << unset.status();
  EXPECT_EQ(unset->model.mtp_layers, "");
  absl::StatusOr<Recipe> skip =
      ParseRecipe("model: {path: m, mtp_layers: skip}\ndata: {path: d.jsonl}\n", "p.yaml");
  ASSERT_TRUE(skip.ok()) << skip.status();
  EXPECT_EQ(skip->model.mtp_layers, "skip");
  absl::StatusOr<Recipe> again = ParseRecipe(RecipeToYaml(*skip), "again.yaml");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->model.mtp_layers, "skip");
  absl::StatusOr<Recipe> typo =
      ParseRecipe("model: {path: m, mtp_layer: skip}\ndata: {path: d.jsonl}\n", "p.yaml");
  ASSERT_FALSE(typo.ok());
  EXPECT_CONTAINS(std::string(typo.status().message()), "mtp_layers");  // did you mean
}

TEST(ModelFeatures, ValidateRecipeChecksTheMtpValue) {
  Recipe r = Valid();
  r.model.mtp_layers = "drop";
  const absl::Status status = ValidateRecipe(r, 1);
  ASSERT_FALSE(status.ok());
  EXPECT_CONTAINS(std::string(status.message()), "model.mtp_layers");
  EXPECT_CONTAINS(std::string(status.message()), "skip | load");
  r.model.mtp_layers = "skip";
  EXPECT_TRUE(ValidateRecipe(r, 1).ok());
}

TEST(ModelFeatures, MtpLayersNeedAnExplicitChoice) {
  Recipe r = Valid();
  absl::Status status = ValidateRecipeForModel(r, DeepseekV3());
  ASSERT_FALSE(status.ok());
  EXPECT_CONTAINS(std::string(status.message()), "r.yaml: model.mtp_layers");
  EXPECT_CONTAINS(std::string(status.message()), "model/config.json");
  EXPECT_CONTAINS(std::string(status.message()), "num_nextn_predict_layers=1");
  r.model.mtp_layers = "load";
  status = ValidateRecipeForModel(r, DeepseekV3());
  ASSERT_FALSE(status.ok());
  EXPECT_CONTAINS(std::string(status.message()),
                  "not supported yet: model.mtp_layers=load (multi-token prediction training)");
  r.model.mtp_layers = "skip";
  EXPECT_TRUE(ValidateRecipeForModel(r, DeepseekV3()).ok());
}

TEST(ModelFeatures, MoeAndMlaRefuseTpButSplitIntoPipelineStages) {
  Recipe r = Valid();
  r.model.mtp_layers = "skip";
  r.parallel.tp = 2;
  r.parallel.pp = 2;
  const absl::Status status = ValidateRecipeForModel(r, DeepseekV3());
  ASSERT_FALSE(status.ok());
  const std::string message(status.message());
  const std::vector<std::string> lines = absl::StrSplit(message, '\n');
  EXPECT_EQ(lines.size(), 1u) << message;
  EXPECT_CONTAINS(message,
                  "r.yaml: parallel.tp: not supported yet: parallel.tp with DeepseekV3ForCausalLM "
                  "(mixture of experts / latent attention)");
  r.parallel.tp = 1;
  EXPECT_TRUE(ValidateRecipeForModel(r, DeepseekV3()).ok());
  r.parallel.pp = 3;  // 4 layers do not split into 3 stages
  const absl::Status layers = ValidateRecipeForModel(r, DeepseekV3());
  ASSERT_FALSE(layers.ok());
  EXPECT_CONTAINS(std::string(layers.message()), "r.yaml: parallel.pp=3");
  r.parallel.pp = 2;
  r.parallel.tp = 2;
  models::ModelConfig mixtral = Dense();
  mixtral.architecture = "MixtralForCausalLM";
  mixtral.moe.num_experts = 8;
  r.parallel.pp = 1;
  const absl::Status moe_only = ValidateRecipeForModel(r, mixtral);
  ASSERT_FALSE(moe_only.ok());
  EXPECT_CONTAINS(std::string(moe_only.message()),
                  "parallel.tp with MixtralForCausalLM (mixture of experts)");
}

TEST(ModelFeatures, ExpertParallelismNeedsExpertsThatSplitEvenly) {
  Recipe r = Valid();
  r.model.mtp_layers = "skip";
  r.parallel.dp = 4;
  r.parallel.ep = 4;
  EXPECT_TRUE(ValidateRecipeForModel(r, DeepseekV3()).ok())
      << ValidateRecipeForModel(r, DeepseekV3());
  models::ModelConfig six = DeepseekV3();
  six.moe.num_experts = 6;
  absl::Status status = ValidateRecipeForModel(r, six);
  ASSERT_FALSE(status.ok());
  EXPECT_CONTAINS(std::string(status.message()),
                  "r.yaml: parallel.ep: the 6 routed experts (model/config.json) do not split "
                  "evenly over parallel.ep=4");
  r.parallel.ep = 2;
  EXPECT_TRUE(ValidateRecipeForModel(r, six).ok());
  status = ValidateRecipeForModel(r, Dense());
  ASSERT_FALSE(status.ok());
  EXPECT_CONTAINS(std::string(status.message()),
                  "r.yaml: parallel.ep: parallel.ep=2 needs a mixture-of-experts model; "
                  "LlamaForCausalLM (model/config.json) has no routed experts");
}

TEST(ModelFeatures, DenseModelsKeepTheDivisibilityChecks) {
  Recipe r = Valid();
  r.parallel.tp = 2;
  EXPECT_TRUE(ValidateRecipeForModel(r, Dense()).ok());
  r.parallel.tp = 3;
  const absl::Status status = ValidateRecipeForModel(r, Dense());
  ASSERT_FALSE(status.ok());
  EXPECT_CONTAINS(std::string(status.message()), "num_attention_heads 4 of model/config.json");
  r.parallel.tp = 1;
  r.parallel.pp = 3;  // 4 layers do not split into 3 stages
  EXPECT_FALSE(ValidateRecipeForModel(r, Dense()).ok());
}

}  // namespace
}  // namespace fulcrum::recipe
