#include "trainer/lora/peft_adapter.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "tests/test_support.h"
#include "tests/trainer/lora/lora_test_model.h"
#include "trainer/checkpoint/safetensors_reader.h"

namespace fulcrum::lora {
namespace {

using fulcrum::testing::ReadFile;
using fulcrum::testing::ScratchDir;
using fulcrum::testing::WriteFile;
using testing::TinyModel;

LoraOptions Options(std::vector<std::string> targets) {
  LoraOptions o;
  o.spec.rank = 2;
  o.spec.alpha = 3.0;
  o.targets = std::move(targets);
  return o;
}

// A model with adapters on q_proj/v_proj, non-zero B, saved to a fresh dir.
std::string SavedAdapter(TinyModel& model) {
  EXPECT_TRUE(ApplyLora(model, Options({"v_proj", "q_proj"})).ok());
  torch::NoGradGuard no_grad;
  for (const LoraLayer& l : LoraLayers(model)) {
    if (l.layer->has_adapter()) l.layer->lora_b().normal_(0, 0.3);
  }
  const std::string dir = ScratchDir() + "/adapter";
  absl::Status status = WritePeftAdapter(model, Options({"v_proj", "q_proj"}), "../model", dir);
  EXPECT_TRUE(status.ok()) << status;
  return dir;
}

nlohmann::json ReadConfig(const std::string& dir) {
  return nlohmann::json::parse(ReadFile(dir + "/adapter_config.json"));
}

TEST(PeftAdapterTest, AdapterStateDictUsesPeftKeys) {
  TinyModel model;
  ASSERT_TRUE(ApplyLora(model, Options({"q_proj"})).ok());
  auto tensors = AdapterStateDict(model);
  ASSERT_EQ(tensors.size(), 4u);
  EXPECT_EQ(tensors[0].name, "base_model.model.layers.0.q_proj.lora_A.weight");
  EXPECT_EQ(tensors[1].name, "base_model.model.layers.0.q_proj.lora_B.weight");
  EXPECT_EQ(tensors[3].name, "base_model.model.layers.1.q_proj.lora_B.weight");
  EXPECT_EQ(tensors[0].tensor.sizes(), torch::IntArrayRef({2, 4}));
  EXPECT_EQ(tensors[1].tensor.sizes(), torch::IntArrayRef({6, 2}));
}

TEST(PeftAdapterTest, WritesPeftConfig) {
  TinyModel model;
  const std::string dir = SavedAdapter(model);
  nlohmann::json config = ReadConfig(dir);
  EXPECT_EQ(config["peft_type"], "LORA");
  EXPECT_EQ(config["task_type"], "CAUSAL_LM");
  EXPECT_EQ(config["r"], 2);
  EXPECT_EQ(config["lora_alpha"], 3);
  EXPECT_TRUE(config["lora_alpha"].is_number_integer());
  EXPECT_EQ(config["target_modules"], nlohmann::json({"q_proj", "v_proj"}));
  EXPECT_EQ(config["bias"], "none");
  EXPECT_EQ(config["use_rslora"], false);
  EXPECT_EQ(config["fan_in_fan_out"], false);
  EXPECT_EQ(config["inference_mode"], true);
  EXPECT_TRUE(config["modules_to_save"].is_null());
  EXPECT_EQ(config["base_model_name_or_path"], "../model");
  auto reader = checkpoint::SafetensorsReader::Open(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->Names().size(), 8u);
  EXPECT_TRUE((*reader)->Contains("base_model.model.layers.1.v_proj.lora_B.weight"));
}

TEST(PeftAdapterTest, WriteWithoutAdaptersFails) {
  TinyModel model;
  EXPECT_EQ(WritePeftAdapter(model, Options({"q_proj"}), "m", ScratchDir() + "/a").code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(PeftAdapterTest, RoundTripReproducesForward) {
  TinyModel trained;
  const std::string dir = SavedAdapter(trained);
  torch::Tensor x = torch::randn({3, 4});
  torch::Tensor want = trained.forward(x).detach();

  TinyModel fresh;  // same seed: same base weights
  EXPECT_FALSE(torch::allclose(fresh.forward(x).detach(), want));
  auto options = LoadPeftAdapter(fresh, dir);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->spec.rank, 2);
  EXPECT_DOUBLE_EQ(options->spec.alpha, 3.0);
  EXPECT_EQ(options->targets, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_TRUE(torch::equal(fresh.forward(x).detach(), want));
  EXPECT_FALSE(fresh.norm.requires_grad());
  EXPECT_TRUE(fresh.layers[1]->as<testing::TinyBlockImpl>()->v_proj->lora_a().requires_grad());
  EXPECT_FALSE(fresh.layers[1]->as<testing::TinyBlockImpl>()->up_proj->has_adapter());
}

TEST(PeftAdapterTest, LoadsRegexTargetsAndDefaultKeys) {
  TinyModel trained;
  ASSERT_TRUE(ApplyLora(trained, Options({"up_proj"})).ok());
  std::vector<checkpoint::NamedTensor> tensors;
  for (auto& t : AdapterStateDict(trained)) {
    t.tensor = t.tensor + 0.25;
    t.name.insert(t.name.size() - 7, ".default");  // "...lora_A.default.weight"
    tensors.push_back(t);
  }
  const std::string dir = ScratchDir();
  ASSERT_TRUE(checkpoint::WriteSafetensors(dir + "/adapter_model.safetensors", tensors).ok());
  WriteFile(dir + "/adapter_config.json",
            R"({"peft_type": "LORA", "r": 2, "lora_alpha": 3, "use_rslora": true,
                "target_modules": "layers\\.\\d+\\.up_proj"})");
  TinyModel fresh;
  auto options = LoadPeftAdapter(fresh, dir);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_TRUE(options->spec.rslora);
  EXPECT_EQ(options->targets, std::vector<std::string>{"up_proj"});
  auto& up = *fresh.layers[0]->as<testing::TinyBlockImpl>()->up_proj;
  ASSERT_TRUE(up.has_adapter());
  EXPECT_DOUBLE_EQ(up.scaling(), 3.0 / std::sqrt(2.0));
  EXPECT_TRUE(torch::equal(up.lora_b(), torch::full({8, 2}, 0.25f)));
}

// Writes `config` next to a valid adapter for q_proj/v_proj and loads it.
absl::Status LoadWithConfig(const std::string& config) {
  TinyModel trained;
  const std::string dir = SavedAdapter(trained);
  if (!config.empty()) WriteFile(dir + "/adapter_config.json", config);
  TinyModel fresh;
  absl::Status status = LoadPeftAdapter(fresh, dir).status();
  if (!status.ok()) {
    // Nothing attached on error.
    for (const LoraLayer& l : LoraLayers(fresh)) EXPECT_FALSE(l.layer->has_adapter()) << l.path;
  }
  return status;
}

void ExpectError(const absl::Status& status, const std::string& needle) {
  EXPECT_FALSE(status.ok());
  EXPECT_NE(std::string(status.message()).find(needle), std::string::npos) << status;
}

TEST(PeftAdapterTest, BadAdaptersNameFileAndKey) {
  ExpectError(LoadWithConfig("{not json"), "adapter_config.json: bad JSON");
  ExpectError(LoadWithConfig(R"({"lora_alpha": 3, "target_modules": ["q_proj"]})"),
              "adapter_config.json: r:");
  ExpectError(LoadWithConfig(R"({"r": 2, "lora_alpha": 3, "target_modules": ["qproj"]})"),
              "target_modules: 'qproj' matches no linear layer");
  ExpectError(LoadWithConfig(R"({"r": 2, "lora_alpha": 3, "target_modules": 7})"),
              "target_modules");
  ExpectError(LoadWithConfig(
                  R"({"r": 2, "lora_alpha": 3, "use_dora": true, "target_modules": ["q_proj"]})"),
              "use_dora");
  // r 3 in the config, tensors of rank 2.
  ExpectError(
      LoadWithConfig(R"({"r": 3, "lora_alpha": 3, "target_modules": ["q_proj", "v_proj"]})"),
      "layers.0.q_proj.lora_A.weight' has shape [2,4]");
  // A file tensor the config does not adapt.
  ExpectError(LoadWithConfig(R"({"r": 2, "lora_alpha": 3, "target_modules": ["q_proj"]})"),
              "v_proj.lora_A.weight' matches no adapted layer");
  // A config target without tensors in the file.
  ExpectError(
      LoadWithConfig(
          R"({"r": 2, "lora_alpha": 3, "target_modules": ["q_proj", "v_proj", "up_proj"]})"),
      "missing adapter tensor 'base_model.model.layers.0.up_proj.lora_A.weight'");
  ExpectError(LoadPeftAdapter(*std::make_shared<TinyModel>(), ScratchDir() + "/none").status(),
              "adapter_config.json");
}

TEST(PeftAdapterTest, LoadsPeftLibraryFixtureConfig) {
  // The fixture's config (written by `peft`) with our own tensors for a model
  // whose layers carry the fixture's names.
  const std::string fixture = fulcrum::testing::FixturesDir() + "/llama/lora/adapter_config.json";
  TinyModel trained;
  const std::string dir = SavedAdapter(trained);
  nlohmann::json config = nlohmann::json::parse(ReadFile(fixture));
  config["r"] = 2;  // fixture: r 4, alpha 8, targets [v_proj, q_proj]
  WriteFile(dir + "/adapter_config.json", config.dump());
  TinyModel fresh;
  auto options = LoadPeftAdapter(fresh, dir);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_DOUBLE_EQ(options->spec.alpha, 8.0);
  EXPECT_DOUBLE_EQ(fresh.layers[0]->as<testing::TinyBlockImpl>()->q_proj->scaling(), 4.0);
}

// The module paths of the llama fixture's attention projections:
// model.layers.{0,1}.self_attn.{q_proj [64 -> 64], v_proj [64 -> 32]}.
struct FixtureShapedModel : torch::nn::Module {
  struct Attention : torch::nn::Module {
    Attention() {
      q_proj = register_module("q_proj", LoraLinear(64, 64, false, torch::kFloat));
      v_proj = register_module("v_proj", LoraLinear(64, 32, false, torch::kFloat));
      k_proj = register_module("k_proj", LoraLinear(64, 32, false, torch::kFloat));
    }
    LoraLinear q_proj{nullptr}, v_proj{nullptr}, k_proj{nullptr};
  };
  struct Layer : torch::nn::Module {
    Layer() { self_attn = register_module("self_attn", std::make_shared<Attention>()); }
    std::shared_ptr<Attention> self_attn;
  };
  struct Stack : torch::nn::Module {
    Stack() {
      layers = register_module(
          "layers", torch::nn::ModuleList(std::make_shared<Layer>(), std::make_shared<Layer>()));
    }
    torch::nn::ModuleList layers{nullptr};
  };
  FixtureShapedModel() { model = register_module("model", std::make_shared<Stack>()); }
  std::shared_ptr<Stack> model;
};

TEST(PeftAdapterTest, LoadsPeftLibraryFixtureTensors) {
  const std::string dir = fulcrum::testing::FixturesDir() + "/llama/lora";
  FixtureShapedModel model;
  auto options = LoadPeftAdapter(model, dir);
  ASSERT_TRUE(options.ok()) << options.status();
  EXPECT_EQ(options->spec.rank, 4);
  EXPECT_DOUBLE_EQ(options->spec.alpha, 8.0);
  EXPECT_EQ(options->targets, (std::vector<std::string>{"q_proj", "v_proj"}));
  auto reader = checkpoint::SafetensorsReader::Open(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(reader.ok()) << reader.status();
  auto ours = AdapterStateDict(model);
  ASSERT_EQ(ours.size(), (*reader)->Names().size());
  for (const auto& nt : ours) {
    auto ref = (*reader)->View(nt.name);
    ASSERT_TRUE(ref.ok()) << ref.status();
    EXPECT_TRUE(torch::equal(nt.tensor, *ref)) << nt.name;
  }
  auto& attn = *model.model->layers[1]->as<FixtureShapedModel::Layer>()->self_attn;
  EXPECT_FALSE(attn.k_proj->has_adapter());
  EXPECT_DOUBLE_EQ(attn.v_proj->scaling(), 2.0);
  // Written back by fulcrum, the adapter has the same tensors.
  const std::string out = ScratchDir() + "/again";
  ASSERT_TRUE(WritePeftAdapter(model, *options, "../model", out).ok());
  auto again = checkpoint::SafetensorsReader::Open(out + "/adapter_model.safetensors");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)->Names(), (*reader)->Names());
}

}  // namespace
}  // namespace fulcrum::lora
