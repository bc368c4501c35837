// Column-parallel projections that read one input (attention's q/k/v, a
// dense MLP's gate/up) as one autograd node, so that backward overlaps the
// tensor-parallel communication with the GEMMs (Megatron-LM's
// gradient-accumulation-fusion linear, for a group of layers):
//
//   forward   enter the tp region once (all-gather of the sequence shards
//             under sp), then each layer's product; keep only the input as
//             it was outside the region (under sp this rank's sequence
//             shard), or the RMSNorm's input and 1/rms that recompute it.
//   backward  launch the all-gather of the input again (sp) | compute the
//             input gradient, summed over the layers | launch its
//             reduce-scatter (sp) or all-reduce | wait for the gathered input
//             | compute the weights' and adapters' gradients | wait.
//
// Communication and GEMMs overlap where the backend progresses on its own
// (NCCL on its stream); the MPI backend moves the data inside Wait(), so on
// the CPU the gain is memory: under sp the layers no longer keep the
// gathered [B, T, hidden] input, only 1/tp of it (or nothing beyond the
// norm's own tensors).
#pragma once

#include <torch/torch.h>

#include <vector>

#include "trainer/lora/lora_linear.h"
#include "trainer/models/rms_norm.h"

namespace fulcrum::lora {

// [layer->forward(in.y) for each layer], in order. Sharded layers must be
// kColumn with input_in_region, in one tp group: in.y is then outside the
// region ([B, T/tp, in] under sp, else [B, T, in]) and the outputs are [B,
// T, out_r]. Unsharded layers, forwards without autograd and adapters with
// dropout in training take each layer's ForwardNormed instead.
std::vector<torch::Tensor> ForwardColumnGroup(const models::RmsNormOutput& in,
                                              const std::vector<LoraLinearImpl*>& layers);

}  // namespace fulcrum::lora
