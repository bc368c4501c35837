// `fulcrum export`'s work: a model directory that Hugging Face transformers,
// PEFT and inference engines load unchanged, written from an ExportSource one
// tensor at a time into a staging directory, checked by re-loading it
// (logit_self_check.h), and only then made visible.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "trainer/export/export_source.h"
#include "trainer/export/logit_self_check.h"

namespace fulcrum::exporter {

// "hf" | "merged" | "peft"; anything else names --format.
absl::StatusOr<ExportFormat> ParseExportFormat(const std::string& text);

struct ExportOptions {
  ExportFormat format = ExportFormat::kHf;
  std::string out_dir;
  std::optional<torch::ScalarType> dtype;  // of the weights written; unset: the model's
  int64_t max_shard_bytes = int64_t{5} << 30;
  bool self_check = true;
  // The largest logit difference the self-check accepts, relative to
  // max(1, the largest source logit); unset: by the dtype written
  // (DefaultSelfCheckTolerance).
  std::optional<double> self_check_tolerance;
};

// fp32 1e-5 (exact but for summation order), bf16 3e-2 and fp16 4e-3 (one
// rounding of every weight).
double DefaultSelfCheckTolerance(torch::ScalarType written);

// "fp32", "bf16", "fp16" (as --dtype spells them).
std::string DtypeFlagName(torch::ScalarType dtype);

struct ExportReport {
  int64_t tensors = 0;  // written
  int64_t bytes = 0;    // of tensor data written
  int64_t files = 0;    // weight files
  torch::ScalarType written = torch::kFloat;
  std::optional<SelfCheckReport> self_check;
  double tolerance = 0.0;  // absolute, when self-checked
  uint64_t checkpoint_bytes_read = 0;
};

// hf: the model (refused when it has adapters); merged: adapters folded into
// the weights; peft: the adapters alone (refused without). The directory
// appears at out_dir only when complete and self-checked; a failed
// self-check is an error that gives the figures and leaves nothing there.
absl::StatusOr<ExportReport> ExportModel(ExportSource& source, const ExportOptions& options);

}  // namespace fulcrum::exporter
