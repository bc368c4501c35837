#include "trainer/export/model_export.h"

#include <cstdlib>
#include <filesystem>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/file_util.h"
#include "core/status.h"
#include "trainer/checkpoint/hf_export.h"
#include "trainer/checkpoint/hf_weights.h"

namespace fulcrum::exporter {
namespace fs = std::filesystem;
namespace {

// Test hook: FULCRUM_TEST_EXPORT_SWAP="NAME_A,NAME_B" writes each of two
// same-shaped tensors in the other's place, so that a test can show the
// self-check catching a broken export.
std::map<std::string, std::string> SwappedForTest() {
  std::map<std::string, std::string> swap;
  const char* env = std::getenv("FULCRUM_TEST_EXPORT_SWAP");
  if (env == nullptr) return swap;
  const std::vector<std::string> names = absl::StrSplit(env, ',');
  if (names.size() == 2) {
    swap[names[0]] = names[1];
    swap[names[1]] = names[0];
  }
  return swap;
}

absl::Status WriteWeights(ExportSource& source, const ExportOptions& options,
                          const std::string& staged, ExportReport& report) {
  const bool merge = options.format == ExportFormat::kMerged;
  std::vector<checkpoint::NamedTensor> specs;
  for (const checkpoint::NamedTensor& spec : source.specs()) {
    const torch::ScalarType dtype = options.dtype.value_or(spec.tensor.scalar_type());
    specs.push_back(
        {spec.name, torch::empty(spec.tensor.sizes(),
                                 torch::TensorOptions().dtype(dtype).device(torch::kMeta))});
    report.bytes += spec.tensor.numel() * c10::elementSize(dtype);
  }
  report.tensors = static_cast<int64_t>(specs.size());
  report.written = options.dtype.value_or(source.dtype());
  const std::map<std::string, std::string> swapped = SwappedForTest();
  const auto produce = [&](size_t i) -> absl::StatusOr<torch::Tensor> {
    const auto it = swapped.find(specs[i].name);
    const std::string& name = it == swapped.end() ? specs[i].name : it->second;
    FULCRUM_ASSIGN_OR_RETURN(const torch::Tensor value,
                             merge ? source.MergedValue(name) : source.Value(name));
    return value.to(specs[i].tensor.scalar_type());
  };
  FULCRUM_RETURN_IF_ERROR(
      checkpoint::WriteHfWeightsStreamed(staged, specs, produce, options.max_shard_bytes));
  for (const auto& entry : fs::directory_iterator(staged)) {
    if (entry.path().extension() == ".safetensors") ++report.files;
  }
  return checkpoint::WriteHfConfigAndSideFiles(staged, source.config().raw, report.written,
                                               source.source_dir());
}

absl::Status WriteAdapter(ExportSource& source, const ExportOptions& options,
                          const std::string& staged, ExportReport& report) {
  std::vector<lora::AdapterValues> adapters;
  for (const std::string& module : source.adapted_modules()) {
    FULCRUM_ASSIGN_OR_RETURN(lora::AdapterValues values, source.Adapter(module));
    if (options.dtype) {
      values.a = values.a.to(*options.dtype);
      values.b = values.b.to(*options.dtype);
    }
    report.bytes +=
        values.a.numel() * values.a.element_size() + values.b.numel() * values.b.element_size();
    report.written = values.a.scalar_type();
    adapters.push_back(std::move(values));
  }
  report.tensors = 2 * static_cast<int64_t>(adapters.size());
  report.files = 1;
  return lora::WritePeftAdapterFiles(adapters, source.lora_spec(), source.base_path(), staged);
}

absl::Status SelfCheck(ExportSource& source, const ExportOptions& options,
                       const std::string& staged, ExportReport& report) {
  FULCRUM_ASSIGN_OR_RETURN(report.self_check, CompareExportLogits(source, staged, options.format));
  const SelfCheckReport& check = *report.self_check;
  const double relative =
      options.self_check_tolerance.value_or(DefaultSelfCheckTolerance(report.written));
  report.tolerance = relative * std::max(1.0, check.max_abs_logit);
  if (check.max_abs_diff <= report.tolerance) return absl::OkStatus();
  return absl::DataLossError(absl::StrFormat(
      "%s: export self-check failed: the logits of a fixed %d-token prompt differ by up to %.3g "
      "between the model exported and the export read back (largest logit %.3g, tolerance "
      "%.3g = %.3g x max(1, largest logit) for %s weights); nothing was written. "
      "--self-check-tolerance sets another bound",
      options.out_dir, check.tokens, check.max_abs_diff, check.max_abs_logit, report.tolerance,
      relative, DtypeFlagName(report.written)));
}

}  // namespace

absl::StatusOr<ExportFormat> ParseExportFormat(const std::string& text) {
  if (text == "hf") return ExportFormat::kHf;
  if (text == "merged") return ExportFormat::kMerged;
  if (text == "peft") return ExportFormat::kPeft;
  return absl::InvalidArgumentError(
      absl::StrCat("fulcrum export: --format: '", text, "' is not one of hf, merged, peft"));
}

std::string DtypeFlagName(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kBFloat16:
      return "bf16";
    case torch::kHalf:
      return "fp16";
    case torch::kFloat:
      return "fp32";
    default:
      return c10::toString(dtype);
  }
}

double DefaultSelfCheckTolerance(torch::ScalarType written) {
  switch (written) {
    case torch::kBFloat16:
      return 3e-2;
    case torch::kHalf:
      return 4e-3;
    default:
      return 1e-5;
  }
}

absl::StatusOr<ExportReport> ExportModel(ExportSource& source, const ExportOptions& options) {
  if (options.format == ExportFormat::kPeft && !source.has_adapters()) {
    return absl::InvalidArgumentError(
        "fulcrum export --format peft: the checkpoint has no LoRA adapter (full fine-tune: use "
        "hf)");
  }
  if (options.format == ExportFormat::kHf && source.has_adapters()) {
    return absl::InvalidArgumentError(
        "fulcrum export --format hf: the model has LoRA adapters; use --format merged (folded into "
        "the weights) or --format peft (the adapter alone)");
  }
  FULCRUM_ASSIGN_OR_RETURN(const std::string staged, MakeStagingDirectory(options.out_dir));
  ExportReport report;
  absl::Status status = options.format == ExportFormat::kPeft
                            ? WriteAdapter(source, options, staged, report)
                            : WriteWeights(source, options, staged, report);
  if (status.ok() && options.self_check) status = SelfCheck(source, options, staged, report);
  if (!status.ok()) {
    std::error_code ec;
    fs::remove_all(staged, ec);
    return status;
  }
  report.checkpoint_bytes_read = source.checkpoint_bytes_read();
  FULCRUM_RETURN_IF_ERROR(PublishDirectory(staged, options.out_dir));
  return report;
}

}  // namespace fulcrum::exporter
