#include "trainer/models/moe_block.h"

#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "core/check.h"
#include "parallel/expert/token_permutation.h"
#include "parallel/tensor/tp_ops.h"
#include "trainer/models/concurrent_branch.h"
#include "trainer/models/expert_capacity.h"

namespace fulcrum::models {
namespace {

SwiGluNames ExpertNames(MoeStyle style) {
  SwiGluNames names;
  if (style == MoeStyle::kMixtral) {
    names.gate = "w1";
    names.up = "w3";
    names.down = "w2";
  }
  return names;
}

// The expert count, after the checks a block needs before its dispatcher
// (whose own check would hide what is wrong).
int64_t CheckedExperts(const MoeConfig& moe) {
  FULCRUM_CHECK(moe.enabled() && moe.style != MoeStyle::kNone,
                "MoeBlock built for a dense config (num_experts=", moe.num_experts, ")");
  return moe.num_experts;
}

}  // namespace

void ExpertStackImpl::Append(int64_t index, Mlp expert) {
  FULCRUM_CHECK(indices_.empty() || index > indices_.back(), "expert ", index,
                " appended after expert ", indices_.empty() ? -1 : indices_.back());
  experts_.push_back(register_module(std::to_string(index), std::move(expert)));
  indices_.push_back(index);
}

MoeBlockImpl::MoeBlockImpl(const ModelConfig& config, const torch::TensorOptions& options,
                           const ModelParallel& parallel)
    : moe_(config.moe),
      tp_(parallel.tp),
      dispatcher_(CheckedExperts(config.moe), parallel.expert_parallel),
      padded_dispatcher_(config.moe.num_experts, parallel.expert_parallel) {
  // Pipelining does not touch the block (a stage holds whole layers).
  FULCRUM_CHECK(moe_.enabled() && moe_.style != MoeStyle::kNone,
                "MoeBlock built for a dense config (num_experts=", moe_.num_experts, ")");
  FULCRUM_CHECK(moe_.expert_intermediate_size > 0,
                "expert_intermediate_size=", moe_.expert_intermediate_size);
  const int64_t hidden = config.hidden_size;

  // HF registration order: Mixtral / Qwen register the gate first, DeepSeek
  // the experts first (named_parameters and state-dict order follow it).
  const auto register_experts = [&] {
    experts = register_module("experts", ExpertStack());
    const SwiGluNames names = ExpertNames(moe_.style);
    for (int64_t e = 0; e < dispatcher_.num_local_experts(); ++e) {
      experts->Append(
          dispatcher_.first_local_expert() + e,
          Mlp(hidden, moe_.expert_intermediate_size, /*bias=*/false, options, parallel, names,
              /*region_by_caller=*/true));
    }
  };
  const auto register_gate = [&] {
    gate = register_module("gate", MoeRouter(hidden, moe_, options));
  };
  if (moe_.style == MoeStyle::kDeepSeek) {
    register_experts();
    register_gate();
  } else {
    register_gate();
    register_experts();
  }

  if (moe_.shared_intermediate_size > 0) {
    FULCRUM_CHECK(moe_.style != MoeStyle::kMixtral, "Mixtral has no shared expert");
    const std::string name = moe_.style == MoeStyle::kDeepSeek ? "shared_experts" : "shared_expert";
    shared = register_module(name, Mlp(hidden, moe_.shared_intermediate_size, /*bias=*/false,
                                       options, parallel, SwiGluNames{},
                                       /*region_by_caller=*/true));
    if (moe_.style == MoeStyle::kQwenMoe && moe_.shared_expert_gate) {
      shared_expert_gate = register_module("shared_expert_gate",
                                           lora::LoraLinear(hidden, 1, /*bias=*/false, options));
    }
  }
}

torch::Tensor MoeBlockImpl::forward(const torch::Tensor& x, ForwardPass pass) {
  FULCRUM_CHECK(x.dim() == 3, "MoeBlock input must be [B, T, hidden], got ", x.dim(), " dims");
  const int64_t hidden = x.size(2);
  // Under tp every rank routes every token of its tp group (under sp the
  // sequence is gathered first, its gradient complete on every rank), so the
  // routing, the loads and the balance loss are the single-rank ones. The
  // experts run on their tp shards: their outputs are partial sums, reduced
  // once for the whole block (scattered back to sequence shards under sp).
  const bool tp = tp_.active();
  const torch::Tensor tokens =
      tp && tp_.sequence_parallel ? parallel::tensor::GatherSpToReplicated(x, *tp_.group) : x;
  const torch::Tensor flat = tokens.reshape({-1, hidden});  // [N, hidden]
  // Into the tp region: the experts' input gradients are partial sums.
  const auto into_region = [&](const torch::Tensor& t) {
    return tp ? parallel::tensor::CopyToTpRegion(t, *tp_.group) : t;
  };
  const torch::Tensor expert_in = into_region(flat);
  // The shared expert needs no routing: it starts first, and on a GPU runs
  // on a side stream while the tokens are routed, exchanged, through the
  // routed experts and back (ConcurrentBranch).
  std::optional<ConcurrentBranch> shared_branch;
  if (shared) {
    shared_branch.emplace(std::vector<torch::Tensor>{flat, expert_in}, [&] {
      torch::Tensor out = shared->forward(expert_in);  // [N, hidden]
      if (shared_expert_gate) {
        // Qwen2-MoE: a per-token sigmoid gate [N, 1] on the shared output.
        out = torch::sigmoid(into_region(shared_expert_gate->forward(flat))) * out;
      }
      return out;
    });
  }
  const Routing routing = gate->forward(flat);
  // Once per micro-batch: a recomputation repeats none of the bookkeeping.
  const bool count = is_training() && pass != ForwardPass::kRecompute;
  if (pass != ForwardPass::kRecompute) last_routing_ = routing;
  torch::Tensor balance_loss;
  // A forward whose backward follows: with a graph, or the first run of a
  // recomputed layer (no graph yet; its loss value is counted here).
  const bool backward_follows = torch::GradMode::is_enabled() || pass == ForwardPass::kFirst;
  if (is_training()) {
    if (count) {
      const torch::Tensor loads = ExpertLoads(routing.expert_ids, moe_.num_experts);
      loads_ = loads_.defined() ? loads_ + loads : loads;
    }
    if (balance_.active() && backward_follows) {
      balance_loss = RouterBalanceLoss(routing, moe_.num_experts, x.size(0),
                                       moe_.scoring == "sigmoid", balance_);
      if (count) {
        const torch::Tensor value = balance_loss.detach().to(torch::kDouble);
        balance_sum_ = balance_sum_.defined() ? balance_sum_ + value : value;
      }
    }
  }

  // NOTE: the routing weights are cast to x's dtype before the product, as
  // Mixtral / Qwen do; HF DeepSeek multiplies in fp32 and casts the sum (the
  // same in fp32, one rounding apart in bf16).
  // Without ep the dispatch is the local permutation by expert alone. The
  // weights scale partial sums under tp: their gradient is one too.
  int64_t capacity = 0;
  if (is_training() && capacity_factor_ > 0) {
    capacity = ExpertCapacity(flat.size(0), routing.expert_ids.size(1), moe_.num_experts,
                              capacity_factor_);
  }
  const torch::Tensor weights = into_region(routing.weights);
  torch::Tensor y =
      (pad_to_capacity_ && capacity > 0
           ? RouteThroughPaddedExperts(expert_in, routing.expert_ids, weights, capacity, count)
           : RouteThroughExperts(expert_in, routing.expert_ids, weights, capacity, count))
          .to(x.dtype());

  if (shared_branch) y = y + shared_branch->Join();
  y = y.view(tokens.sizes());
  if (tp) {
    y = tp_.sequence_parallel ? parallel::tensor::ReduceScatterToSpRegion(y, *tp_.group)
                              : parallel::tensor::ReduceFromTpRegion(y, *tp_.group);
  }
  if (balance_loss.defined() && torch::GradMode::is_enabled()) {
    y = AttachAuxLossGradient(y, balance_loss, balance_.micro_batch_weight);
  }
  return y;
}

torch::Tensor MoeBlockImpl::RouteThroughExperts(const torch::Tensor& expert_in,
                                                const torch::Tensor& expert_ids,
                                                const torch::Tensor& weights, int64_t capacity,
                                                bool count) {
  const torch::Tensor kept =
      capacity > 0 ? DropOverCapacity(expert_ids, moe_.num_experts, capacity) : expert_ids;
  const parallel::expert::Dispatched dispatched = dispatcher_.Dispatch(expert_in, kept, weights);
  if (count && capacity > 0) {
    CountDropped(torch::full({}, static_cast<double>(dispatched.handle.local.dropped),
                             torch::TensorOptions().dtype(torch::kDouble)));
  }
  // Each held expert on its contiguous slice [n_e, hidden]; zero rows
  // included so that every expert weight gets a (zero) gradient. One split,
  // not a narrow per expert: backward then concatenates the slices'
  // gradients once, where each narrow's would be a zeroed [rows received,
  // hidden] that autograd adds up (bench MoE: ~50 ms of a 0.75 s step).
  const std::vector<torch::Tensor> slices =
      dispatched.expert_input.split_with_sizes(dispatched.tokens_per_local_expert, 0);
  std::vector<torch::Tensor> outputs;
  outputs.reserve(static_cast<size_t>(experts->size()));
  for (int64_t e = 0; e < experts->size(); ++e) {
    outputs.push_back(experts->at(e).forward(slices[static_cast<size_t>(e)]));
  }
  const torch::Tensor expert_out = torch::cat(outputs, 0);  // [rows received, hidden]
  return dispatcher_.Combine(expert_out, dispatched.handle);
}

torch::Tensor MoeBlockImpl::RouteThroughPaddedExperts(const torch::Tensor& expert_in,
                                                      const torch::Tensor& expert_ids,
                                                      const torch::Tensor& weights,
                                                      int64_t capacity, bool count) {
  const torch::Tensor slots = CapacitySlots(expert_ids, moe_.num_experts, capacity);
  if (count) CountDropped(slots.eq(moe_.num_experts * capacity).sum().to(torch::kDouble));
  const parallel::expert::PaddedDispatch dispatched =
      padded_dispatcher_.Dispatch(expert_in, slots, weights, capacity);
  // Every expert's block has ep * capacity rows, padding included; unbind
  // (one stack in backward) as the split above.
  const std::vector<torch::Tensor> blocks = dispatched.expert_input.unbind(0);
  std::vector<torch::Tensor> outputs;
  outputs.reserve(static_cast<size_t>(experts->size()));
  for (int64_t e = 0; e < experts->size(); ++e) {
    outputs.push_back(experts->at(e).forward(blocks[static_cast<size_t>(e)]));
  }
  return padded_dispatcher_.Combine(torch::stack(outputs), dispatched);
}

void MoeBlockImpl::CountDropped(const torch::Tensor& dropped) {
  dropped_ = dropped_.defined() ? dropped_ + dropped : dropped;
}

MoeBlockImpl::StepStats MoeBlockImpl::TakeStepStats() {
  StepStats stats;
  const torch::TensorOptions f64 = torch::TensorOptions().dtype(torch::kDouble);
  stats.loads = loads_.defined() ? loads_.to(torch::kCPU) : torch::zeros({moe_.num_experts}, f64);
  stats.balance_loss_sum =
      balance_sum_.defined() ? balance_sum_.to(torch::kCPU) : torch::zeros({}, f64);
  stats.dropped = dropped_.defined() ? dropped_.to(torch::kCPU) : torch::zeros({}, f64);
  loads_ = torch::Tensor();
  balance_sum_ = torch::Tensor();
  dropped_ = torch::Tensor();
  return stats;
}

std::vector<MoeBlockImpl*> MoeBlocks(torch::nn::Module& model) {
  std::vector<MoeBlockImpl*> out;
  for (const std::shared_ptr<torch::nn::Module>& module : model.modules(/*include_self=*/false)) {
    if (auto* block = module->as<MoeBlockImpl>()) out.push_back(block);
  }
  return out;
}

bool IsRoutedExpertParameter(const std::string& name) {
  // ExpertStack's registered name; shared experts are "shared_expert(s)".
  return absl::StrContains(name, ".experts.");
}

}  // namespace fulcrum::models
