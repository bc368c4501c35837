#include "trainer/lora/peft_adapter.h"

#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/check.h"
#include "core/file_util.h"
#include "core/status.h"
#include "trainer/checkpoint/safetensors_reader.h"

namespace fulcrum::lora {
namespace {

constexpr char kConfigFile[] = "adapter_config.json";
constexpr char kWeightsFile[] = "adapter_model.safetensors";
constexpr char kPrefix[] = "base_model.model.";

// "base_model.model.<path>.lora_A[.default].weight" -> "<path>" ("" when the
// key has another form).
std::string ModulePathOfPeftKey(const std::string& key) {
  if (!absl::StartsWith(key, kPrefix)) return "";
  const std::string rest = key.substr(std::string(kPrefix).size());
  for (const char* marker : {".lora_A", ".lora_B"}) {
    const size_t at = rest.find(marker);
    if (at != std::string::npos) return rest.substr(0, at);
  }
  return "";
}

// adapter_config.json, as far as fulcrum supports it.
struct PeftConfig {
  LoraSpec spec;
  std::vector<std::string> target_list;     // PEFT: module path == t or ends with "." + t
  std::optional<std::string> target_regex;  // PEFT: re.fullmatch on the module path
};

absl::Status ConfigError(const std::string& path, const std::string& key, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", key, ": ", what));
}

// Rejects options that change the math and that fulcrum does not implement.
absl::Status CheckUnsupported(const nlohmann::json& j, const std::string& path) {
  auto is_set = [&](const char* key) {
    if (!j.contains(key)) return false;
    const auto& v = j.at(key);
    return !(v.is_null() || (v.is_boolean() && !v.get<bool>()) ||
             ((v.is_object() || v.is_array()) && v.empty()));
  };
  for (const char* key :
       {"use_dora", "fan_in_fan_out", "rank_pattern", "alpha_pattern", "layers_to_transform",
        "modules_to_save", "exclude_modules", "lora_bias", "use_qalora", "layer_replication",
        "target_parameters", "trainable_token_indices"}) {
    if (is_set(key)) {
      return absl::UnimplementedError(
          absl::StrCat(path, ": ", key, ": ", j.at(key).dump(), " is not supported"));
    }
  }
  if (j.contains("bias") && j.at("bias") != "none") {
    return absl::UnimplementedError(
        absl::StrCat(path, ": bias: ", j.at("bias").dump(), " is not supported (only \"none\")"));
  }
  if (j.contains("peft_type") && j.at("peft_type") != "LORA") {
    return ConfigError(path, "peft_type", absl::StrCat(j.at("peft_type").dump(), " is not LORA"));
  }
  return absl::OkStatus();
}

absl::StatusOr<PeftConfig> ParseConfig(const nlohmann::json& j, const std::string& path) {
  if (!j.is_object()) return ConfigError(path, "(top level)", "not a JSON object");
  FULCRUM_RETURN_IF_ERROR(CheckUnsupported(j, path));
  PeftConfig config;
  if (!j.contains("r") || !j.at("r").is_number_integer()) {
    return ConfigError(path, "r", "missing or not an integer");
  }
  config.spec.rank = j.at("r").get<int64_t>();
  if (!j.contains("lora_alpha") || !j.at("lora_alpha").is_number()) {
    return ConfigError(path, "lora_alpha", "missing or not a number");
  }
  config.spec.alpha = j.at("lora_alpha").get<double>();
  if (j.contains("lora_dropout") && !j.at("lora_dropout").is_null()) {
    if (!j.at("lora_dropout").is_number()) return ConfigError(path, "lora_dropout", "not a number");
    config.spec.dropout = j.at("lora_dropout").get<double>();
  }
  if (j.contains("use_rslora") && !j.at("use_rslora").is_null()) {
    if (!j.at("use_rslora").is_boolean()) return ConfigError(path, "use_rslora", "not a boolean");
    config.spec.rslora = j.at("use_rslora").get<bool>();
  }
  absl::Status spec_status = ValidateLoraSpec(config.spec);
  if (!spec_status.ok()) return Annotate(spec_status, path);
  const nlohmann::json* targets = j.contains("target_modules") ? &j.at("target_modules") : nullptr;
  if (targets != nullptr && targets->is_string()) {
    config.target_regex = targets->get<std::string>();
  } else if (targets != nullptr && targets->is_array() && !targets->empty()) {
    for (const auto& t : *targets) {
      if (!t.is_string()) return ConfigError(path, "target_modules", "not a list of strings");
      config.target_list.push_back(t.get<std::string>());
    }
  } else {
    return ConfigError(path, "target_modules", "missing, empty, or not a list or a string");
  }
  return config;
}

// Module paths of the layers the config adapts (in model order).
absl::StatusOr<std::vector<LoraLayer>> SelectLayers(torch::nn::Module& model,
                                                    const PeftConfig& config,
                                                    const std::string& path) {
  std::vector<LoraLayer> layers = LoraLayers(model);
  std::vector<LoraLayer> chosen;
  if (config.target_regex.has_value()) {
    const bool all_linear = *config.target_regex == "all-linear";
    std::regex re;
    try {
      if (!all_linear) re = std::regex(*config.target_regex, std::regex::ECMAScript);
    } catch (const std::regex_error& e) {
      return ConfigError(path, "target_modules", absl::StrCat("bad regex: ", e.what()));
    }
    for (LoraLayer& l : layers) {
      const bool hit =
          all_linear ? LastComponent(l.path) != "lm_head" : std::regex_match(l.path, re);
      if (hit) chosen.push_back(l);
    }
    if (chosen.empty()) {
      return ConfigError(path, "target_modules",
                         absl::StrCat("'", *config.target_regex, "' matches no linear layer"));
    }
    return chosen;
  }
  std::set<std::string> used;
  for (LoraLayer& l : layers) {
    for (const std::string& t : config.target_list) {
      if (l.path == t || absl::EndsWith(l.path, "." + t)) {
        chosen.push_back(l);
        used.insert(t);
        break;
      }
    }
  }
  for (const std::string& t : config.target_list) {
    if (used.count(t) == 0) {
      return ConfigError(path, "target_modules", absl::StrCat("'", t, "' matches no linear layer"));
    }
  }
  return chosen;
}

// The file's tensor for (layer, A|B): PEFT writes "...lora_A.weight", older
// or unmerged saves "...lora_A.default.weight".
absl::StatusOr<torch::Tensor> ReadAdapterTensor(const checkpoint::SafetensorsReader& reader,
                                                const std::string& module_path, bool lora_b,
                                                std::vector<int64_t> shape,
                                                std::set<std::string>& consumed) {
  const std::string key = PeftKey(module_path, lora_b);
  std::string alt = key;
  alt.insert(alt.size() - std::string(".weight").size(), ".default");
  const std::string& found = reader.Contains(key) ? key : alt;
  if (!reader.Contains(found)) {
    return absl::InvalidArgumentError(
        absl::StrCat(reader.path(), ": missing adapter tensor '", key, "'"));
  }
  FULCRUM_ASSIGN_OR_RETURN(torch::Tensor t, reader.View(found));
  if (!t.is_floating_point() || t.sizes() != torch::IntArrayRef(shape)) {
    return absl::InvalidArgumentError(absl::StrCat(
        reader.path(), ": tensor '", found, "' has shape [", absl::StrJoin(t.sizes(), ","), "] ",
        c10::toString(t.scalar_type()), ", expected floating [", absl::StrJoin(shape, ","), "]"));
  }
  consumed.insert(found);
  return t;
}

}  // namespace

std::string PeftKey(const std::string& module_path, bool lora_b) {
  return absl::StrCat(kPrefix, module_path, lora_b ? ".lora_B.weight" : ".lora_A.weight");
}

namespace {

// The live adapters of `model` (detached), in layer order.
std::vector<AdapterValues> LiveAdapters(torch::nn::Module& model) {
  std::vector<AdapterValues> adapters;
  for (const LoraLayer& l : LoraLayers(model)) {
    if (!l.layer->has_adapter()) continue;
    adapters.push_back({l.path, l.layer->lora_a().detach(), l.layer->lora_b().detach()});
  }
  return adapters;
}

std::vector<checkpoint::NamedTensor> PeftTensors(const std::vector<AdapterValues>& adapters) {
  std::vector<checkpoint::NamedTensor> out;
  for (const AdapterValues& adapter : adapters) {
    out.push_back({PeftKey(adapter.module_path, false), adapter.a});
    out.push_back({PeftKey(adapter.module_path, true), adapter.b});
  }
  return out;
}

}  // namespace

std::vector<checkpoint::NamedTensor> AdapterStateDict(torch::nn::Module& model) {
  return PeftTensors(LiveAdapters(model));
}

absl::Status WritePeftAdapter(torch::nn::Module& model, const LoraOptions& options,
                              const std::string& base_model_path, const std::string& dir) {
  const std::vector<AdapterValues> adapters = LiveAdapters(model);
  if (adapters.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(dir, ": the model has no LoRA adapter"));
  }
  return WritePeftAdapterFiles(adapters, options.spec, base_model_path, dir);
}

