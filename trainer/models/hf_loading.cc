#include "trainer/models/hf_loading.h"

#include <cstring>
#include <filesystem>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "core/file_util.h"
#include "core/status.h"
#include "trainer/checkpoint/dtype.h"
#include "trainer/models/family_registry.h"
#include "trainer/models/init.h"
#include "trainer/models/model_config.h"
#include "trainer/models/parallel_layout.h"

namespace fulcrum::models {
namespace {

// HF's default max_shard_size ("5GB").
constexpr int64_t kMaxShardBytes = 5'000'000'000;

constexpr char kScaleSuffix[] = "_scale_inv";

// model.layers.<i>. with i >= num_layers: a DeepSeek-V3 multi-token-prediction
// layer (config num_nextn_predict_layers > 0).
bool IsMtpTensor(const std::string& name, const ModelConfig& config) {
  if (config.num_mtp_layers <= 0) return false;
  constexpr absl::string_view kPrefix = "model.layers.";
  if (!absl::StartsWith(name, kPrefix)) return false;
  const absl::string_view rest = absl::string_view(name).substr(kPrefix.size());
  const size_t dot = rest.find('.');
  int64_t layer = 0;
  return dot != absl::string_view::npos && absl::SimpleAtoi(rest.substr(0, dot), &layer) &&
         layer >= config.num_layers;
}

// Checkpoint tensors that are not parameters and may be dropped: rotary
// caches saved by old transformers versions, an lm_head that a tied model
// ignores, and MTP layers when the recipe says to skip them.
bool IsIgnorable(const std::string& name, const ModelConfig& config, const HfLoadOptions& options) {
  if (absl::EndsWith(name, "rotary_emb.inv_freq")) return true;
  if (options.skip_mtp_layers && IsMtpTensor(name, config)) return true;
  return config.tie_word_embeddings && name == "lm_head.weight";
}

std::string ShapeString(torch::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

// At most 10 names, then a count (a whole mismatched model is hundreds).
std::string NameList(const std::vector<std::string>& names) {
  const size_t shown = std::min<size_t>(names.size(), 10);
  std::string out = absl::StrJoin(names.begin(), names.begin() + shown, ", ");
  if (names.size() > shown) absl::StrAppend(&out, " and ", names.size() - shown, " more");
  return out;
}

// The base parameters (HfStateDict order) with their tp layout, then the
// persistent buffers (replicated: the whole tensor on every rank).
std::vector<ParamLayout> LoadTargets(CausalLMImpl& model) {
  std::vector<ParamLayout> targets;
  for (ParamLayout& layout : ParallelLayouts(model)) {
    if (!absl::StrContains(layout.name, "lora_")) targets.push_back(std::move(layout));
  }
  for (const auto& item : model.named_buffers(/*recurse=*/true)) {
    if (!IsPersistentBuffer(item.key())) continue;
    ParamLayout buffer;
    buffer.name = item.key();
    buffer.param = item.value();
    targets.push_back(std::move(buffer));
  }
  return targets;
}

// The full fp32 value of an F8_E4M3 weight `name` [out, in]: decode(W) times
// its "<name>_scale_inv" block scales. Errors name the tensor and the file.
absl::StatusOr<torch::Tensor> DequantizedFp8(const checkpoint::HfWeights& weights,
                                             const std::string& name, const ModelConfig& config) {
  FULCRUM_ASSIGN_OR_RETURN(const auto reader, weights.ReaderOf(name));
  const std::string where = absl::StrCat(reader->path(), ": tensor ", name);
  FULCRUM_ASSIGN_OR_RETURN(const checkpoint::TensorEntry entry, weights.Entry(name));
  if (entry.dtype != "F8_E4M3") {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": dtype ", entry.dtype, " not supported yet (FP8: F8_E4M3 only)"));
  }
  if (entry.shape.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": F8_E4M3 tensor of shape ", ShapeString(entry.shape), " (expected a 2-D weight)"));
  }
  if (config.fp8_block_rows <= 0 || config.fp8_block_cols <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(where,
                     ": F8_E4M3 weights need config.json quantization_config {\"quant_method\": "
                     "\"fp8\", \"weight_block_size\": [r, c]}"));
  }
  const std::string scale_name = name + kScaleSuffix;
  if (!weights.Contains(scale_name)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": F8_E4M3 weight without its scale tensor ", scale_name));
  }
  const int64_t out = entry.shape[0], in = entry.shape[1];
  const int64_t r = config.fp8_block_rows, c = config.fp8_block_cols;
  const std::vector<int64_t> scale_shape = {(out + r - 1) / r, (in + c - 1) / c};
  FULCRUM_ASSIGN_OR_RETURN(torch::Tensor scale, weights.View(scale_name));
  if (scale.sizes() != torch::IntArrayRef(scale_shape) || !scale.is_floating_point()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": scale ", scale_name, " has shape ", ShapeString(scale.sizes()), " (",
                     c10::toString(scale.scalar_type()), "), expected ", ShapeString(scale_shape),
                     " floats for blocks of ", r, "x", c));
  }
  FULCRUM_ASSIGN_OR_RETURN(const torch::Tensor decoded, weights.View(name));  // fp32
  return decoded * ExpandBlockScales(scale.to(torch::kFloat), out, in, r, c);
}

