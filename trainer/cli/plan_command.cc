// fulcrum plan: the memory and time of a layout per rank, predicted before
// launch (trainer/plan), or with --search the layouts that fit, fastest first.
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/flags.h"
#include "trainer/loop/memory_check.h"
#include "trainer/loop/model_factory.h"
#include "trainer/metrics/flops.h"
#include "trainer/metrics/parameter_count.h"
#include "trainer/optim/adamw_bandwidth.h"
#include "trainer/plan/layout_search.h"
#include "trainer/plan/memory_model.h"
#include "trainer/plan/moe_overhead.h"
#include "trainer/plan/step_time_model.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::cli {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
// CPU ranks sharing a host's cores: a blocking collective costs mostly the
// wait for the slower rank. scripts/bench_plan.sh measured it on the 2-core
// development machine (tp against dp layouts of the 55M bench Llama: 1.0-2.4
// ms, sp's smaller gathers the cheaper).
constexpr double kCpuCollectiveLatencyUs = 2000;
// The fraction of the measured GEMM peak a CPU rank's training step keeps
// (scripts/bench_plan.sh, the 55M bench Llama on 2 ranks x 1 thread: 0.80
// with full recomputation, 0.84 LoRA, 0.86 full fine-tuning; the bench
// MoE's small experts 0.43).
constexpr char kCpuEfficiency[] = "0.8";

// Runs `measure` with this host's cores shared by `ranks` ranks, as mpirun
// gives each its share. Returns the measure and the threads it ran with.
template <typename Measure>
auto MeasureWithRankThreads(int64_t ranks, Measure measure) {
  const int cores = std::max(1u, std::thread::hardware_concurrency());
  const int threads = std::max<int>(1, cores / static_cast<int>(ranks));
  const int before = torch::get_num_threads();
  torch::set_num_threads(threads);
  auto value = measure();
  torch::set_num_threads(before);
  return std::make_pair(std::move(value), threads);
}

// A positive finite number, or an error naming the flag.
absl::StatusOr<double> PositiveNumber(const std::string& flag, const std::string& text) {
  double value = 0;
  if (!absl::SimpleAtod(text, &value) || !std::isfinite(value) || value <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("fulcrum plan: --", flag, ": expected a positive number, got '", text, "'"));
  }
  return value;
}

// A finite number >= 0, or an error naming the flag.
absl::StatusOr<double> NonNegativeNumber(const std::string& flag, const std::string& text) {
  double value = -1;
  if (!absl::SimpleAtod(text, &value) || !std::isfinite(value) || value < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("fulcrum plan: --", flag, ": expected a number >= 0, got '", text, "'"));
  }
  return value;
}

// "80GiB", "80GB", "512MiB", "1.5TiB", or plain bytes.
absl::StatusOr<double> ParseBytes(const std::string& flag, const std::string& text) {
  static const std::pair<const char*, double> kUnits[] = {
      {"TiB", kGiB * 1024}, {"GiB", kGiB}, {"MiB", 1024.0 * 1024},
      {"KiB", 1024.0},      {"TB", 1e12},  {"GB", 1e9},
      {"MB", 1e6},          {"KB", 1e3},   {"B", 1.0}};
  const std::string trimmed(absl::StripAsciiWhitespace(text));
  for (const auto& [unit, scale] : kUnits) {
    if (absl::EndsWith(trimmed, unit)) {
      const absl::StatusOr<double> number =
          PositiveNumber(flag, trimmed.substr(0, trimmed.size() - std::string(unit).size()));
      if (number.ok()) return *number * scale;
      break;
    }
  }
  double value = 0;
  if (absl::SimpleAtod(trimmed, &value) && std::isfinite(value) && value > 0) return value;
  return absl::InvalidArgumentError(absl::StrCat("fulcrum plan: --", flag,
                                                 ": expected a size like 80GiB, 512MiB or bytes, "
                                                 "got '",
                                                 text, "'"));
}

absl::StatusOr<int64_t> PositiveInt(const std::string& flag, const std::string& text) {
  int64_t value = 0;
  if (!absl::SimpleAtoi(text, &value) || value <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "fulcrum plan: --", flag, ": expected a positive whole number, got '", text, "'"));
  }
  return value;
}

struct PlanHardware {
  plan::Hardware hw;
  std::string description;
};

