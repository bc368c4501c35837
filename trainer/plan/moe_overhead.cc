#include "trainer/plan/moe_overhead.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/status.h"
#include "trainer/loop/model_factory.h"
#include "trainer/lora/apply_lora.h"
#include "trainer/lora/frozen_weight_layout.h"
#include "trainer/models/moe_block.h"

namespace fulcrum::plan {
namespace {

constexpr double kMaxProbeWeightBytes = 1024.0 * 1024 * 1024;
constexpr int kWarmups = 2;
constexpr int kRuns = 7;

struct ProbeRun {
  double seconds = 0;  // the fastest forward and backward
  double flops = 0;    // as the step model counts them
  double rows = 0;     // routed rows
};

// A block of `probe`'s experts routes `tokens` tokens, forward and backward:
// the fastest of the runs, the one the host disturbed least (7-12 us a row
// by the median on the bench MoE across runs, 6.4-6.9 by the fastest).
absl::StatusOr<ProbeRun> TimeProbe(const models::ModelConfig& probe, const recipe::Recipe& recipe,
                                   int64_t tokens) {
  models::MoeBlock block(probe, torch::TensorOptions().dtype(torch::kFloat));
  {
    torch::NoGradGuard no_grad;
    for (torch::Tensor& p : block->parameters()) p.normal_(0.0, 0.02);
    for (torch::Tensor& b : block->buffers()) b.zero_();
  }
  const bool lora = recipe.finetune.method == "lora";
  if (lora) {
    const std::vector<std::string>& targets = recipe.finetune.lora.targets;
    FULCRUM_RETURN_IF_ERROR(
        lora::ApplyLoraWhere(
            *block, loop::LoraOptionsFrom(recipe.finetune.lora).spec,
            [&](const std::string& path) { return lora::TargetsSelect(targets, path); })
            .status());
    // As training stores them (trainer_setup.cc).
    lora::StoreAliasedFrozenWeightsColumnMajor(*block);
  }
  block->train();

  const torch::Tensor x = torch::randn({1, tokens, probe.hidden_size});
  std::vector<double> seconds;
  for (int run = 0; run < kWarmups + kRuns; ++run) {
    const torch::Tensor input = x.clone().requires_grad_(true);
    const auto start = std::chrono::steady_clock::now();
    block->forward(input).sum().backward();
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    if (run >= kWarmups) seconds.push_back(took.count());
  }
  std::sort(seconds.begin(), seconds.end());

  // 2 FLOPs per weight and row forward, 4 more backward (LoRA's frozen
  // weights 2: the input's gradient only; its adapters 4).
  const models::MoeConfig& moe = probe.moe;
  const double h = static_cast<double>(probe.hidden_size);
  const double n = static_cast<double>(tokens);
  const double experts = static_cast<double>(moe.num_experts);
  const double rows = n * static_cast<double>(moe.experts_per_token);
  const double forward =
      2 * (rows * 3 * h * static_cast<double>(moe.expert_intermediate_size) +
           n * 3 * h * static_cast<double>(moe.shared_intermediate_size) + n * h * experts);
  double flops = forward * (lora ? 2.0 : 3.0);
  for (const lora::LoraLayer& l : lora::LoraLayers(*block)) {
    if (!l.layer->has_adapter()) continue;
    const double params =
        static_cast<double>(l.layer->lora_a().numel() + l.layer->lora_b().numel());
    const bool routed = models::IsRoutedExpertParameter(l.path + ".weight");
    flops += 6 * params * (routed ? rows / experts : n);
  }
  return ProbeRun{seconds.front(), flops, rows};
}

}  // namespace

absl::StatusOr<double> MeasureMoeRowSeconds(const models::ModelConfig& config,
                                            const recipe::Recipe& recipe, double flops_per_s) {
  FULCRUM_CHECK(config.moe.enabled(), "MeasureMoeRowSeconds needs a MoE config");
  FULCRUM_CHECK(flops_per_s > 0, "MeasureMoeRowSeconds needs a FLOP rate");
  const models::MoeConfig& moe = config.moe;
  const double h = static_cast<double>(config.hidden_size);
  const double inter = static_cast<double>(moe.expert_intermediate_size);
  // The experts one rank holds, each receiving the rows it would: under ep
  // those of every rank of the group, ep x tokens x k / E.
  const int64_t ep = std::max<int64_t>(1, recipe.parallel.ep);
  const double tokens = static_cast<double>(recipe.batch.micro_batch * recipe.batch.seq_len);
  const double rows_per_expert = static_cast<double>(ep) * tokens *
                                 static_cast<double>(moe.experts_per_token) /
                                 static_cast<double>(moe.num_experts);
  int64_t experts = std::max<int64_t>(1, moe.num_experts / ep);
  const double bytes_per_expert = 3 * h * inter * 4;
  while (experts > 1 && static_cast<double>(experts) * bytes_per_expert > kMaxProbeWeightBytes) {
    experts /= 2;
  }
  const int64_t top_k = std::min(moe.experts_per_token, experts);
  const int64_t probe_tokens = std::max<int64_t>(
      1, std::llround(rows_per_expert * static_cast<double>(experts) / static_cast<double>(top_k)));
  models::ModelConfig probe = config;
  probe.moe.num_experts = experts;
  probe.moe.experts_per_token = top_k;
  probe.moe.n_group = 1;  // group-limited routing needs divisible counts
  probe.moe.topk_group = 1;
  FULCRUM_ASSIGN_OR_RETURN(const ProbeRun run, TimeProbe(probe, recipe, probe_tokens));
  return std::max(0.0, run.seconds - run.flops / flops_per_s) / run.rows;
}

}  // namespace fulcrum::plan
