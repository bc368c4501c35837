// Builds the data loader a recipe describes, for one data-parallel rank:
// loads the data set, checks its ids against the model's vocabulary, and
// shards the global batch.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "data/dataset/loader.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::loop {

absl::StatusOr<data::DataLoader> BuildDataLoader(const recipe::Recipe& recipe, int64_t vocab_size,
                                                 int64_t dp_rank, int64_t dp_size);

}  // namespace fulcrum::loop