// --gpus: the GPUs the flags describe (defaults: 8 per node, 80 GiB, 989
// TFLOP/s bf16, NVLink 450 GB/s, 50 GB/s between nodes). Without: this
// host, one rank per recipe degree, its memory shared, a measured GEMM peak
// with the cores shared.
absl::StatusOr<PlanHardware> HardwareFrom(const ParsedFlags& flags, const recipe::Recipe& recipe,
                                          const models::ModelConfig& config) {
  PlanHardware out;
  plan::Hardware& hw = out.hw;
  const bool gpus = flags.values.count("gpus") > 0;
  const int64_t layout_ranks = recipe.parallel.dp * recipe.parallel.tp * recipe.parallel.pp;
  if (gpus) {
    FULCRUM_ASSIGN_OR_RETURN(hw.ranks, PositiveInt("gpus", flags.Get("gpus")));
  } else {
    hw.ranks = layout_ranks;
  }
  const std::string per_node = flags.Get("gpus-per-node", gpus ? "8" : "");
  if (per_node.empty()) {
    hw.ranks_per_node = hw.ranks;
  } else {
    FULCRUM_ASSIGN_OR_RETURN(hw.ranks_per_node, PositiveInt("gpus-per-node", per_node));
  }
  hw.ranks_per_node = std::min(hw.ranks_per_node, hw.ranks);
  std::string memory_from, flops_from;
  if (flags.values.count("gpu-memory")) {
    FULCRUM_ASSIGN_OR_RETURN(hw.memory_bytes, ParseBytes("gpu-memory", flags.Get("gpu-memory")));
    memory_from = "--gpu-memory";
  } else if (gpus || recipe.device == "cuda") {
    hw.memory_bytes = 80 * kGiB;
    memory_from = "default GPU";
  } else {
    hw.memory_bytes = loop::AvailableHostMemory() / static_cast<double>(hw.ranks);
    memory_from = absl::StrFormat("host MemAvailable / %d", hw.ranks);
  }
  if (flags.values.count("gpu-tflops")) {
    FULCRUM_ASSIGN_OR_RETURN(const double tflops,
                             PositiveNumber("gpu-tflops", flags.Get("gpu-tflops")));
    hw.peak_flops = tflops * 1e12;
    flops_from = "--gpu-tflops";
  } else if (gpus || recipe.device == "cuda") {
    hw.peak_flops = 989e12;
    flops_from = "default GPU, bf16 dense";
  } else {
    const auto [flops, threads] =
        MeasureWithRankThreads(hw.ranks, [] { return metrics::MeasureGemmFlops(); });
    hw.peak_flops = flops;
    flops_from = absl::StrFormat("measured fp32 GEMM, %d thread(s)", threads);
  }
  const bool cpu = !gpus && recipe.device != "cuda";
  std::string bandwidth_from = "--memory-gbps";
  if (flags.values.count("memory-gbps")) {
    FULCRUM_ASSIGN_OR_RETURN(const double gbps,
                             PositiveNumber("memory-gbps", flags.Get("memory-gbps")));
    hw.memory_bytes_per_s = gbps * 1e9;
  } else if (!cpu) {
    hw.memory_bytes_per_s = 3350e9;
    bandwidth_from = "default GPU HBM";
  } else {
    const auto [bandwidth, threads] =
        MeasureWithRankThreads(hw.ranks, [] { return optim::MeasureAdamWBandwidth(); });
    hw.memory_bytes_per_s = bandwidth;
    bandwidth_from = absl::StrFormat("measured by an AdamW update, %d thread(s)", threads);
  }
  // GPUs: NCCL's small-message latency inside a node.
  FULCRUM_ASSIGN_OR_RETURN(
      const double latency_us,
      PositiveNumber(
          "collective-latency-us",
          flags.Get("collective-latency-us", cpu ? absl::StrCat(kCpuCollectiveLatencyUs) : "20")));
  hw.collective_latency_s = latency_us * 1e-6;
  hw.overlaps_communication = !cpu;  // NCCL's own stream; MPI progresses in Wait()
  FULCRUM_ASSIGN_OR_RETURN(
      const double intra,
      PositiveNumber("intra-node-gbps", flags.Get("intra-node-gbps", cpu ? "5" : "450")));
  FULCRUM_ASSIGN_OR_RETURN(
      const double inter,
      PositiveNumber("inter-node-gbps", flags.Get("inter-node-gbps", cpu ? "5" : "50")));
  hw.intra_node_bytes_per_s = intra * 1e9;
  hw.inter_node_bytes_per_s = inter * 1e9;
  FULCRUM_ASSIGN_OR_RETURN(
      hw.efficiency,
      PositiveNumber("efficiency", flags.Get("efficiency", cpu ? kCpuEfficiency : "0.5")));
  if (hw.efficiency > 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "fulcrum plan: --efficiency: a fraction of the peak in (0, 1], got ", hw.efficiency));
  }
  // Parsed whatever the model, so that a bad value is an error everywhere.
  std::optional<double> moe_row_us;
  if (flags.values.count("moe-row-us")) {
    FULCRUM_ASSIGN_OR_RETURN(moe_row_us, NonNegativeNumber("moe-row-us", flags.Get("moe-row-us")));
  }
  std::string moe_from;
  if (config.moe.enabled()) {
    if (moe_row_us) {
      hw.moe_row_s = *moe_row_us * 1e-6;
      moe_from = "--moe-row-us";
    } else if (cpu) {
      const double rate = hw.peak_flops * hw.efficiency;
      const auto [seconds, threads] = MeasureWithRankThreads(
          hw.ranks, [&] { return plan::MeasureMoeRowSeconds(config, recipe, rate); });
      if (!seconds.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat(recipe.source, ": ", seconds.status().message()));
      }
      hw.moe_row_s = *seconds;
      moe_from = absl::StrFormat("measured, %d thread(s)", threads);
    } else {
      moe_from = "not measured on GPUs: give --moe-row-us";
    }
    moe_from = absl::StrFormat(", MoE layers %.3g us per routed row beyond their FLOPs (%s)",
                               hw.moe_row_s * 1e6, moe_from);
  }
  out.description = absl::StrFormat(
      "%d %s (%d per node), %s per rank (%s), %.4g TFLOP/s per rank (%s) at efficiency %.2f, "
      "memory %.0f GB/s per rank (%s), links %.0f GB/s in a node, %.0f GB/s between nodes, "
      "%.0f us per blocking collective, tp backward collectives %s%s",
      hw.ranks, cpu ? "CPU rank(s) on this host" : "GPU(s)", hw.ranks_per_node,
      plan::FormatBytes(hw.memory_bytes), memory_from, hw.peak_flops / 1e12, flops_from,
      hw.efficiency, hw.memory_bytes_per_s / 1e9, bandwidth_from, intra, inter, latency_us,
      hw.overlaps_communication ? "overlapped with their GEMMs" : "exposed (MPI)", moe_from);
  return out;
}

