#include "trainer/loop/memory_check.h"

#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace fulcrum::loop {

TrainingStateEstimate EstimateTrainingState(const metrics::ParameterCounts& counts,
                                            const recipe::Recipe& recipe) {
  const recipe::ParallelSection& par = recipe.parallel;
  const double pp = static_cast<double>(par.pp), ep = static_cast<double>(par.ep);
  // tp splits nearly everything (norms and routers, replicated, are small).
  const double tp = static_cast<double>(par.tp);
  const double dense = static_cast<double>(counts.other) / (pp * tp);
  const double experts = static_cast<double>(counts.routed_experts) / (pp * ep * tp);
  const bool bf16 = recipe.precision.dtype == "bf16";
  const double weight = bf16 ? 2.0 : 4.0;
  TrainingStateEstimate e;
  e.params_per_rank = dense + experts;
  e.expert_params_per_rank = experts;
  if (recipe.finetune.method == "lora") {
    // A frozen base: its weights only (the adapters are small).
    e.bytes_per_rank = weight * e.params_per_rank;
    return e;
  }
  // Gradient like the weight; AdamW's two fp32 moments, plus an fp32 master
  // for bf16 weights, sharded by ZeRO-1 over dp (experts: dp / ep).
  const double optimizer = 8.0 + (bf16 ? 4.0 : 0.0);
  const bool zero = par.zero == 1;
  const double dense_shards = zero ? static_cast<double>(par.dp) : 1.0;
  const double expert_shards = zero ? static_cast<double>(par.dp) / ep : 1.0;
  e.bytes_per_rank = 2 * weight * e.params_per_rank + optimizer * dense / dense_shards +
                     optimizer * experts / expert_shards;
  return e;
}

absl::Status CheckTrainingStateFits(const TrainingStateEstimate& estimate,
                                    const metrics::ParameterCounts& counts,
                                    const recipe::Recipe& recipe, double available_bytes_per_rank) {
  if (available_bytes_per_rank <= 0 || estimate.bytes_per_rank <= available_bytes_per_rank) {
    return absl::OkStatus();
  }
  const recipe::ParallelSection& par = recipe.parallel;
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  std::string split = absl::StrFormat("tp=%d, pp=%d", par.tp, par.pp);
  if (counts.routed_experts > 0) {
    absl::StrAppendFormat(&split, ", %.3g of %.3g routed-expert parameters per rank at ep=%d",
                          estimate.expert_params_per_rank,
                          static_cast<double>(counts.routed_experts), par.ep);
  }
  return absl::ResourceExhaustedError(absl::StrFormat(
      "%s: parallel: this layout needs about %.1f GiB per rank for the %s's weights, gradients "
      "and optimizer state alone (%.3g parameters per rank; %s%s), more than the %.1f GiB "
      "available to each rank here: raise %sparallel.tp, parallel.pp%s",
      recipe.source.empty() ? "recipe" : recipe.source, estimate.bytes_per_rank / kGiB,
      recipe.finetune.method == "lora" ? "frozen base" : "model", estimate.params_per_rank, split,
      par.zero == 1 ? ", ZeRO-1" : "", available_bytes_per_rank / kGiB,
      counts.routed_experts > 0 ? "parallel.ep, " : "",
      recipe.finetune.method == "lora"
          ? ""
          : ", set parallel.zero: 1, or fine-tune with finetune.method: lora"));
}

double AvailableHostMemory() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  double kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024.0;
  }
  return 0.0;
}

}  // namespace fulcrum::loop
