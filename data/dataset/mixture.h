// Weighted repetition of one dataset source's samples (DatasetSource.weight).
//
// Defines: WeightedRepeat.
#pragma once

#include <cstdint>
#include <vector>

#include "data/dataset/pretokenized_dataset.h"

namespace fulcrum::data {

// Appends `samples` floor(weight) times to *out, then a seed-deterministic
// choice of round((weight - floor(weight)) * n) distinct samples once more
// (in their original order). `stream` (e.g. the source's index) makes
// sources with the same seed choose independently. weight > 0 (checked).
void WeightedRepeat(const std::vector<Sample>& samples, double weight, uint64_t seed,
                    int64_t stream, std::vector<Sample>* out);

}  // namespace fulcrum::data