// The checkpoint tensor for each target (undefined when missing or
// misshapen), with the problems found.
struct Sources {
  std::vector<torch::Tensor> tensors;
  std::vector<std::string> missing, mismatched;
};

absl::StatusOr<Sources> ReadSources(const std::vector<ParamLayout>& targets,
                                    const checkpoint::HfWeights& weights,
                                    const ModelConfig& config) {
  Sources sources;
  sources.tensors.reserve(targets.size());
  for (const auto& p : targets) {
    if (!weights.Contains(p.name)) {
      sources.missing.push_back(p.name);
      sources.tensors.emplace_back();
      continue;
    }
    FULCRUM_ASSIGN_OR_RETURN(const checkpoint::TensorEntry entry, weights.Entry(p.name));
    const std::vector<int64_t> full = FullShape(p);
    if (entry.shape != full) {
      sources.mismatched.push_back(absl::StrCat(p.name, " ", ShapeString(entry.shape),
                                                " (model expects ", ShapeString(full), ")"));
      sources.tensors.emplace_back();
      continue;
    }
    FULCRUM_ASSIGN_OR_RETURN(const torch::Tensor view, ReadHfTensor(weights, p.name, config));
    sources.tensors.push_back(NarrowToShard(p, view));
  }
  return sources;
}

}  // namespace

absl::StatusOr<torch::Tensor> ReadHfTensor(const checkpoint::HfWeights& weights,
                                           const std::string& name, const ModelConfig& config) {
  FULCRUM_ASSIGN_OR_RETURN(const checkpoint::TensorEntry entry, weights.Entry(name));
  if (checkpoint::IsFloat8(entry.dtype)) return DequantizedFp8(weights, name, config);
  return weights.View(name);
}

bool IsPersistentBuffer(const std::string& name) {
  return absl::EndsWith(name, "e_score_correction_bias");
}

torch::Tensor ExpandBlockScales(const torch::Tensor& block, int64_t out, int64_t in, int64_t rows,
                                int64_t cols) {
  return block.repeat_interleave(rows, 0).narrow(0, 0, out).repeat_interleave(cols, 1).narrow(1, 0,
                                                                                              in);
}

std::vector<checkpoint::NamedTensor> HfStateDict(CausalLMImpl& model) {
  std::vector<checkpoint::NamedTensor> out;
  // named_modules is pre-order: per module its own parameters, then its own
  // persistent buffers, then the children (torch's state_dict order).
  for (const auto& module : model.named_modules(/*name_prefix=*/"", /*include_self=*/true)) {
    const std::string prefix = module.key().empty() ? "" : module.key() + ".";
    for (const auto& item : module.value()->named_parameters(/*recurse=*/false)) {
      const std::string name = prefix + item.key();
      if (absl::StrContains(name, "lora_")) continue;
      out.push_back(checkpoint::NamedTensor{name, item.value().detach()});
    }
    for (const auto& item : module.value()->named_buffers(/*recurse=*/false)) {
      const std::string name = prefix + item.key();
      if (IsPersistentBuffer(name))
        out.push_back(checkpoint::NamedTensor{name, item.value().detach()});
    }
  }
  return out;
}

