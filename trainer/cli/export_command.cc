// fulcrum export --checkpoint CKPT --format hf|merged|peft --out DIR
//                [--adapter DIR] [--dtype auto|fp32|bf16|fp16] [--max-shard-size BYTES]
//                [--self-check true|false] [--self-check-tolerance X]
//
// CKPT is a training checkpoint (step directory, or a checkpoint.dir holding
// `latest`) or an HF model directory (with an optional PEFT --adapter). The
// export streams tensor by tensor (trainer/export): rank 0 does the work,
// other ranks of an mpirun return at once.
#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status.h"
#include "parallel/runtime/logger.h"
#include "trainer/checkpoint/hf_export.h"
#include "trainer/checkpoint/sharded_checkpoint.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/flags.h"
#include "trainer/export/export_source.h"
#include "trainer/export/model_export.h"
#include "trainer/metrics/memory.h"
#include "trainer/models/moe_block.h"

namespace fulcrum::cli {
namespace fs = std::filesystem;
namespace {

absl::StatusOr<std::unique_ptr<exporter::ExportSource>> OpenSource(
    const std::string& checkpoint_path, const std::string& adapter) {
  if (!fs::exists(checkpoint_path)) {
    return absl::NotFoundError(absl::StrCat("--checkpoint: ", checkpoint_path, ": no such path"));
  }
  if (checkpoint::IsTrainCheckpoint(checkpoint_path) ||
      fs::is_regular_file(fs::path(checkpoint_path) / "latest")) {
    if (!adapter.empty()) {
      return absl::InvalidArgumentError(
          "--adapter applies to an HF model directory, not to a "
          "training checkpoint");
    }
    FULCRUM_ASSIGN_OR_RETURN(const std::string dir,
                             checkpoint::ResolveCheckpoint(checkpoint_path, checkpoint_path));
    return exporter::ExportSource::FromTrainCheckpoint(dir);
  }
  return exporter::ExportSource::FromHfDirectory(checkpoint_path, adapter);
}

// Adapters on routed experts are valid PEFT (transformers' per-expert
// modules load them), but engines that fuse the experts into one tensor may
// not, and adapters on routers load only where the router is an nn.Linear:
// say so rather than let a serving stack drop them silently.
void WarnAboutMoeAdapters(const exporter::ExportSource& source, const parallel::Logger& log) {
  std::vector<std::string> experts, routers;
  for (const std::string& path : source.adapted_modules()) {
    if (models::IsRoutedExpertParameter(path)) experts.push_back(path);
    if (lora::LastComponent(path) == "gate") routers.push_back(path);
  }
  if (!routers.empty()) {
    log.Warn("fulcrum export --format peft: ", routers.size(), " adapted modules are MoE routers (",
             routers.front(),
             ", ...). PEFT loads them where the router is an nn.Linear (Mixtral, Qwen-MoE) but "
             "not on DeepSeek's gate, and inference engines do not apply LoRA to routers: for "
             "those, export --format merged.");
  }
  if (experts.empty()) return;
  log.Warn("fulcrum export --format peft: ", experts.size(), " of the adapter's ",
           source.adapted_modules().size(), " adapted modules are routed experts (",
           experts.front(),
           ", ...). Hugging Face PEFT loads them onto transformers' per-expert modules, but "
           "inference engines that fuse the experts into one weight (vLLM, SGLang) may not "
           "apply LoRA to routed experts: for those, export --format merged, or train with "
           "finetune.lora.targets that leave the experts out.");
}

absl::StatusOr<exporter::ExportOptions> ParseOptions(const ParsedFlags& flags) {
  exporter::ExportOptions options;
  FULCRUM_ASSIGN_OR_RETURN(options.format, exporter::ParseExportFormat(flags.Get("format")));
  FULCRUM_ASSIGN_OR_RETURN(options.dtype, checkpoint::ParseExportDtype(flags.Get("dtype")));
  if (!flags.Get("max-shard-size").empty() &&
      (!absl::SimpleAtoi(flags.Get("max-shard-size"), &options.max_shard_bytes) ||
       options.max_shard_bytes <= 0)) {
    return absl::InvalidArgumentError("fulcrum export: --max-shard-size: expected bytes > 0");
  }
  const std::string self_check = flags.Get("self-check", "true");
  if (self_check != "true" && self_check != "false") {
    return absl::InvalidArgumentError(
        absl::StrCat("fulcrum export: --self-check: '", self_check, "' is not true or false"));
  }
  options.self_check = self_check == "true";
  if (!flags.Get("self-check-tolerance").empty()) {
    double tolerance = 0.0;
    if (!absl::SimpleAtod(flags.Get("self-check-tolerance"), &tolerance) || !(tolerance > 0.0)) {
      return absl::InvalidArgumentError(
          "fulcrum export: --self-check-tolerance: expected a number > 0");
    }
    options.self_check_tolerance = tolerance;
  }
  options.out_dir = flags.Get("out");
  return options;
}

}  // namespace

absl::Status RunExport(const Args& args, const parallel::World& world) {
  FlagSpec spec;
  spec.valued = {"checkpoint", "format",         "out",        "adapter",
                 "dtype",      "max-shard-size", "self-check", "self-check-tolerance"};
  spec.required = {"checkpoint", "format", "out"};
  FULCRUM_ASSIGN_OR_RETURN(const ParsedFlags flags, ParseFlags("export", args, spec));
  FULCRUM_ASSIGN_OR_RETURN(const exporter::ExportOptions options, ParseOptions(flags));
  FULCRUM_ASSIGN_OR_RETURN(std::unique_ptr<exporter::ExportSource> source,
                           OpenSource(flags.Get("checkpoint"), flags.Get("adapter")));
  if (!world.is_root()) return absl::OkStatus();

  const auto start = std::chrono::steady_clock::now();
  FULCRUM_ASSIGN_OR_RETURN(const exporter::ExportReport report,
                           exporter::ExportModel(*source, options));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const parallel::Logger log(world.rank(), false);
  log.Info(absl::StrFormat(
      "fulcrum export: %d tensors (%.1f MB, %s) in %d file(s) to %s in %.2f s; %.1f MB read from "
      "the checkpoint; peak memory %.1f MB",
      report.tensors, report.bytes / 1e6, exporter::DtypeFlagName(report.written), report.files,
      options.out_dir, seconds, report.checkpoint_bytes_read / 1e6,
      metrics::CurrentMemoryUsage().peak_rss_bytes / 1e6));
  if (report.self_check) {
    log.Info(absl::StrFormat(
        "export self-check: logits of a fixed %d-token prompt, max |diff| %.3g (largest logit "
        "%.3g, tolerance %.3g)",
        report.self_check->tokens, report.self_check->max_abs_diff,
        report.self_check->max_abs_logit, report.tolerance));
  }
  if (options.format == exporter::ExportFormat::kPeft) WarnAboutMoeAdapters(*source, log);
  return absl::OkStatus();
}

}  // namespace fulcrum::cli
