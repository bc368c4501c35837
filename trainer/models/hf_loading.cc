#include "trainer/models/hf_loading.h"

#include <filesystem>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/file_util.h"
#include "core/status.h"
#include "trainer/models/family_registry.h"
#include "trainer/models/init.h"
#include "trainer/models/model_config.h"
#include "trainer/models/parallel_layout.h"

namespace fulcrum::models {
namespace {

// HF's default max_shard_size ("5GB").
constexpr int64_t kMaxShardBytes = 5'000'000'000;

// Checkpoint tensors that are not parameters and may be dropped: rotary
// caches saved by old transformers versions, and an lm_head that a tied model
// ignores.
bool IsIgnorable(const std::string& name, const ModelConfig& config) {
  if (absl::EndsWith(name, "rotary_emb.inv_freq")) return true;
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

}  // namespace

std::vector<checkpoint::NamedTensor> HfStateDict(CausalLMImpl& model) {
  std::vector<checkpoint::NamedTensor> out;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    if (absl::StrContains(item.key(), "lora_")) continue;
    out.push_back(checkpoint::NamedTensor{item.key(), item.value().detach()});
  }
  return out;
}

absl::Status LoadHfWeights(CausalLMImpl& model, const checkpoint::HfWeights& weights) {
  const std::string where = absl::StrCat("HF checkpoint ", weights.dir());
  // Base parameters (HfStateDict order) with their tp layout: each rank reads
  // only its slice, checked against the full shape.
  std::vector<ParamLayout> params;
  for (ParamLayout& layout : ParallelLayouts(model)) {
    if (!absl::StrContains(layout.name, "lora_")) params.push_back(std::move(layout));
  }
  // The whole model's tensors: on a pipeline stage the others' layers are
  // expected in the file too (not "unexpected"), and every rank reports the
  // same missing ones.
  std::set<std::string> expected;
  if (model.parallel().pipelined()) {
    for (const WeightPlanEntry& entry : WeightPlan(model.config())) expected.insert(entry.name);
  }
  for (const auto& p : params) expected.insert(p.name);
  std::vector<std::string> missing, unexpected, mismatched;
  for (const std::string& name : weights.Names()) {
    if (expected.count(name) == 0 && !IsIgnorable(name, model.config())) unexpected.push_back(name);
  }
  std::set<std::string> held;
  for (const auto& p : params) held.insert(p.name);
  for (const std::string& name : expected) {
    if (held.count(name) == 0 && !weights.Contains(name)) missing.push_back(name);
  }
  std::vector<torch::Tensor> sources;
  sources.reserve(params.size());
  for (const auto& p : params) {
    if (!weights.Contains(p.name)) {
      missing.push_back(p.name);
      sources.emplace_back();
      continue;
    }
    FULCRUM_ASSIGN_OR_RETURN(torch::Tensor view, weights.View(p.name));
    const std::vector<int64_t> full = FullShape(p);
    if (view.sizes() != torch::IntArrayRef(full)) {
      mismatched.push_back(absl::StrCat(p.name, " ", ShapeString(view.sizes()), " (model expects ",
                                        ShapeString(full), ")"));
      sources.push_back(view);
      continue;
    }
    sources.push_back(NarrowToShard(p, view));
  }
  std::vector<std::string> problems;
  if (!missing.empty()) problems.push_back(absl::StrCat("missing tensors: ", NameList(missing)));
  if (!mismatched.empty())
    problems.push_back(absl::StrCat("shape mismatch: ", NameList(mismatched)));
  if (!unexpected.empty()) {
    problems.push_back(absl::StrCat("unexpected tensors (not in a ", model.config().architecture,
                                    " with this config.json): ", NameList(unexpected)));
  }
  if (!problems.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", absl::StrJoin(problems, "; ")));
  }
  torch::NoGradGuard no_grad;
  try {
    // copy_ converts dtype and device; the views stay read-only.
    for (size_t i = 0; i < params.size(); ++i) params[i].param.detach().copy_(sources[i]);
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
  FULCRUM_RETURN_IF_ERROR(WriteFileAtomically(staged + "/config.json", config_text));
  return PublishDirectory(staged, out_dir);
}

}  // namespace fulcrum::models
