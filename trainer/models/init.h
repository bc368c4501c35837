// Deterministic random initialisation of a CausalLM (for `fulcrum init` and
// from-scratch training).
#pragma once

#include <cstdint>

#include "trainer/models/causal_lm.h"

namespace fulcrum::models {

// 2-D weights (linears, embedding) ~ N(0, initializer_range), 1-D norm weights
// = 1, biases = 0. Drawn on the CPU in fp32 from a generator seeded with
// `seed`, in named_parameters() order, then copied (so the values do not
// depend on the device, and the dtype only rounds them). Adapter (lora_*)
// parameters are left alone.
void InitializeWeights(CausalLMImpl& model, uint64_t seed);

}  // namespace fulcrum::models
