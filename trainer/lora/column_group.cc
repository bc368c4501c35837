#include "trainer/lora/column_group.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "core/check.h"
#include "parallel/tensor/tp_ops.h"
#include "trainer/lora/linear_rows.h"

namespace fulcrum::lora {
namespace {

using parallel::Communicator;
using parallel::tensor::AllGatherAlongDim;
using parallel::tensor::AllGatherAlongDimAsync;
using parallel::tensor::kSeqDim;
using parallel::tensor::PendingAlongDim;
using parallel::tensor::ReduceScatterAlongDimAsync;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// A layer's tensors within the function's parameter list: indices into it,
// -1 for an absent one (LibTorch 1.13 cannot take undefined tensor inputs).
constexpr int kSlots = 4;  // weight, bias, lora_a, lora_b

// What backward needs besides the saved tensors (AutogradContext::saved_data
// holds IValues: this travels as a capsule). The Communicator belongs to the
// mesh, which outlives every step's graph.
struct GroupState : torch::CustomClassHolder {
  Communicator* group = nullptr;
  bool sequence_parallel = false;
  bool norm = false;             // keep = (x, rstd, weight) of the norm; else (input)
  std::vector<int64_t> slots;    // kSlots per layer
  std::vector<double> scalings;  // per layer
  size_t num_params = 0;
  size_t num_keep = 0;
  torch::ScalarType dtype = torch::kFloat;  // the input's: its gradient's zeros
};

RowsLinear Layer(const GroupState& state, const torch::Tensor* params, size_t i) {
  const int64_t* slot = &state.slots[i * kSlots];
  const auto at = [params](int64_t index) { return index >= 0 ? params[index] : torch::Tensor(); };
  return RowsLinear{at(slot[0]), at(slot[1]), at(slot[2]), at(slot[3]), state.scalings[i]};
}

// Inputs: the region's input (edge 0), the layers' parameters, then the
// kept tensors detached (no edges: the norm's own node differentiates y).
// Saved: the kept tensors, the parameters, then each layer's adapter [N, r]
// product.
class ColumnGroupFunction : public torch::autograd::Function<ColumnGroupFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& input,
                               torch::TensorList params, torch::TensorList keep,
                               c10::intrusive_ptr<GroupState> state) {
    state->num_params = params.size();
    state->num_keep = keep.size();
    state->dtype = input.scalar_type();
    const torch::Tensor full =
        state->sequence_parallel ? AllGatherAlongDim(input, kSeqDim, *state->group) : input;
    const torch::Tensor rows = full.reshape({-1, full.size(-1)});
    const size_t layers = state->scalings.size();
    variable_list outputs;
    std::vector<torch::Tensor> saved(keep.begin(), keep.end());
    saved.insert(saved.end(), params.begin(), params.end());
    for (size_t i = 0; i < layers; ++i) {
      torch::Tensor low;
      const torch::Tensor out = RowsLinearForward(rows, Layer(*state, params.data(), i), &low);
      std::vector<int64_t> shape = full.sizes().vec();
      shape.back() = out.size(1);
      outputs.push_back(out.view(shape));
      saved.push_back(low);
    }
    ctx->save_for_backward(saved);
    ctx->saved_data["state"] = c10::IValue::make_capsule(std::move(state));
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const c10::intrusive_ptr<torch::CustomClassHolder> capsule =
        ctx->saved_data["state"].toCapsule();
    const GroupState& state = *static_cast<const GroupState*>(capsule.get());
    Communicator& group = *state.group;
    const bool sp = state.sequence_parallel;
    const size_t keep = state.num_keep;
    const variable_list saved = ctx->get_saved_variables();
    const size_t layers = state.scalings.size();
    const torch::Tensor* params = saved.data() + keep;
    const auto layer = [&](size_t i) { return Layer(state, params, i); };
    const auto low = [&](size_t i) { return saved[keep + state.num_params + i]; };

    // Which gradients this call is asked for: zero-bubble's split backward
    // asks for the input's and the parameters' in separate calls.
    const bool needs_input = ctx->needs_input_grad(0);
    std::vector<RowsLinearNeeds> needs(layers);
    bool needs_rows = false;
    for (size_t i = 0; i < layers; ++i) {
      const auto asked = [&](int slot) {
        const int64_t index = state.slots[i * kSlots + slot];
        return index >= 0 && ctx->needs_input_grad(static_cast<size_t>(1 + index));
      };
      needs[i] = {false, asked(0), asked(1), asked(2), asked(3)};
      needs_rows = needs_rows || needs[i].weight || needs[i].lora_a;
    }
    // Each output's gradient as rows, once (attention's come back through
    // transposes: reshaping copies). A layer whose output had no gradient
    // adds nothing.
    std::vector<torch::Tensor> grad_rows(layers);
    for (size_t i = 0; i < layers; ++i) {
      const torch::Tensor& g = grad_outputs[i];
      if (g.defined()) grad_rows[i] = g.reshape({-1, g.size(-1)});
    }

    // 1. The input again (the norm's output, or the kept input), needed only
    //    by the weights' gradients: under sp this rank's part now, and its
    //    all-gather launched; otherwise computed when they need it.
    const auto input_rows = [&saved, norm = state.norm] {
      return norm ? models::RmsNormValues(saved[0], saved[1], saved[2]) : saved[0];
    };
    c10::optional<PendingAlongDim> gathered;
    if (needs_rows) {
      gathered.emplace(sp ? AllGatherAlongDimAsync(input_rows(), kSeqDim, group)
                          : PendingAlongDim(nullptr, input_rows));
    }

    // 2. The input's gradient, summed over the layers, then 3. its reduction
    //    launched (every rank reduces, so one with no contribution sends 0).
    c10::optional<PendingAlongDim> reduced;
    parallel::WorkHandle all_reduce;
    torch::Tensor grad_input;
    if (needs_input) {
      for (size_t i = 0; i < layers; ++i) {
        if (!grad_rows[i].defined()) continue;
        RowsLinearNeeds only_input;
        only_input.input = true;
        torch::Tensor part =
            RowsLinearBackward(grad_rows[i], layer(i), low(i), only_input, {}).input;
        grad_input = grad_input.defined() ? grad_input.add_(part) : std::move(part);
      }
      std::vector<int64_t> full_shape = saved[0].sizes().vec();
      if (sp) full_shape[kSeqDim] *= group.size();
      grad_input = grad_input.defined()
                       ? grad_input.view(full_shape)
                       : torch::zeros(full_shape, saved[0].options().dtype(state.dtype));
      if (sp) {
        reduced.emplace(ReduceScatterAlongDimAsync(grad_input, kSeqDim, group));
      } else {
        all_reduce = group.AllReduceAsync(grad_input, parallel::ReduceOp::kSum);
      }
    }

    // 4. The parameters' gradients on the gathered input.
    // One per argument: the input, the parameters, the kept tensors, the state.
    variable_list grads(1 + state.num_params + keep + 1);
    if (needs_rows || std::any_of(needs.begin(), needs.end(),
                                  [](const RowsLinearNeeds& n) { return n.bias || n.lora_b; })) {
      torch::Tensor rows;
      if (gathered) rows = gathered->Wait().reshape({-1, saved[0].size(-1)});
      for (size_t i = 0; i < layers; ++i) {
        if (!grad_rows[i].defined()) continue;
        const RowsLinearGrads found =
            RowsLinearBackward(grad_rows[i], layer(i), low(i), needs[i], [&rows] { return rows; });
        const torch::Tensor by_slot[kSlots] = {found.weight, found.bias, found.lora_a,
                                               found.lora_b};
        for (int s = 0; s < kSlots; ++s) {
          const int64_t index = state.slots[i * kSlots + s];
          if (index >= 0) grads[static_cast<size_t>(1 + index)] = by_slot[s];
        }
      }
    }

    // 5. The input's gradient, reduced.
    if (needs_input) {
      if (sp) {
        grads[0] = reduced->Wait();
      } else {
        all_reduce->Wait();
        grads[0] = grad_input;
      }
    }
    return grads;
  }
};

}  // namespace

