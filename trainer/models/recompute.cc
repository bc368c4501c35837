#include "trainer/models/recompute.h"

#include <torch/csrc/autograd/custom_function.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/check.h"

namespace fulcrum::models {
namespace {

namespace ag = torch::autograd;

// What backward needs besides the saved inputs (AutogradContext::saved_data
// holds IValues: this travels as a capsule).
struct RegionState : torch::CustomClassHolder {
  RegionFn fn;
  size_t num_inputs = 0;
  std::vector<torch::Tensor> params;  // those requiring grad, in autograd input order
  bool preserve_rng = false;
  torch::Device device{torch::kCPU};  // the inputs' device
  torch::Tensor cpu_rng;              // generator states at the first run
  torch::Tensor device_rng;           // (undefined on CPU)
};

torch::Tensor GeneratorState(const torch::Device& device) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void SetGeneratorState(const torch::Device& device, const torch::Tensor& state) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

// Puts the generators back to the first run's state for the recomputation
// and restores the current state afterwards (the draws after backward are
// then those of a run without recomputation).
class RngReplay {
 public:
  explicit RngReplay(const RegionState& s) : s_(s) {
    if (!s_.preserve_rng) return;
    cpu_now_ = GeneratorState(torch::kCPU);
    SetGeneratorState(torch::kCPU, s_.cpu_rng);
    if (s_.device_rng.defined()) {
      device_now_ = GeneratorState(s_.device);
      SetGeneratorState(s_.device, s_.device_rng);
    }
  }
  ~RngReplay() {
    if (!s_.preserve_rng) return;
    SetGeneratorState(torch::kCPU, cpu_now_);
    if (device_now_.defined()) SetGeneratorState(s_.device, device_now_);
  }
  RngReplay(const RngReplay&) = delete;
  RngReplay& operator=(const RngReplay&) = delete;

 private:
  const RegionState& s_;
  torch::Tensor cpu_now_;
  torch::Tensor device_now_;
};

// Autograd inputs: (inputs..., params...); the state is not a tensor.
class RecomputeFunction : public ag::Function<RecomputeFunction> {
 public:
  static torch::Tensor forward(ag::AutogradContext* ctx, c10::intrusive_ptr<RegionState> state,
                               torch::TensorList inputs, torch::TensorList params) {
    (void)params;  // reached through state->fn's module; listed for their edges
    std::vector<torch::Tensor> in(inputs.begin(), inputs.end());
    ctx->save_for_backward(in);
    torch::Tensor out = state->fn(in, ForwardPass::kFirst);  // grad mode is off here
    ctx->saved_data["state"] = c10::IValue::make_capsule(std::move(state));
    return out;
  }

  static ag::variable_list backward(ag::AutogradContext* ctx, ag::variable_list grad_outputs) {
    const c10::intrusive_ptr<torch::CustomClassHolder> capsule =
        ctx->saved_data["state"].toCapsule();
    const RegionState* state = static_cast<const RegionState*>(capsule.get());
    const ag::variable_list saved = ctx->get_saved_variables();
    const size_t n_in = state->num_inputs;
    const size_t n_params = state->params.size();
    // Detached inputs: the recomputed graph ends at them.
    std::vector<torch::Tensor> inputs;
    inputs.reserve(n_in);
    for (size_t i = 0; i < n_in; ++i) {
      torch::Tensor x = saved[i].detach();
      if (ctx->needs_input_grad(i)) x.requires_grad_(true);
      inputs.push_back(std::move(x));
    }
    // Which gradients the engine wants: all of them in a plain backward; the
    // input's or the parameters' only in zero-bubble's split phases.
    std::vector<torch::Tensor> targets;
    std::vector<size_t> target_of;  // position in (inputs..., params...)
    for (size_t i = 0; i < n_in; ++i) {
      if (!ctx->needs_input_grad(i)) continue;
      targets.push_back(inputs[i]);
      target_of.push_back(i);
    }
    for (size_t j = 0; j < n_params; ++j) {
      if (!ctx->needs_input_grad(n_in + j)) continue;
      targets.push_back(state->params[j]);
      target_of.push_back(n_in + j);
    }
    // (state, inputs..., params...): the state's slot stays undefined.
    ag::variable_list grads(1 + n_in + n_params);
    if (targets.empty() || !grad_outputs[0].defined()) return grads;
    torch::Tensor out;
    {
      RngReplay replay(*state);
      torch::AutoGradMode enable(true);
      out = state->fn(inputs, ForwardPass::kRecompute);
    }
    if (!out.requires_grad()) return grads;
    const ag::variable_list found =
        ag::grad({out}, targets, {grad_outputs[0]}, /*retain_graph=*/false,
                 /*create_graph=*/false, /*allow_unused=*/true);
    for (size_t k = 0; k < found.size(); ++k) grads[1 + target_of[k]] = found[k];
    return grads;
  }
};

}  // namespace

absl::StatusOr<Recompute> ParseRecompute(const std::string& name) {
  if (name == "none") return Recompute::kNone;
  if (name == "selective") return Recompute::kSelective;
  if (name == "full") return Recompute::kFull;
  return absl::InvalidArgumentError(
      absl::StrCat("train.recompute: expected one of none | selective | full, got \"", name, "\""));
}

torch::Tensor RunRecomputed(const RecomputedRegion& region,
                            const std::vector<torch::Tensor>& inputs) {
  if (!torch::GradMode::is_enabled()) return region.fn(inputs, ForwardPass::kNormal);
  FULCRUM_CHECK(!inputs.empty(), "a recomputed region without inputs");
  auto state = c10::make_intrusive<RegionState>();
  for (const torch::Tensor& p : region.params) {
    if (p.requires_grad()) state->params.push_back(p);
  }
  const std::vector<torch::Tensor> params = state->params;
  state->fn = region.fn;
  state->num_inputs = inputs.size();
  state->preserve_rng = region.preserve_rng;
  state->device = inputs.front().device();
  for (const torch::Tensor& x : inputs) {
    FULCRUM_CHECK(x.defined(), "an undefined input of a recomputed region");
  }
  if (region.preserve_rng) {
    state->cpu_rng = GeneratorState(torch::kCPU);
    if (!state->device.is_cpu()) state->device_rng = GeneratorState(state->device);
  }
  return RecomputeFunction::apply(std::move(state), torch::TensorList(inputs),
                                  torch::TensorList(params));
}

std::vector<torch::Tensor> ParametersRequiringGrad(const torch::nn::Module& module) {
  std::vector<torch::Tensor> out;
  for (const torch::Tensor& p : module.parameters(/*recurse=*/true)) {
    if (p.requires_grad()) out.push_back(p);
  }
  return out;
}

}  // namespace fulcrum::models
