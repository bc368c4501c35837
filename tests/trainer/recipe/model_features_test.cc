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

// MoE and MLA models split over tp (experts and heads) and pp (whole
// layers); what tp splits must divide, experts' sizes included.
TEST(ModelFeatures, MoeAndMlaSplitOverTpAndPipelineStages) {
  Recipe r = Valid();
  r.model.mtp_layers = "skip";
  r.parallel.tp = 2;
  r.parallel.pp = 2;
  models::ModelConfig v3 = DeepseekV3();
  v3.moe.style = models::MoeStyle::kDeepSeek;
  v3.moe.expert_intermediate_size = 8;
  v3.moe.shared_intermediate_size = 16;
  v3.moe.first_k_dense_replace = 1;
  EXPECT_TRUE(ValidateRecipeForModel(r, v3).ok()) << ValidateRecipeForModel(r, v3);
  r.parallel.pp = 3;  // 4 layers do not split into 3 stages
  const absl::Status layers = ValidateRecipeForModel(r, v3);
  ASSERT_FALSE(layers.ok());
  EXPECT_CONTAINS(std::string(layers.message()), "r.yaml: parallel.pp=3");
  r.parallel.pp = 1;
  v3.moe.expert_intermediate_size = 6;
  v3.moe.shared_intermediate_size = 10;
  r.parallel.tp = 4;
  const absl::Status sizes = ValidateRecipeForModel(r, v3);
  ASSERT_FALSE(sizes.ok());
  const std::string message(sizes.message());
  EXPECT_CONTAINS(message,
                  "r.yaml: parallel.tp=4: the routed experts' intermediate size 6 of "
                  "model/config.json is not divisible by 4 (6 % 4 = 2)");
  EXPECT_CONTAINS(message, "the shared experts' intermediate size 10 of model/config.json");
  EXPECT_EQ(message.find("num_attention_heads"), std::string::npos) << message;
  // MLA has no kv heads to replicate; the dense size counts only when a
  // layer is dense.
  v3.moe.expert_intermediate_size = 8;
  v3.moe.shared_intermediate_size = 16;
  v3.num_kv_heads = 3;
  v3.intermediate_size = 6;
  const absl::Status dense = ValidateRecipeForModel(r, v3);
  ASSERT_FALSE(dense.ok());
  EXPECT_CONTAINS(std::string(dense.message()), "intermediate_size 6 of model/config.json");
  EXPECT_EQ(std::string(dense.message()).find("num_key_value_heads"), std::string::npos)
      << dense.message();
  v3.moe.first_k_dense_replace = 0;
  EXPECT_TRUE(ValidateRecipeForModel(r, v3).ok()) << ValidateRecipeForModel(r, v3);
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
