// Held-out validation split by fraction.
//
// Defines: SplitSamples, SplitValidation.
#pragma once

#include <cstdint>
#include <vector>

#include "data/dataset/pretokenized_dataset.h"

namespace fulcrum::data {

struct SplitSamples {
  std::vector<Sample> train, validation;
};

// Moves round(fraction * n) samples, chosen seed-deterministically, into
// `validation`; both parts keep the input order. When fraction > 0 and there
// are >= 2 samples, validation gets at least 1 and train at least 1 (never
// all); fraction <= 0 (or NaN) or fewer than 2 samples: everything is train.
// The same (samples, fraction, seed) always gives the same split.
SplitSamples SplitValidation(std::vector<Sample> samples, double fraction, uint64_t seed);

}  // namespace fulcrum::data
