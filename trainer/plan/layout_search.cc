#include "trainer/plan/layout_search.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status.h"

namespace fulcrum::plan {
namespace {

std::vector<int64_t> Divisors(int64_t n) {
  std::vector<int64_t> out;
  for (int64_t d = 1; d <= n; ++d) {
    if (n % d == 0) out.push_back(d);
  }
  return out;
}

// The pipeline variants of `pp` stages: (schedule, virtual stages).
std::vector<std::pair<std::string, int64_t>> PipelineVariants(int64_t pp) {
  if (pp == 1) return {{"1f1b", 1}};
  return {{"1f1b", 1}, {"zb_h1", 1}, {"gpipe", 1}, {"interleaved_1f1b", 2}};
}

// Every layout of `ranks` ranks over the base recipe (unvalidated).
std::vector<recipe::Recipe> EnumerateLayouts(const models::ModelConfig& config,
                                             const recipe::Recipe& base, int64_t ranks) {
  std::vector<recipe::Recipe> out;
  const bool moe = config.moe.enabled();
  for (int64_t tp : Divisors(ranks)) {
    for (int64_t pp : Divisors(ranks / tp)) {
      const int64_t dp = ranks / (tp * pp);
      if (base.batch.global_batch % dp != 0) continue;
      const int64_t per_dp = base.batch.global_batch / dp;
      for (int64_t ep : moe ? Divisors(dp) : std::vector<int64_t>{1}) {
        for (const auto& [schedule, virtual_stages] : PipelineVariants(pp)) {
          for (int64_t micro : Divisors(per_dp)) {
            for (int64_t zero : dp > 1 ? std::vector<int64_t>{0, 1} : std::vector<int64_t>{0}) {
              for (bool sp : tp > 1 ? std::vector<bool>{false, true} : std::vector<bool>{false}) {
                recipe::Recipe r = base;
                recipe::ParallelSection& par = r.parallel;
                par.tp = tp;
                par.pp = pp;
                par.dp = dp;
                par.ep = ep;
                par.pp_schedule = schedule;
                par.pp_virtual = virtual_stages;
                par.pp_layers.clear();
                par.zero = zero;
                par.sequence_parallel = sp;
                r.batch.micro_batch = micro;
                out.push_back(std::move(r));
              }
            }
          }
        }
      }
    }
  }
  return out;
}

}  // namespace

std::string DescribeLayout(const recipe::Recipe& recipe) {
  const recipe::ParallelSection& par = recipe.parallel;
  std::string pipeline;
  if (par.pp > 1) {
    pipeline = par.pp_virtual > 1
                   ? absl::StrFormat(" (%s, %d virtual)", par.pp_schedule, par.pp_virtual)
                   : absl::StrCat(" (", par.pp_schedule, ")");
  }
  return absl::StrFormat("tp %d x pp %d%s x dp %d%s%s%s, micro-batch %d, recompute %s", par.tp,
                         par.pp, pipeline, par.dp, par.ep > 1 ? absl::StrCat(", ep ", par.ep) : "",
                         par.sequence_parallel ? ", sp" : "", par.zero == 1 ? ", zero 1" : "",
                         recipe.batch.micro_batch, RecomputeMode(recipe));
}

absl::StatusOr<LayoutSearch> SearchLayouts(const models::ModelConfig& config,
                                           const recipe::Recipe& base, const Hardware& hardware,
                                           const MemoryOptions& memory) {
  LayoutSearch search;
  for (recipe::Recipe& r : EnumerateLayouts(config, base, hardware.ranks)) {
    ++search.considered;
    if (!recipe::ValidateRecipe(r, static_cast<int>(hardware.ranks)).ok() ||
        !recipe::ValidateRecipeForModel(r, config).ok()) {
      continue;
    }
    ++search.valid;
    FULCRUM_ASSIGN_OR_RETURN(MemoryPlan plan, PlanMemory(config, r, memory));
    if (hardware.memory_bytes > 0 && plan.peak_bytes() > hardware.memory_bytes) continue;
    FULCRUM_ASSIGN_OR_RETURN(StepTime time, EstimateStepTime(config, r, hardware));
    search.fitting.push_back(LayoutCandidate{std::move(r), std::move(plan), time});
  }
  std::stable_sort(search.fitting.begin(), search.fitting.end(),
                   [](const LayoutCandidate& a, const LayoutCandidate& b) {
                     return a.time.tokens_per_s > b.time.tokens_per_s;
                   });
  return search;
}

}  // namespace fulcrum::plan
