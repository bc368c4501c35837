// Zero-bubble's split backward on LibTorch autograd: the input gradient
// first (what the previous stage is waiting for), the weight gradients later
// (deferred into the schedule's bubbles), with no backward work done twice.
//
// The input phase runs the autograd engine towards the chunk's input only,
// so the nodes that consume a parameter compute only their input-side
// outputs; pre-hooks on those nodes capture the gradients they receive. The
// weight phase re-enters the engine at exactly those nodes, with the captured
// gradients, towards the parameters only: each parameter-consuming node then
// computes its parameter-side outputs (the weight-gradient GEMMs) and nothing
// upstream runs again. Gradients accumulate into .grad as backward() would.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <vector>

namespace fulcrum::parallel::pipeline {

// What the weight phase needs, kept between the two phases (it holds the
// chunk's autograd graph alive until then).
class DeferredWeightGradients {
 public:
  DeferredWeightGradients();
  ~DeferredWeightGradients();
  DeferredWeightGradients(DeferredWeightGradients&&) noexcept;
  DeferredWeightGradients& operator=(DeferredWeightGradients&&) noexcept;
  bool pending() const;  // input phase ran, weight phase not yet

  struct State;  // defined in split_backward.cc

 private:
  friend torch::Tensor BackwardInput(const torch::Tensor&, const torch::Tensor&,
                                     const torch::Tensor&, const std::vector<torch::Tensor>&,
                                     DeferredWeightGradients&);
  friend void BackwardWeight(DeferredWeightGradients&);
  std::unique_ptr<State> state_;
};

// Input phase. `output`: the chunk's output (or its 0-dim loss);
// `grad_output`: d loss / d output (undefined for a 0-dim loss: 1);
// `input`: the chunk's input, a leaf that requires grad; on the first virtual
// stage a split point inside the graph (a tensor with one producing output,
// e.g. the embedding output: the input phase runs down to it and the weight
// phase does what lies below) or undefined (the whole backward is deferred);
// `params`: the
// chunk's trainable parameters. -> d loss / d input (undefined when `input`
// is). `deferred` must not be pending.
torch::Tensor BackwardInput(const torch::Tensor& output, const torch::Tensor& grad_output,
                            const torch::Tensor& input, const std::vector<torch::Tensor>& params,
                            DeferredWeightGradients& deferred);

// Weight phase: accumulates the parameters' gradients into their .grad
// (running their grad-accumulator hooks, like backward()) and releases the
// graph. `deferred` must be pending; afterwards it is not.
void BackwardWeight(DeferredWeightGradients& deferred);

}  // namespace fulcrum::parallel::pipeline