absl::Status WritePeftAdapterFiles(const std::vector<AdapterValues>& adapters, const LoraSpec& spec,
                                   const std::string& base_model_path, const std::string& dir) {
  std::set<std::string> names;
  for (const AdapterValues& adapter : adapters) names.insert(LastComponent(adapter.module_path));
  if (names.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(dir, ": no LoRA adapter to write"));
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir, ": cannot create: ", ec.message()));

  nlohmann::json config = {{"alpha_pattern", nlohmann::json::object()},
                           {"auto_mapping", nullptr},
                           {"base_model_name_or_path", base_model_path},
                           {"bias", "none"},
                           {"exclude_modules", nullptr},
                           {"fan_in_fan_out", false},
                           {"inference_mode", true},
                           {"init_lora_weights", true},
                           {"layer_replication", nullptr},
                           {"layers_pattern", nullptr},
                           {"layers_to_transform", nullptr},
                           {"loftq_config", nlohmann::json::object()},
                           {"lora_bias", false},
                           {"lora_dropout", spec.dropout},
                           {"megatron_config", nullptr},
                           {"megatron_core", "megatron.core"},
                           {"modules_to_save", nullptr},
                           {"peft_type", "LORA"},
                           {"r", spec.rank},
                           {"rank_pattern", nlohmann::json::object()},
                           {"revision", nullptr},
                           {"target_modules", std::vector<std::string>(names.begin(), names.end())},
                           {"task_type", "CAUSAL_LM"},
                           {"use_dora", false},
                           {"use_rslora", spec.rslora}};
  // PEFT writes an integral alpha as an int (16, not 16.0).
  if (spec.alpha == std::floor(spec.alpha) && std::abs(spec.alpha) < 1e15) {
    config["lora_alpha"] = static_cast<int64_t>(spec.alpha);
  } else {
    config["lora_alpha"] = spec.alpha;
  }
  // Tensors first: a directory with a config is complete.
  FULCRUM_RETURN_IF_ERROR(
      checkpoint::WriteSafetensors((std::filesystem::path(dir) / kWeightsFile).string(),
                                   PeftTensors(adapters), {{"format", "pt"}}));
  return WriteFileAtomically((std::filesystem::path(dir) / kConfigFile).string(),
                             config.dump(2) + "\n");
}

