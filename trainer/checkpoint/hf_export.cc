#include "trainer/checkpoint/hf_export.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/status.h"

namespace fulcrum::checkpoint {
namespace fs = std::filesystem;
namespace {

std::string HfDtypeName(torch::ScalarType type) {
  switch (type) {
    case torch::kBFloat16:
      return "bfloat16";
    case torch::kHalf:
      return "float16";
    default:
      return "float32";
  }
}

}  // namespace

const std::vector<std::string>& HfSideFiles() {
  static const std::vector<std::string> kFiles = {"generation_config.json",
                                                  "tokenizer.json",
                                                  "tokenizer_config.json",
                                                  "special_tokens_map.json",
                                                  "tokenizer.model",
                                                  "vocab.json",
                                                  "merges.txt",
                                                  "added_tokens.json",
                                                  "chat_template.jinja"};
  return kFiles;
}

absl::StatusOr<std::optional<torch::ScalarType>> ParseExportDtype(const std::string& text) {
  if (text.empty() || text == "auto") return std::optional<torch::ScalarType>();
  if (text == "fp32" || text == "float32") return std::optional<torch::ScalarType>(torch::kFloat);
  if (text == "bf16" || text == "bfloat16") {
    return std::optional<torch::ScalarType>(torch::kBFloat16);
  }
  if (text == "fp16" || text == "float16") return std::optional<torch::ScalarType>(torch::kHalf);
  return absl::InvalidArgumentError(
      absl::StrCat("--dtype: unknown dtype '", text, "' (expected auto, fp32, bf16 or fp16)"));
}

absl::Status WriteHfConfigAndSideFiles(const std::string& dir, nlohmann::json config,
                                       std::optional<torch::ScalarType> written,
                                       const std::string& source_dir) {
  config.erase("quantization_config");
  if (written) {
    const std::string name = HfDtypeName(*written);
    if (config.contains("dtype")) config["dtype"] = name;
    if (config.contains("torch_dtype") || !config.contains("dtype")) config["torch_dtype"] = name;
  }
  FULCRUM_RETURN_IF_ERROR(
      WriteFileAtomically((fs::path(dir) / "config.json").string(), config.dump(2) + "\n"));
  if (source_dir.empty()) return absl::OkStatus();
  for (const std::string& name : HfSideFiles()) {
    const fs::path from = fs::path(source_dir) / name;
    std::error_code ec;
    if (!fs::is_regular_file(from, ec)) continue;
    fs::copy_file(from, fs::path(dir) / name, fs::copy_options::overwrite_existing, ec);
    if (ec) return absl::InternalError(absl::StrCat("copy ", from.string(), ": ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace fulcrum::checkpoint
