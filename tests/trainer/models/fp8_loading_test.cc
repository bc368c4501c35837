// FP8 block-scaled checkpoints: an FP8 copy of the llama fixture (every 2-D
// linear weight but embed/lm_head quantized to e4m3fn per block, scale =
// amax / 448, encoded here with round-to-nearest-even) loads dequantized
// within FP8 rounding of the original; a missing or misshapen scale is an
// error naming the tensor. Also: MTP layers are loaded or skipped only as
// HfLoadOptions says.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "tests/test_support.h"
#include "trainer/checkpoint/hf_export.h"
#include "trainer/checkpoint/hf_weights.h"
#include "trainer/models/causal_lm.h"
#include "trainer/models/hf_loading.h"
#include "trainer/models/init.h"
#include "trainer/models/model_config.h"

namespace fulcrum::models {
namespace {

// This test's own e4m3fn decoder (bias 7, 3 mantissa bits, subnormals).
float DecodeE4m3(uint8_t code) {
  const int e = (code >> 3) & 0xF, m = code & 7;
  if (e == 15 && m == 7) return std::nanf("");
  const float magnitude = e == 0 ? std::ldexp(m / 8.0f, -6) : std::ldexp(1.0f + m / 8.0f, e - 7);
  return (code & 0x80) ? -magnitude : magnitude;
}

// Round-to-nearest-even encoding of |x| <= 448 (codes 0..126 are increasing).
uint8_t EncodeE4m3(float x) {
  const float a = std::fabs(x);
  int best = 0;
  for (int c = 1; c <= 126; ++c) {
    const float d = std::fabs(DecodeE4m3(c) - a), best_d = std::fabs(DecodeE4m3(best) - a);
    if (d < best_d || (d == best_d && (c & 1) == 0)) best = c;
  }
  return static_cast<uint8_t>(best | (x < 0 ? 0x80 : 0));
}

struct RawTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

void WriteSafetensors(const std::string& path, const std::map<std::string, RawTensor>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  std::string data;
  for (const auto& [name, t] : tensors) {
    header[name] = {{"dtype", t.dtype},
                    {"shape", t.shape},
                    {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  std::string text = header.dump();
  while (text.size() % 8 != 0) text += ' ';
  const uint64_t n = text.size();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << text << data;
}

RawTensor Fp32(const torch::Tensor& t) {
  const torch::Tensor c = t.contiguous().to(torch::kFloat);
  return {"F32", c.sizes().vec(),
          std::string(static_cast<const char*>(c.data_ptr()), c.numel() * sizeof(float))};
}

struct Quantized {
  torch::Tensor codes;  // uint8 [out, in]
  torch::Tensor scale;  // fp32 [ceil(out/r), ceil(in/c)]
};

Quantized Quantize(const torch::Tensor& w, int64_t r, int64_t c) {
  const int64_t out = w.size(0), in = w.size(1);
  Quantized q{torch::empty({out, in}, torch::kUInt8),
              torch::empty({(out + r - 1) / r, (in + c - 1) / c}, torch::kFloat)};
  auto wa = w.accessor<float, 2>();
  auto sa = q.scale.accessor<float, 2>();
  auto qa = q.codes.accessor<uint8_t, 2>();
  for (int64_t bi = 0; bi < q.scale.size(0); ++bi) {
    for (int64_t bj = 0; bj < q.scale.size(1); ++bj) {
      float amax = 0.0f;
      for (int64_t i = bi * r; i < std::min(out, (bi + 1) * r); ++i)
        for (int64_t j = bj * c; j < std::min(in, (bj + 1) * c); ++j)
          amax = std::max(amax, std::fabs(wa[i][j]));
      const float s = amax > 0 ? amax / 448.0f : 1.0f;
      sa[bi][bj] = s;
      for (int64_t i = bi * r; i < std::min(out, (bi + 1) * r); ++i)
        for (int64_t j = bj * c; j < std::min(in, (bj + 1) * c); ++j)
          qa[i][j] = EncodeE4m3(wa[i][j] / s);
    }
  }
  return q;
}

std::string LlamaDir() { return testing::FixturesDir() + "/llama/model"; }

bool Quantizable(const std::string& name, const torch::Tensor& t) {
  return t.dim() == 2 && name != "model.embed_tokens.weight" && name != "lm_head.weight";
}

enum class Damage { kNone, kDropScale, kBadScaleShape };

// Writes the FP8 copy into `dir`; returns the original tensors.
std::map<std::string, torch::Tensor> WriteFp8Copy(const std::string& dir, int64_t r, int64_t c,
                                                  Damage damage = Damage::kNone) {
  auto weights = checkpoint::HfWeights::Open(LlamaDir());
  EXPECT_TRUE(weights.ok()) << weights.status();
  std::map<std::string, torch::Tensor> original;
  std::map<std::string, RawTensor> out;
  const std::string damaged = "model.layers.1.mlp.down_proj.weight";
  for (const std::string& name : weights->Names()) {
    const torch::Tensor t = weights->View(name)->clone();
    original[name] = t;
    if (!Quantizable(name, t)) {
      out[name] = Fp32(t);
      continue;
    }
    const Quantized q = Quantize(t, r, c);
    out[name] = {"F8_E4M3", t.sizes().vec(),
                 std::string(static_cast<const char*>(q.codes.data_ptr()), q.codes.numel())};
    if (name == damaged && damage == Damage::kDropScale) continue;
    out[name + "_scale_inv"] =
        Fp32(name == damaged && damage == Damage::kBadScaleShape ? q.scale.t() : q.scale);
  }
  WriteSafetensors(dir + "/model.safetensors", out);
  std::ifstream in(LlamaDir() + "/config.json");
  nlohmann::json config = nlohmann::json::parse(in);
  config["quantization_config"] = {{"quant_method", "fp8"},
                                   {"weight_block_size", {r, c}},
                                   {"fmt", "e4m3"},
                                   {"activation_scheme", "dynamic"}};
  std::ofstream(dir + "/config.json") << config.dump(2);
  return original;
}

absl::Status LoadInto(CausalLM& model, const std::string& dir, const HfLoadOptions& options = {}) {
  auto weights = checkpoint::HfWeights::Open(dir);
  if (!weights.ok()) return weights.status();
  return LoadHfWeights(*model, *weights, options);
}

void ExpectDequantizedLoad(int64_t r, int64_t c) {
  const std::string dir = testing::ScratchDir();
  const auto original = WriteFp8Copy(dir, r, c);
  auto config = LoadModelConfig(dir + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->fp8_block_rows, r);
  EXPECT_EQ(config->fp8_block_cols, c);
  CausalLM model(*config, torch::TensorOptions().dtype(torch::kFloat));
  const absl::Status status = LoadInto(model, dir);
  ASSERT_TRUE(status.ok()) << status;
  int quantized = 0;
  for (const auto& t : HfStateDict(*model)) {
    const torch::Tensor& w = original.at(t.name);
    if (!Quantizable(t.name, w)) {
      EXPECT_TRUE(torch::equal(t.tensor, w)) << t.name;
      continue;
    }
    ++quantized;
    // Per element: the FP8 relative step (2^-3 between normals, half of it
    // after rounding) plus the block's smallest subnormal step (2^-9 x scale).
    const Quantized q = Quantize(w, r, c);
    const torch::Tensor scale = ExpandBlockScales(q.scale, w.size(0), w.size(1), r, c);
    const torch::Tensor bound = w.abs() * std::ldexp(1.0, -4) + scale * std::ldexp(1.0, -9);
    EXPECT_TRUE(((t.tensor - w).abs() <= bound).all().item<bool>()) << t.name;
    EXPECT_FALSE(torch::equal(t.tensor, w)) << t.name << " was not rounded at all";
    // And exactly this test's own decode times the scale.
    torch::Tensor decoded = torch::empty_like(w);
    auto qa = q.codes.accessor<uint8_t, 2>();
    auto da = decoded.accessor<float, 2>();
    for (int64_t i = 0; i < w.size(0); ++i)
      for (int64_t j = 0; j < w.size(1); ++j) da[i][j] = DecodeE4m3(qa[i][j]);
    EXPECT_TRUE(torch::allclose(t.tensor, decoded * scale, 1e-6, 0.0)) << t.name;
  }
  EXPECT_EQ(quantized, 2 * 7);  // q, k, v, o, gate, up, down per layer
}

TEST(Fp8LoadingTest, DequantizesBlockScaledWeights) { ExpectDequantizedLoad(16, 16); }

TEST(Fp8LoadingTest, PartialLastBlocks) { ExpectDequantizedLoad(48, 24); }

TEST(Fp8LoadingTest, EncoderAndDecoderAgreeOnEveryCode) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7F) == 0x7F) {
      EXPECT_TRUE(std::isnan(DecodeE4m3(code)));
      continue;
    }
    if (code == 0x80) continue;  // -0 encodes as +0's magnitude with the sign
    EXPECT_EQ(EncodeE4m3(DecodeE4m3(code)), code) << code;
  }
  EXPECT_EQ(DecodeE4m3(0x7E), 448.0f);
  EXPECT_EQ(DecodeE4m3(0x01), std::ldexp(1.0f, -9));
}

TEST(Fp8LoadingTest, MissingOrMisshapenScaleIsNamed) {
  for (const Damage damage : {Damage::kDropScale, Damage::kBadScaleShape}) {
    const std::string dir = testing::ScratchDir() + (damage == Damage::kDropScale ? "/a" : "/b");
    std::filesystem::create_directories(dir);
    WriteFp8Copy(dir, 16, 16, damage);
    auto config = LoadModelConfig(dir + "/config.json");
    ASSERT_TRUE(config.ok()) << config.status();
    CausalLM model(*config, torch::TensorOptions().dtype(torch::kFloat));
    const absl::Status status = LoadInto(model, dir);
    ASSERT_FALSE(status.ok());
    const std::string message(status.message());
    EXPECT_TRUE(absl::StrContains(message, "model.layers.1.mlp.down_proj.weight")) << message;
    EXPECT_TRUE(absl::StrContains(message, "model.safetensors")) << message;
    EXPECT_TRUE(absl::StrContains(message, "_scale_inv")) << message;
  }
}

TEST(Fp8LoadingTest, Fp8WeightsNeedQuantizationConfig) {
  const std::string dir = testing::ScratchDir();
  WriteFp8Copy(dir, 16, 16);
  auto config = LoadModelConfig(LlamaDir() + "/config.json");  // no quantization_config
  ASSERT_TRUE(config.ok());
  CausalLM model(*config, torch::TensorOptions().dtype(torch::kFloat));
  const absl::Status status = LoadInto(model, dir);
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(absl::StrContains(status.message(), "quantization_config")) << status;
}

// Persistent buffers (DeepSeek-V3's gate.e_score_correction_bias): exported
// after their module's own parameters, loaded, required, zero-initialised. Shown
// on the llama fixture with such a buffer registered on layer 0's MLP.
TEST(Fp8LoadingTest, PersistentBuffersAreStateDictEntries) {
  auto config = LoadModelConfig(LlamaDir() + "/config.json");
  ASSERT_TRUE(config.ok());
  CausalLM model(*config, torch::TensorOptions().dtype(torch::kFloat));
  const std::string name = "model.layers.0.mlp.e_score_correction_bias";
  model->named_modules()["model.layers.0.mlp"]->register_buffer("e_score_correction_bias",
                                                                torch::full({8}, 3.0));
  std::vector<std::string> names;
  for (const auto& t : HfStateDict(*model)) names.push_back(t.name);
  const auto at = std::find(names.begin(), names.end(), name);
  ASSERT_NE(at, names.end());
  // torch's state_dict order: a module's own parameters and buffers, then
  // its children's (the mlp owns no parameter; its projections are children).
  EXPECT_EQ(*(at - 1), "model.layers.0.self_attn.o_proj.weight");
  EXPECT_EQ(*(at + 1), "model.layers.0.mlp.gate_proj.weight");
  InitializeWeights(*model, 3);
  EXPECT_TRUE(torch::equal(model->named_buffers()[name], torch::zeros({8})));

  const std::string dir = testing::ScratchDir();
  auto weights = checkpoint::HfWeights::Open(LlamaDir());
  ASSERT_TRUE(weights.ok());
  std::map<std::string, RawTensor> out;
  for (const std::string& n : weights->Names()) out[n] = Fp32(*weights->View(n));
  WriteSafetensors(dir + "/model.safetensors", out);
  absl::Status status = LoadInto(model, dir);
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(absl::StrContains(status.message(), "missing tensors: " + name)) << status;
  out[name] = Fp32(torch::arange(8, torch::kFloat));
  WriteSafetensors(dir + "/model.safetensors", out);
  status = LoadInto(model, dir);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_TRUE(torch::equal(model->named_buffers()[name], torch::arange(8, torch::kFloat)));
}

nlohmann::json ReadJson(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

// `fulcrum init` and export write unquantized weights: quantization_config
// must not survive into their config.json.
TEST(Fp8LoadingTest, InitAndExportDropQuantizationConfig) {
  const std::string dir = testing::ScratchDir();
  WriteFp8Copy(dir, 16, 16);
  ASSERT_TRUE(ReadJson(dir + "/config.json").contains("quantization_config"));
  const absl::Status init = WriteRandomModel(dir + "/config.json", dir + "/init", 7);
  ASSERT_TRUE(init.ok()) << init;
  const nlohmann::json written = ReadJson(dir + "/init/config.json");
  EXPECT_FALSE(written.contains("quantization_config"));
  EXPECT_EQ(written.at("vocab_size"), 512);
  std::filesystem::create_directories(dir + "/export");
  const absl::Status exported = checkpoint::WriteHfConfigAndSideFiles(
      dir + "/export", ReadJson(dir + "/config.json"), torch::kBFloat16, dir);
  ASSERT_TRUE(exported.ok()) << exported;
  const nlohmann::json export_config = ReadJson(dir + "/export/config.json");
  EXPECT_FALSE(export_config.contains("quantization_config"));
  EXPECT_EQ(export_config.at("hidden_size"), 64);
  EXPECT_EQ(export_config.value("torch_dtype", export_config.value("dtype", "")), "bfloat16");
}

// A checkpoint with one more layer than num_hidden_layers, the config saying
// it is a multi-token-prediction layer.
TEST(Fp8LoadingTest, MtpLayersAreSkippedOnlyWhenAsked) {
  const std::string dir = testing::ScratchDir();
  auto weights = checkpoint::HfWeights::Open(LlamaDir());
  ASSERT_TRUE(weights.ok());
  std::map<std::string, RawTensor> out;
  for (const std::string& name : weights->Names()) {
    out[name] = Fp32(*weights->View(name));
    if (absl::StartsWith(name, "model.layers.1.")) {
      out["model.layers.2." + name.substr(strlen("model.layers.1."))] = Fp32(*weights->View(name));
    }
  }
  WriteSafetensors(dir + "/model.safetensors", out);
  auto config = LoadModelConfig(LlamaDir() + "/config.json");
  ASSERT_TRUE(config.ok());
  config->num_mtp_layers = 1;
  CausalLM model(*config, torch::TensorOptions().dtype(torch::kFloat));
  absl::Status status = LoadInto(model, dir);
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(absl::StrContains(status.message(), "model.mtp_layers")) << status;
  EXPECT_TRUE(absl::StrContains(status.message(), "model.layers.2.")) << status;
  HfLoadOptions skip;
  skip.skip_mtp_layers = true;
  status = LoadInto(model, dir, skip);
  EXPECT_TRUE(status.ok()) << status;
  // Without num_mtp_layers the extra layer is simply unexpected.
  config->num_mtp_layers = 0;
  CausalLM plain(*config, torch::TensorOptions().dtype(torch::kFloat));
  status = LoadInto(plain, dir, skip);
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(absl::StrContains(status.message(), "unexpected")) << status;
}

}  // namespace
}  // namespace fulcrum::models