absl::StatusOr<PeftAdapter> ReadPeftAdapter(
    torch::nn::Module& model, const std::string& dir,
    const std::function<bool(const std::string& module_path)>& held_elsewhere) {
  const std::string config_path = (std::filesystem::path(dir) / kConfigFile).string();
  FULCRUM_ASSIGN_OR_RETURN(std::string text, ReadFileToString(config_path));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(config_path, ": bad JSON: ", e.what()));
  }
  FULCRUM_ASSIGN_OR_RETURN(PeftConfig config, ParseConfig(j, config_path));
  FULCRUM_ASSIGN_OR_RETURN(std::vector<LoraLayer> layers, SelectLayers(model, config, config_path));

  const std::string weights_path = (std::filesystem::path(dir) / kWeightsFile).string();
  FULCRUM_ASSIGN_OR_RETURN(auto reader, checkpoint::SafetensorsReader::Open(weights_path));
  const int64_t r = config.spec.rank;
  std::set<std::string> consumed;
  PeftAdapter adapter;
  std::set<std::string> names;
  for (const LoraLayer& l : layers) {
    if (l.layer->has_adapter()) {
      return absl::FailedPreconditionError(
          absl::StrCat(dir, ": layer '", l.path, "' already has an adapter"));
    }
    AdapterValues values;
    values.module_path = l.path;
    FULCRUM_ASSIGN_OR_RETURN(
        values.a, ReadAdapterTensor(*reader, l.path, false, {r, l.layer->in_features()}, consumed));
    FULCRUM_ASSIGN_OR_RETURN(
        values.b, ReadAdapterTensor(*reader, l.path, true, {l.layer->out_features(), r}, consumed));
    adapter.adapters.push_back(std::move(values));
    names.insert(LastComponent(l.path));
  }
  for (const std::string& name : reader->Names()) {
    if (consumed.count(name) == 0 && held_elsewhere && held_elsewhere(ModulePathOfPeftKey(name))) {
      continue;
    }
    if (consumed.count(name) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(weights_path, ": tensor '", name,
                                                     "' matches no adapted layer of the model"));
    }
  }
  adapter.options = LoraOptions{config.spec, std::vector<std::string>(names.begin(), names.end()),
                                /*seed=*/std::nullopt};
  return adapter;
}

absl::StatusOr<LoraOptions> LoadPeftAdapter(
    torch::nn::Module& model, const std::string& dir,
    const std::function<bool(const std::string& module_path)>& held_elsewhere) {
  // Read and check every tensor before the model changes.
  FULCRUM_ASSIGN_OR_RETURN(const PeftAdapter adapter, ReadPeftAdapter(model, dir, held_elsewhere));
  std::map<std::string, const AdapterValues*> by_path;
  for (const AdapterValues& values : adapter.adapters) by_path[values.module_path] = &values;
  FULCRUM_ASSIGN_OR_RETURN(
      int64_t adapted, ApplyLoraWhere(model, adapter.options.spec, [&](const std::string& path) {
        return by_path.count(path) > 0;
      }));
  FULCRUM_CHECK(adapted == static_cast<int64_t>(by_path.size()), "adapted ", adapted);
  torch::NoGradGuard no_grad;
  for (const LoraLayer& l : LoraLayers(model)) {
    const auto it = by_path.find(l.path);
    if (it == by_path.end()) continue;
    // Full file tensors (checked); under tp each rank keeps its slice.
    l.layer->lora_a().copy_(l.layer->LocalLoraA(it->second->a));
    l.layer->lora_b().copy_(l.layer->LocalLoraB(it->second->b));
  }
  return adapter.options;
}

}  // namespace fulcrum::lora