std::string Percent(double fraction) { return absl::StrFormat("%.1f%%", 100.0 * fraction); }

void PrintPlan(const recipe::Recipe& recipe, const plan::MemoryPlan& memory,
               const plan::StepTime& time, const plan::Hardware& hw) {
  const plan::StageMemory& worst = memory.worst_stage();
  const plan::MemoryBreakdown& b = worst.bytes;
  std::printf("layout: %s\n", plan::DescribeLayout(recipe).c_str());
  std::printf(
      "memory per rank, worst rank = pipeline stage %d of %d (%lld layers, %d micro-batch(es) in "
      "flight):\n",
      worst.stage, static_cast<int>(recipe.parallel.pp), static_cast<long long>(worst.layers),
      worst.in_flight);
  const std::pair<const char*, double> rows[] = {
      {"parameters", b.parameters},
      {"gradients", b.gradients},
      {"optimizer states", b.optimizer},
      {"LoRA adapters + state", b.lora},
      {"activations", b.activations},
      {"loss / backward peak", b.loss},
      {"communication buffers", b.communication},
      {"runtime (process)", b.runtime},
  };
  for (const auto& [name, bytes] : rows) {
    std::printf("  %-24s %12s\n", name, plan::FormatBytes(bytes).c_str());
  }
  std::printf("  %-24s %12s   (%s per layer per micro-batch)\n", "total",
              plan::FormatBytes(b.total()).c_str(),
              plan::FormatBytes(worst.layer_activations).c_str());
  for (const plan::StageMemory& stage : memory.stages) {
    if (memory.stages.size() > 1) {
      std::printf("  stage %d: %s (%d in flight)\n", stage.stage,
                  plan::FormatBytes(stage.bytes.total()).c_str(), stage.in_flight);
    }
  }
  const double margin = hw.memory_bytes - b.total();
  std::printf("fits: %s (%s of %s available, margin %s = %s)\n", margin >= 0 ? "yes" : "NO",
              plan::FormatBytes(b.total()).c_str(), plan::FormatBytes(hw.memory_bytes).c_str(),
              plan::FormatBytes(std::abs(margin)).c_str(),
              ((margin < 0 ? "-" : "") + Percent(std::abs(margin) / hw.memory_bytes)).c_str());
  std::printf("pipeline bubble: %s\n", Percent(time.bubble_fraction).c_str());
  if (time.stage_compute_s.size() > 1) {
    std::string stages;
    for (size_t stage = 0; stage < time.stage_compute_s.size(); ++stage) {
      absl::StrAppendFormat(&stages, "%sstage %d %.3f s", stage > 0 ? ", " : "",
                            static_cast<int>(stage), time.stage_compute_s[stage]);
    }
    std::printf("compute per rank of each stage: %s (the slowest paces the pipeline)\n",
                stages.c_str());
  }
  if (time.moe_rows > 0) {
    std::printf("MoE layers: %.0f routed rows per step on a rank, %.3f s beyond their FLOPs\n",
                time.moe_rows, time.moe_rows * hw.moe_row_s);
  }
  std::printf(
      "step time: %.3f s (compute %.3f s, tp %.3f s, ep %.3f s, pp %.3f s, latency %.3f s for "
      "%.0f blocking collectives, dp %.3f s, optimizer %.3f s), %.1f tokens/s, %.3g FLOPs per "
      "token\n",
      time.step_s, time.compute_s, time.tp_comm_s, time.ep_comm_s, time.pp_comm_s, time.latency_s,
      time.blocking_collectives, time.dp_comm_s, time.optimizer_s, time.tokens_per_s,
      time.flops_per_token);
}