absl::Status LoadHfWeights(CausalLMImpl& model, const checkpoint::HfWeights& weights,
                           const HfLoadOptions& options) {
  const std::string where = absl::StrCat("HF checkpoint ", weights.dir());
  const ModelConfig& config = model.config();
  std::vector<ParamLayout> targets = LoadTargets(model);
  // The whole model's tensors: on a pipeline stage the others' layers (on an
  // expert-parallel rank the others' experts) are expected in the file too
  // (not "unexpected"), and every rank reports the same missing ones.
  std::set<std::string> expected;
  if (model.parallel().pipelined() || model.parallel().expert_sharded()) {
    for (const WeightPlanEntry& entry : WeightPlan(config)) expected.insert(entry.name);
  }
  for (const auto& p : targets) expected.insert(p.name);
  std::vector<std::string> unexpected, mtp;
  for (const std::string& name : weights.Names()) {
    if (expected.count(name) > 0 || IsIgnorable(name, config, options)) continue;
    // An FP8 weight's block scales belong to it.
    if (absl::EndsWith(name, kScaleSuffix) &&
        expected.count(name.substr(0, name.size() - strlen(kScaleSuffix))) > 0) {
      continue;
    }
    (IsMtpTensor(name, config) ? mtp : unexpected).push_back(name);
  }
  FULCRUM_ASSIGN_OR_RETURN(Sources sources, ReadSources(targets, weights, config));
  std::set<std::string> held;
  for (const auto& p : targets) held.insert(p.name);
  for (const std::string& name : expected) {
    if (held.count(name) == 0 && !weights.Contains(name)) sources.missing.push_back(name);
  }
  std::vector<std::string> problems;
  if (!sources.missing.empty())
    problems.push_back(absl::StrCat("missing tensors: ", NameList(sources.missing)));
  if (!sources.mismatched.empty())
    problems.push_back(absl::StrCat("shape mismatch: ", NameList(sources.mismatched)));
  if (!unexpected.empty()) {
    problems.push_back(absl::StrCat("unexpected tensors (not in a ", config.architecture,
                                    " with this config.json): ", NameList(unexpected)));
  }
  if (!mtp.empty()) {
    problems.push_back(absl::StrCat(
        "multi-token-prediction layers (num_nextn_predict_layers=", config.num_mtp_layers,
        ") are neither loaded nor skipped: set model.mtp_layers: skip in the recipe (",
        NameList(mtp), ")"));
  }
  if (!problems.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", absl::StrJoin(problems, "; ")));
  }
  torch::NoGradGuard no_grad;
  try {
    // copy_ converts dtype and device; the views stay read-only.
    for (size_t i = 0; i < targets.size(); ++i) targets[i].param.detach().copy_(sources.tensors[i]);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat(where, ": copying weights failed: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::Status WriteRandomModel(const std::string& config_json_path, const std::string& out_dir,
                              uint64_t seed) {
  FULCRUM_ASSIGN_OR_RETURN(const std::string config_text, ReadFileToString(config_json_path));
  FULCRUM_ASSIGN_OR_RETURN(const ModelConfig config, LoadModelConfig(config_json_path));
  // Written into a staging directory that becomes out_dir only when complete.
  FULCRUM_ASSIGN_OR_RETURN(const std::string staged, MakeStagingDirectory(out_dir));
  CausalLM model(config, torch::TensorOptions().dtype(torch::kFloat));
  InitializeWeights(*model, seed);
  FULCRUM_RETURN_IF_ERROR(
      checkpoint::WriteHfWeights(staged, HfStateDict(*model), kMaxShardBytes, "model"));
  // The weights written are fp32: a quantization_config no longer applies.
  const std::string written_config =
      config.raw.contains("quantization_config")
          ? [&] {
              nlohmann::json raw = config.raw;
              raw.erase("quantization_config");
              return raw.dump(2) + "\n";
            }()
          : config_text;
  FULCRUM_RETURN_IF_ERROR(WriteFileAtomically(staged + "/config.json", written_config));
  return PublishDirectory(staged, out_dir);
}

}  // namespace fulcrum::models
