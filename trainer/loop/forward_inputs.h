// A micro-batch as the model's forward takes it on the training device.
#pragma once

#include <torch/torch.h>

#include "data/dataset/loader.h"
#include "trainer/models/causal_lm.h"

namespace fulcrum::loop {

// Ids and positions go to `device` asynchronously (PrefetchingLoader pins
// them on CUDA). The padding mask and the document ids stay on the host: the
// model builds its attention mask from them once per forward (moving them
// itself), and on CUDA reads them there to see, without a device sync,
// whether the batch is causal-only (models::IsCausalOnly).
models::ForwardInputs ForwardInputsOn(const data::MicroBatch& micro, const torch::Device& device);

}  // namespace fulcrum::loop
