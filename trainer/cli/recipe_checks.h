// What `fulcrum validate` checks beyond the recipe itself, without training:
// the model's config and weights (names and shapes, read from the safetensors
// headers only), LoRA targets, sequence length, the tensor-parallel
// divisibility of heads, kv heads, ffn and vocab (recipe::ValidateParallelForModel),
// and the data set.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::cli {

struct RecipeReport {
  std::string summary;  // human-readable lines
};

absl::StatusOr<RecipeReport> CheckRecipeResources(const recipe::Recipe& recipe);

}  // namespace fulcrum::cli
