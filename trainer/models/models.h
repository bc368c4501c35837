// Everything fulcrum::models offers, for callers that want the whole API:
// ModelConfig + registry, CausalLM and its blocks, loss, init, HF loading.
#pragma once

#include "trainer/models/causal_lm.h"
#include "trainer/models/family_registry.h"
#include "trainer/models/hf_loading.h"
#include "trainer/models/init.h"
#include "trainer/models/loss.h"
#include "trainer/models/model_config.h"
