// The product a LoraLinear computes on [N, in] rows, x W^T + b + s (x A^T)
// B^T, and its backward given the rows again on demand: shared by the
// linear layers that do not keep their input for backward but compute it
// again from tensors kept anyway (swiglu_linear.h: gate and up;
// normed_linear.h: an RMSNorm's input and statistics).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <initializer_list>
#include <vector>

namespace fulcrum::lora {

// One layer's tensors: weight [out, in]; bias [out], lora_a [r, in] and
// lora_b [out, r] each undefined when absent.
struct RowsLinear {
  torch::Tensor weight, bias, lora_a, lora_b;
  double scaling = 0.0;
};

// A custom function's optional tensor argument: LibTorch 1.13 records the
// device of every tensor input, so absent ones travel as c10::nullopt.
c10::optional<torch::Tensor> OptionalArgument(const torch::Tensor& t);

// The layer a custom function's arguments describe (absent ones undefined).
RowsLinear RowsLinearOf(const torch::Tensor& weight, const c10::optional<torch::Tensor>& bias,
                        const c10::optional<torch::Tensor>& lora_a,
                        const c10::optional<torch::Tensor>& lora_b, double scaling);

// A custom function's forward keeps the adapter's scaling with this, and
// saves weight, lora_a, lora_b in that order (the bias needs no saving);
// SavedRowsLinear reads the layer back from saved[at] on.
void SaveRowsLinearScaling(torch::autograd::AutogradContext* ctx, double scaling);
RowsLinear SavedRowsLinear(torch::autograd::AutogradContext* ctx,
                           const torch::autograd::variable_list& saved, size_t at);

// rows [N, in] -> [N, out], B's product accumulated into the base output.
// Products through models::MatrixProduct (oneDNN for fp32 on the CPU). *low = the
// adapter's [N, r] product (what B's gradient needs), undefined without one.
torch::Tensor RowsLinearForward(const torch::Tensor& rows, const RowsLinear& layer,
                                torch::Tensor* low);

// RowsLinearForward as one autograd node that keeps rows (and the adapter's
// [N, r] product) for RowsLinearBackward: a linear layer whose input is
// kept anyway. Its products are RowsLinear's (oneDNN's for fp32 on the CPU),
// which autograd's own linear would not use.
torch::Tensor RowsLinearApply(const torch::Tensor& rows, const RowsLinear& layer);

// Which gradients one backward call is asked for.
struct RowsLinearNeeds {
  bool input = false, weight = false, bias = false, lora_a = false, lora_b = false;
};

struct RowsLinearGrads {
  torch::Tensor input, weight, bias, lora_a, lora_b;  // undefined where not asked
};

// grad [N, out] -> the asked gradients. `rows` is called (once) only where
// the weight's or A's gradient needs the input, and what it returns is freed
// before the input's gradient is computed, so the two are never held together.
RowsLinearGrads RowsLinearBackward(const torch::Tensor& grad, const RowsLinear& layer,
                                   const torch::Tensor& low, const RowsLinearNeeds& needs,
                                   const std::function<torch::Tensor()>& rows);

// A custom function's arguments, in order, numbered by autograd edge: the
// defined tensors get 0, 1, ... and an undefined one -1 (LibTorch gives
// edges to defined tensor inputs only).
std::vector<int64_t> EdgesOf(std::initializer_list<const torch::Tensor*> arguments);

// Whether this backward call is asked for each argument's gradient (false
// for an absent one). Asked per call: zero-bubble's split backward
// (parallel/pipeline/split_backward.h) asks for the inputs' gradients in one
// call and for the weights' in another.
std::vector<bool> NeedsByArgument(torch::autograd::AutogradContext* ctx,
                                  const c10::List<int64_t>& edges);

}  // namespace fulcrum::lora