void PrintSearch(const plan::LayoutSearch& search, int64_t top, const plan::Hardware& hw) {
  std::printf("search: %lld layouts of %lld ranks, %lld valid, %zu fit in %s per rank\n",
              static_cast<long long>(search.considered), static_cast<long long>(hw.ranks),
              static_cast<long long>(search.valid), search.fitting.size(),
              plan::FormatBytes(hw.memory_bytes).c_str());
  std::printf("%4s  %12s  %10s  %9s  %7s  %s\n", "rank", "tokens/s", "step s", "memory", "bubble",
              "layout");
  int64_t shown = 0;
  for (const plan::LayoutCandidate& c : search.fitting) {
    if (shown++ >= top) break;
    std::printf("%4lld  %12.1f  %10.4g  %9s  %7s  %s\n", static_cast<long long>(shown),
                c.time.tokens_per_s, c.time.step_s,
                plan::FormatBytes(c.memory.peak_bytes()).c_str(),
                Percent(c.time.bubble_fraction).c_str(), plan::DescribeLayout(c.recipe).c_str());
  }
}

}  // namespace

absl::Status RunPlan(const Args& args, const parallel::World& world) {
  FlagSpec spec;
  spec.valued = {"gpus",
                 "gpus-per-node",
                 "gpu-memory",
                 "gpu-tflops",
                 "efficiency",
                 "intra-node-gbps",
                 "inter-node-gbps",
                 "memory-gbps",
                 "collective-latency-us",
                 "moe-row-us",
                 "top"};
  spec.switches = {"search"};
  FULCRUM_ASSIGN_OR_RETURN(const ParsedFlags flags, ParseFlags("plan", args, spec));
  if (flags.positional.empty()) {
    return absl::InvalidArgumentError("fulcrum plan: missing RECIPE.yaml");
  }
  const std::vector<std::string> overrides(flags.positional.begin() + 1, flags.positional.end());
  FULCRUM_ASSIGN_OR_RETURN(const recipe::Recipe recipe,
                           recipe::LoadRecipe(flags.positional[0], overrides));
  FULCRUM_ASSIGN_OR_RETURN(const models::ModelConfig config,
                           loop::LoadRequestedConfig(recipe.model));
  FULCRUM_ASSIGN_OR_RETURN(const PlanHardware hardware, HardwareFrom(flags, recipe, config));
  const plan::Hardware& hw = hardware.hw;
  int64_t top = 10;
  if (flags.values.count("top")) {
    FULCRUM_ASSIGN_OR_RETURN(top, PositiveInt("top", flags.Get("top")));
  }
  const plan::MemoryOptions memory_options = plan::MemoryOptionsFor(
      flags.values.count("gpus") || recipe.device == "cuda" ? "cuda" : "cpu");
  if (!world.is_root()) return absl::OkStatus();
  const metrics::ParameterCounts counts = metrics::CountParameters(config);
  std::printf(
      "fulcrum plan: %s\nmodel: %s, %.4g parameters (%.4g in routed experts), %s "
      "fine-tuning, %s\nhardware: %s\n",
      recipe.source.c_str(), config.architecture.c_str(), static_cast<double>(counts.total()),
      static_cast<double>(counts.routed_experts), recipe.finetune.method.c_str(),
      recipe.precision.dtype.c_str(), hardware.description.c_str());
  if (flags.Has("search")) {
    FULCRUM_ASSIGN_OR_RETURN(const plan::LayoutSearch search,
                             plan::SearchLayouts(config, recipe, hw, memory_options));
    PrintSearch(search, top, hw);
    std::fflush(stdout);
    return absl::OkStatus();
  }
  FULCRUM_RETURN_IF_ERROR(recipe::ValidateRecipe(recipe, static_cast<int>(hw.ranks)));
  FULCRUM_RETURN_IF_ERROR(recipe::ValidateRecipeForModel(recipe, config));
  FULCRUM_ASSIGN_OR_RETURN(const plan::MemoryPlan memory,
                           plan::PlanMemory(config, recipe, memory_options));
  FULCRUM_ASSIGN_OR_RETURN(const plan::StepTime time, plan::EstimateStepTime(config, recipe, hw));
  PrintPlan(recipe, memory, time, hw);
  std::fflush(stdout);
  return absl::OkStatus();
}

}  // namespace fulcrum::cli
