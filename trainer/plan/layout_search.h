// `fulcrum plan --search`: every layout of a recipe's model on `ranks`
// ranks — tp, pp, ep, dp, the pipeline schedule and its virtual stages,
// sequence parallelism, ZeRO-1, the micro-batch and train.recompute —
// that the recipe's own validation accepts (ValidateRecipe and
// ValidateRecipeForModel: divisibility of heads, ffn, vocab, experts and
// layers, batch arithmetic, schedule shapes), with its predicted memory and
// step time; those that fit ranked by tokens/s.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "trainer/models/model_config.h"
#include "trainer/plan/memory_model.h"
#include "trainer/plan/step_time_model.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::plan {

struct LayoutCandidate {
  recipe::Recipe recipe;  // the base recipe with this layout's keys
  MemoryPlan memory;
  StepTime time;
};

struct LayoutSearch {
  int64_t considered = 0;                // layouts enumerated
  int64_t valid = 0;                     // of which the recipe validation accepts
  std::vector<LayoutCandidate> fitting;  // valid ones within hardware.memory_bytes, fastest first
};

absl::StatusOr<LayoutSearch> SearchLayouts(const models::ModelConfig& config,
                                           const recipe::Recipe& base, const Hardware& hardware,
                                           const MemoryOptions& memory);

// "tp 2 x pp 2 (1f1b) x dp 2, ep 2, sp, zero 1, micro-batch 4, recompute none".
std::string DescribeLayout(const recipe::Recipe& recipe);

}  // namespace fulcrum::plan