std::vector<torch::Tensor> ForwardColumnGroup(const models::RmsNormOutput& in,
                                              const std::vector<LoraLinearImpl*>& layers) {
  FULCRUM_CHECK(!layers.empty(), "a column group without layers");
  const LinearParallel& first = layers.front()->parallel();
  // Unsharded layers take ForwardNormed: one node for them too measured 2-8%
  // slower in LoRA's backward on the 55M bench Llama (1 rank, 7 pairs).
  bool grouped = torch::GradMode::is_enabled() && layers.front()->sharded();
  for (const LoraLinearImpl* layer : layers) {
    FULCRUM_CHECK(layer->sharded() == layers.front()->sharded() &&
                      layer->parallel().tp.group == first.tp.group,
                  "the layers of a column group share one tp group");
    FULCRUM_CHECK(!layer->sharded() || (layer->parallel().shard == LinearShard::kColumn &&
                                        layer->parallel().input_in_region),
                  "a column group takes column shards whose caller enters the tp region");
    grouped = grouped && !layer->DropsAdapterInput();
  }
  std::vector<torch::Tensor> outputs;
  if (!grouped) {
    const models::RmsNormOutput x_in = layers.front()->sharded() ? in.InTpRegion(first.tp) : in;
    for (LoraLinearImpl* layer : layers) outputs.push_back(layer->ForwardNormed(x_in));
    return outputs;
  }
  auto state = c10::make_intrusive<GroupState>();
  state->group = first.tp.group;
  state->sequence_parallel = first.tp.sequence_parallel;
  std::vector<torch::Tensor> params;
  for (const LoraLinearImpl* layer : layers) {
    for (const torch::Tensor& t : {layer->weight, layer->bias, layer->lora_a(), layer->lora_b()}) {
      state->slots.push_back(t.defined() ? static_cast<int64_t>(params.size()) : -1);
      if (t.defined()) params.push_back(t);
    }
    state->scalings.push_back(layer->scaling());
  }
  // The norm's tensors recompute y where they hold what y holds (this rank's
  // rows); otherwise y itself is kept, under sp only this rank's shard.
  state->norm = in.x.defined() && in.x.sizes() == in.y.sizes();
  std::vector<torch::Tensor> keep;
  if (state->norm) {
    keep = {in.x.detach(), in.rstd.detach(), in.weight.detach()};
  } else {
    keep = {in.y.detach()};
  }
  return ColumnGroupFunction::apply(in.y, torch::TensorList(params), torch::TensorList(keep),
                                    std::move(state));
}

}  // namespace fulcrum::lora
