// The mixture-of-experts feed-forward block of Mixtral, Qwen2-/Qwen3-MoE and
// DeepSeek-V2/V3: router -> each token's top-k experts (SwiGLU MLPs) ->
// weighted sum, plus the shared expert(s) every token passes through.
// Submodule names are the family's HF names (MoeStyle), so checkpoint keys,
// LoRA targets and PEFT keys need no mapping.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "parallel/expert/padded_token_dispatcher.h"
#include "parallel/expert/token_dispatcher.h"
#include "trainer/models/mlp.h"
#include "trainer/models/model_config.h"
#include "trainer/models/model_parallel.h"
#include "trainer/models/moe_balance.h"
#include "trainer/models/moe_router.h"
#include "trainer/models/recompute.h"

namespace fulcrum::models {

// The routed experts a rank holds, each registered under its GLOBAL index
// (as LayerStack does for layers), so that parameter names stay the HF keys
// ("experts.5.w1.weight") on the expert-parallel rank that holds expert 5.
class ExpertStackImpl : public torch::nn::Module {
 public:
  ExpertStackImpl() = default;
  // Appends expert `index` (greater than every held one).
  void Append(int64_t index, Mlp expert);
  int64_t size() const { return static_cast<int64_t>(experts_.size()); }
  MlpImpl& at(int64_t i) { return *experts_.at(static_cast<size_t>(i)); }
  int64_t global_index(int64_t i) const { return indices_.at(static_cast<size_t>(i)); }

 private:
  std::vector<Mlp> experts_;
  std::vector<int64_t> indices_;
};
TORCH_MODULE(ExpertStack);

class MoeBlockImpl : public torch::nn::Module {
 public:
  // Under expert parallelism (parallel.expert_parallel of size ep) this rank
  // holds experts [rank * E/ep, (rank + 1) * E/ep) and exchanges tokens with
  // the other ep ranks in forward and backward (TokenDispatcher); router and
  // shared experts are replicated over ep. Under tp (parallel.tp) the router
  // is replicated and every expert, shared ones included, is split as a dense
  // MLP is (gate/up column, down row: expert TP = tp).
  MoeBlockImpl(const ModelConfig& config, const torch::TensorOptions& options,
               const ModelParallel& parallel = {});
  // x [B, T, hidden] -> [B, T, hidden] (under sp [B, T/tp, hidden] both).
  // Collective over the ep group (and the tp group under tp). Every held
  // expert runs, on zero rows when no token chose it, so each expert weight
  // always gets a gradient (zeros then): AdamW then treats it as HF does, and
  // the dp gradient buckets see every parameter once per backward.
  // `pass`: inside a recomputed decoder layer (train.recompute: full) the
  // first run counts (loads, balance loss sum, drops, last routing) and the
  // recomputation in backward only attaches the balance loss's gradient.
  torch::Tensor forward(const torch::Tensor& x, ForwardPass pass = ForwardPass::kNormal);

  // The routing of the last forward (for load metrics and balancing losses).
  const Routing& last_routing() const { return last_routing_; }

  // Training forwards (is_training() and grad mode) add the balance loss of
  // `options` to the objective (AttachAuxLossGradient) and every training
  // forward counts the tokens routed to each expert. Off by default.
  void SetBalance(const MoeBalanceOptions& options) { balance_ = options; }
  // > 0: training forwards drop each expert's choices over its capacity
  // (ExpertCapacity of this forward's tokens, before dispatch: the same on
  // every layout) and count them. Evaluation, `score` and the HF models an
  // export loads stay dropless. 0 (the default): dropless.
  // `pad_to_capacity` (needs capacity_factor > 0): the kept choices travel
  // in fixed capacity slots per expert, zero-padded (PaddedTokenDispatcher),
  // so that the forward and backward read nothing back to the host. The
  // same choices are dropped and the same sums formed as without padding.
  void SetCapacityFactor(double capacity_factor, bool pad_to_capacity = false) {
    capacity_factor_ = capacity_factor;
    pad_to_capacity_ = pad_to_capacity && capacity_factor > 0;
  }
  // What the training forwards since the last call accumulated, then reset:
  // loads [E] float64 (tokens this rank routed to each expert; routing is
  // before dispatch, so the sum over dp counts every token once) and the sum
  // of the micro-batches' balance losses (0-dim float64, coefficients
  // applied, micro_batch_weight not; 0 when inactive) and the choices
  // dropped over capacity (0-dim float64).
  struct StepStats {
    torch::Tensor loads;
    torch::Tensor balance_loss_sum;
    torch::Tensor dropped;
  };
  StepStats TakeStepStats();
  int64_t num_experts() const { return moe_.num_experts; }

  MoeRouter gate{nullptr};
  ExpertStack experts{nullptr};  // this rank's experts, Mlp(expert_intermediate_size) each
  Mlp shared{nullptr};  // "shared_experts" (DeepSeek) / "shared_expert" (Qwen2-MoE); or null
  lora::LoraLinear shared_expert_gate{nullptr};  // [1, hidden] Qwen2-MoE only; or null

 private:
  // The routed experts' weighted sum [N, hidden] of the tokens `expert_in`
  // ([N, hidden], inside the tp region) for `routing`: dropless or with the
  // choices over `capacity` dropped (capacity 0: dropless), or through
  // padded capacity slots. Adds the dropped choices to dropped_ when `count`.
  torch::Tensor RouteThroughExperts(const torch::Tensor& expert_in, const torch::Tensor& expert_ids,
                                    const torch::Tensor& weights, int64_t capacity, bool count);
  torch::Tensor RouteThroughPaddedExperts(const torch::Tensor& expert_in,
                                          const torch::Tensor& expert_ids,
                                          const torch::Tensor& weights, int64_t capacity,
                                          bool count);
  void CountDropped(const torch::Tensor& dropped);

  MoeConfig moe_;
  parallel::tensor::TensorParallel tp_;
  parallel::expert::TokenDispatcher dispatcher_;
  parallel::expert::PaddedTokenDispatcher padded_dispatcher_;
  Routing last_routing_;
  MoeBalanceOptions balance_;
  double capacity_factor_ = 0.0;
  bool pad_to_capacity_ = false;
  torch::Tensor loads_;        // [E] float64, since the last TakeStepStats
  torch::Tensor balance_sum_;  // 0-dim float64
  torch::Tensor dropped_;      // 0-dim float64: choices dropped over capacity since then
};
TORCH_MODULE(MoeBlock);

// The model's MoE blocks, in layer order.
std::vector<MoeBlockImpl*> MoeBlocks(torch::nn::Module& model);

// Whether a parameter name (of the whole model, adapters included) belongs
// to a routed expert ("...experts.5.w1.weight", "...mlp.experts.0.up_proj.
// lora_A.weight"), as opposed to the router or a shared expert: under expert
// parallelism only one ep rank holds it.
bool IsRoutedExpertParameter(const std::string& name);

}  // namespace fulcrum::models
