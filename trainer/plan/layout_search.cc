#include "trainer/plan/layout_search.h"

#include <algorithm>
#include <functional>
#include <string>
#include <utility>
#include <vector>

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

// One axis of the search: the variants of a recipe along it.
using Axis = std::function<std::vector<recipe::Recipe>(const recipe::Recipe&)>;

// Each variant of `values` for r, written by `set`.
template <typename T, typename Set>
std::vector<recipe::Recipe> Variants(const recipe::Recipe& r, const std::vector<T>& values,
                                     Set set) {
  std::vector<recipe::Recipe> out;
  for (const T& value : values) {
    recipe::Recipe v = r;
    set(v, value);
    out.push_back(std::move(v));
  }
  return out;
}

// Every layout of `ranks` ranks over the base recipe (unvalidated): the
// product of the axes.
std::vector<recipe::Recipe> EnumerateLayouts(const models::ModelConfig& config,
                                             const recipe::Recipe& base, int64_t ranks) {
  const bool moe = config.moe.enabled();
  const std::vector<Axis> axes = {
      // tp x pp, dp the rest.
      [&](const recipe::Recipe& r) {
        std::vector<recipe::Recipe> out;
        for (int64_t tp : Divisors(ranks)) {
          for (int64_t pp : Divisors(ranks / tp)) {
            recipe::Recipe v = r;
            v.parallel.tp = tp;
            v.parallel.pp = pp;
            v.parallel.dp = ranks / (tp * pp);
            v.parallel.pp_layers.clear();
            out.push_back(std::move(v));
          }
        }
        return out;
      },
      [&](const recipe::Recipe& r) {
        return Variants(r, moe ? Divisors(r.parallel.dp) : std::vector<int64_t>{1},
                        [](recipe::Recipe& v, int64_t ep) { v.parallel.ep = ep; });
      },
      // (schedule, virtual stages)
      [](const recipe::Recipe& r) {
        std::vector<std::pair<std::string, int64_t>> pipelines = {{"1f1b", 1}};
        if (r.parallel.pp > 1) {
          pipelines.insert(pipelines.end(), {{"zb_h1", 1}, {"gpipe", 1}, {"interleaved_1f1b", 2}});
        }
        return Variants(r, pipelines, [](recipe::Recipe& v, const auto& p) {
          v.parallel.pp_schedule = p.first;
          v.parallel.pp_virtual = p.second;
        });
      },
      [](const recipe::Recipe& r) {
        const int64_t per_dp = r.batch.global_batch / r.parallel.dp;
        return Variants(
            r,
            r.batch.global_batch % r.parallel.dp == 0 ? Divisors(per_dp) : std::vector<int64_t>{},
            [](recipe::Recipe& v, int64_t micro) { v.batch.micro_batch = micro; });
      },
      [](const recipe::Recipe& r) {
        return Variants(r, r.parallel.dp > 1 ? std::vector<int64_t>{0, 1} : std::vector<int64_t>{0},
                        [](recipe::Recipe& v, int64_t zero) { v.parallel.zero = zero; });
      },
      [](const recipe::Recipe& r) {
        return Variants(
            r, r.parallel.tp > 1 ? std::vector<bool>{false, true} : std::vector<bool>{false},
            [](recipe::Recipe& v, bool sp) { v.parallel.sequence_parallel = sp; });
      },
      [](const recipe::Recipe& r) {
        return Variants(
            r, std::vector<std::string>{"none", "selective", "full"},
            [](recipe::Recipe& v, const std::string& mode) { v.train.recompute = mode; });
      },
  };
  std::vector<recipe::Recipe> layouts = {base};
  for (const Axis& axis : axes) {
    std::vector<recipe::Recipe> next;
    for (const recipe::Recipe& r : layouts) {
      for (recipe::Recipe& v : axis(r)) next.push_back(std::move(v));
    }
    layouts = std::move(next);
  }
  return layouts;
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
