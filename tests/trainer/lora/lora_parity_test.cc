// HF parity of LoRA on the fixtures written by transformers + peft: a PEFT
// adapter loaded with LoadPeftAdapter gives peft's logits, loss and adapter
// grads; MergeLora gives merge_and_unload's logits; 5 steps of fulcrum's AdamW
// give peft's loss curve. See ../shared/fixtures/README.md.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "core/file_util.h"
#include "tests/test_support.h"
#include "trainer/checkpoint/hf_weights.h"
#include "trainer/checkpoint/safetensors_reader.h"
#include "trainer/lora/peft_adapter.h"
#include "trainer/models/causal_lm.h"
#include "trainer/models/hf_loading.h"
#include "trainer/models/loss.h"
#include "trainer/models/model_config.h"
#include "trainer/optim/adamw.h"

namespace fulcrum::lora {
namespace {

class LoraParityTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = fulcrum::testing::FixturesDir() + "/" + GetParam();
    auto expected = checkpoint::SafetensorsReader::Open(dir_ + "/expected.safetensors");
    ASSERT_TRUE(expected.ok()) << expected.status();
    expected_ = *expected;
    inputs_.input_ids = Expected("input_ids");
    inputs_.attention_mask = Expected("attention_mask");
    labels_ = Expected("labels");
  }

  torch::Tensor Expected(const std::string& name) {
    auto t = expected_->View(name);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? t->clone() : torch::Tensor();
  }

  // The fixture's base model with its PEFT adapter attached.
  models::CausalLM LoadModel() {
    auto config = models::LoadModelConfig(dir_ + "/model/config.json");
    EXPECT_TRUE(config.ok()) << config.status();
    models::CausalLM model(*config, torch::TensorOptions().dtype(torch::kFloat));
    auto weights = checkpoint::HfWeights::Open(dir_ + "/model");
    EXPECT_TRUE(weights.ok()) << weights.status();
    if (weights.ok()) {
      absl::Status status = models::LoadHfWeights(*model, *weights);
      EXPECT_TRUE(status.ok()) << status;
    }
    auto options = LoadPeftAdapter(*model, dir_ + "/lora");
    EXPECT_TRUE(options.ok()) << options.status();
    if (options.ok()) {
      std::vector<std::string> targets = options->targets;
      std::sort(targets.begin(), targets.end());
      EXPECT_EQ(targets, AdapterConfigTargets());
      EXPECT_EQ(options->spec.rank, 4);
    }
    return model;
  }

  // target_modules of the fixture's adapter_config.json, sorted.
  std::vector<std::string> AdapterConfigTargets() {
    auto text = ReadFileToString(dir_ + "/lora/adapter_config.json");
    EXPECT_TRUE(text.ok()) << text.status();
    if (!text.ok()) return {};
    auto targets =
        nlohmann::json::parse(*text).at("target_modules").get<std::vector<std::string>>();
    std::sort(targets.begin(), targets.end());
    return targets;
  }

  // The number of adapter matrices the fixture has gradients for (2 per module).
  int64_t ExpectedAdapterTensors() {
    int64_t count = 0;
    for (const std::string& name : expected_->Names())
      count += absl::StartsWith(name, "lora_grad.");
    return count;
  }

  // |got - ref| <= 1e-4 + 1e-4 |ref| where attention_mask == 1.
  void ExpectLogitsNear(const torch::Tensor& got, const std::string& ref_name) {
    torch::Tensor ref = Expected(ref_name);
    ASSERT_EQ(got.sizes(), ref.sizes()) << ref_name;
    torch::Tensor valid = inputs_.attention_mask.to(torch::kBool);
    torch::Tensor g = got.detach().index({valid});  // [n_valid, V]
    torch::Tensor r = ref.index({valid});
    torch::Tensor excess = (g - r).abs() - (1e-4 + 1e-4 * r.abs());
    EXPECT_LE(excess.max().item<float>(), 0.0f)
        << ref_name << ": max |diff| " << (g - r).abs().max().item<float>();
  }

  std::string dir_;
  std::shared_ptr<checkpoint::SafetensorsReader> expected_;
  models::ForwardInputs inputs_;
  torch::Tensor labels_;
};

TEST_P(LoraParityTest, LogitsLossAndGrads) {
  models::CausalLM model = LoadModel();
  torch::Tensor logits = model->forward(inputs_);
  ExpectLogitsNear(logits, "lora_logits");
  torch::Tensor loss = models::CausalLmLoss(logits, labels_);
  EXPECT_NEAR(loss.item<float>(), Expected("lora_loss").item<float>(), 1e-5);
  loss.backward();
  int64_t checked = 0;
  for (const auto& nt : AdapterStateDict(*model)) {
    torch::Tensor ref = Expected("lora_grad." + nt.name);
    ASSERT_TRUE(ref.defined()) << nt.name;
    // AdapterStateDict detaches: take the grad from the parameter itself.
    torch::Tensor grad;
    for (const auto& p : model->named_parameters()) {
      if ("base_model.model." + p.key() == nt.name) grad = p.value().grad();
    }
    ASSERT_TRUE(grad.defined()) << nt.name;
    const float tol = 1e-8f + 1e-4f * ref.abs().max().item<float>();
    EXPECT_LE((grad - ref).abs().max().item<float>(), tol) << nt.name;
    ++checked;
  }
  EXPECT_EQ(checked, ExpectedAdapterTensors());
  // The base stays frozen.
  for (const auto& p : model->named_parameters()) {
    if (p.key().find("lora_") == std::string::npos) {
      EXPECT_FALSE(p.value().grad().defined()) << p.key();
    }
  }
}

TEST_P(LoraParityTest, MergedLogits) {
  models::CausalLM model = LoadModel();
  MergeLora(*model);
  torch::NoGradGuard no_grad;
  ExpectLogitsNear(model->forward(inputs_), "lora_merged_logits");
}

TEST_P(LoraParityTest, AdamWLossCurve) {
  models::CausalLM model = LoadModel();
  // The fixture decays every parameter (no norm/bias exclusion).
  optim::AdamW opt(optim::TrainableParameters(*model, /*decay_norms_and_biases=*/true),
                   optim::AdamWOptions{0.9, 0.95, 1e-8, 0.1});
  EXPECT_EQ(static_cast<int64_t>(opt.parameters().size()), ExpectedAdapterTensors());
  torch::Tensor ref = Expected("lora_adamw_losses");  // [6]
  for (int step = 0; step <= 5; ++step) {
    torch::Tensor loss = models::CausalLmLoss(model->forward(inputs_), labels_);
    EXPECT_NEAR(loss.item<float>(), ref[step].item<float>(), 1e-4) << "step " << step;
    if (step == 5) break;
    loss.backward();
    opt.Step(1e-3, 1.0f);
    opt.ZeroGrad();
  }
  // Looser than before training (meta.json adamw_final_logits: 5e-3 + 1e-3 |ref|).
  torch::NoGradGuard no_grad;
  torch::Tensor valid = inputs_.attention_mask.to(torch::kBool);
  torch::Tensor got = model->forward(inputs_).index({valid});
  torch::Tensor want = Expected("lora_adamw_final_logits").index({valid});
  EXPECT_LE(((got - want).abs() - (5e-3 + 1e-3 * want.abs())).max().item<float>(), 0.0f);
}

INSTANTIATE_TEST_SUITE_P(Families, LoraParityTest,
                         ::testing::Values("llama", "llama_tied", "qwen2", "mixtral",
                                           "deepseek_v2"));

}  // namespace
}  // namespace fulcrum::lora
