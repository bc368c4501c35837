// Activation recomputation (recipe train.recompute): a region of the forward
// runs without autograd, keeping only its inputs; backward runs it again
// with autograd and back-propagates through the recomputed graph.
//
//   none       every activation is kept for backward
//   selective  the RMSNorm intermediates are recomputed; the linear layers
//              keep their activations (the attention core keeps no
//              probabilities in any mode: models/attention_core.h). The
//              decoder layer's two norms keep their input and 1/rms in
//              every mode, and the projections reading them (unsharded)
//              compute their output again (lora/normed_linear.h), so only
//              the q/k norms (Qwen3) and MLA's latent norms run as regions
//   full       each decoder layer keeps only its input and is recomputed
//
// Defines: Recompute, ParseRecompute, ForwardPass, RecomputedRegion.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fulcrum::models {

enum class Recompute { kNone, kSelective, kFull };

// "none" | "selective" | "full"; anything else is an error naming
// train.recompute and listing them.
absl::StatusOr<Recompute> ParseRecompute(const std::string& name);

// Which run of a recomputed region a forward is. Side effects that must
// happen once per step (MoE expert loads, balance-loss sums, dropped-token
// counts, the last routing) happen in kNormal and kFirst and never in
// kRecompute.
enum class ForwardPass {
  kNormal,     // an ordinary forward (autograd as the caller's grad mode says)
  kFirst,      // a recomputed region's first run: no graph, backward will follow
  kRecompute,  // the region's run again inside backward, with a graph
};

// The region's computation: inputs -> one output, reading the module state
// it closes over. Must be deterministic given the inputs, the parameters
// and the random generators' state (which `preserve_rng` restores).
using RegionFn =
    std::function<torch::Tensor(const std::vector<torch::Tensor>& inputs, ForwardPass pass)>;

struct RecomputedRegion {
  RegionFn fn;
  // The trainable parameters `fn` reads (those that do not require grad are
  // skipped): they are inputs of the region's autograd node, so their
  // gradients reach their accumulators (and the dp bucket hooks) through
  // the ordinary engine, even where no input requires grad (a frozen
  // embedding under LoRA).
  std::vector<torch::Tensor> params;
  // Restore the CPU (and the inputs' device) random generator state of the
  // first run before recomputing (LoRA dropout draws the same masks), and
  // the current one afterwards.
  bool preserve_rng = false;
};

// Runs `region.fn(inputs, kFirst)` without autograd, saving only `inputs`
// (all defined; those that do not require grad, a mask, are saved as they
// are), and returns its output attached to one autograd node whose backward
// runs `fn(inputs, kRecompute)` with autograd and computes the gradients of
// the inputs and parameters that the engine asks for. When grad mode is off
// (evaluation) it is `fn(inputs, kNormal)`.
// NOTE: the inputs must not be modified in place before backward (autograd's
// version check reports it). Zero-bubble's split backward
// (parallel/pipeline/split_backward.h) runs the node once per phase: the
// input phase recomputes and back-propagates to the inputs only, the weight
// phase recomputes again for the parameters.
torch::Tensor RunRecomputed(const RecomputedRegion& region,
                            const std::vector<torch::Tensor>& inputs);

// The parameters of `module` (and its submodules) that require grad.
std::vector<torch::Tensor> ParametersRequiringGrad(const torch::nn::Module& module);

}  // namespace fulcrum::models
