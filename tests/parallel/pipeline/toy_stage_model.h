// A toy pipeline model for the executor tests, and hand-written schedules.
//
// ToyModel: a chain of blocks (Linear(8,8)+bias, tanh, bias-free Linear,
// mul by a weight), 2 blocks per virtual stage; virtual stage 0 first scales
// its micro-batch's fixed input by an embedding weight, the last virtual
// stage returns mean((h - target)^2) / m. Parameters come from a fixed seed
// on every rank; a rank keeps its chunks' blocks (ToyStageModel) or all of
// them (the single-process reference).
//
// TestSchedule: compute orders of gpipe, 1f1b, interleaved 1f1b (Megatron's)
// and zb_h1, with each receive posted right before its consumer and each
// send right after its producer.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <deque>
#include <vector>

#include "parallel/pipeline/pipeline_executor.h"
#include "parallel/pipeline/schedule.h"

namespace fulcrum::parallel::pipeline::testing {

constexpr int kBlocksPerVirtualStage = 2;
constexpr int64_t kHidden = 8;

struct ToyBlock {
  torch::Tensor w1, b1, w2, g;
};

struct ToyModel {
  int virtual_stage_count = 1;
  int micro_batches = 1;
  torch::Tensor embed;                 // [hidden]
  std::vector<ToyBlock> blocks;        // all blocks, virtual stage k holds 2k, 2k+1
  std::vector<torch::Tensor> inputs;   // [micro_batch] -> [2, 3, hidden]
  std::vector<torch::Tensor> targets;  // same shapes

  ToyModel(int num_virtual_stages, int m)
      : virtual_stage_count(num_virtual_stages), micro_batches(m) {
    torch::manual_seed(1234);
    const auto param = [](std::vector<int64_t> shape, double scale) {
      return (torch::randn(shape) * scale).requires_grad_(true);
    };
    embed = (torch::ones({kHidden}) + torch::randn({kHidden}) * 0.1).requires_grad_(true);
    for (int i = 0; i < num_virtual_stages * kBlocksPerVirtualStage; ++i) {
      blocks.push_back(
          {param({kHidden, kHidden}, 0.4), param({kHidden}, 0.1), param({kHidden, kHidden}, 0.4),
           (torch::ones({kHidden}) + torch::randn({kHidden}) * 0.1).requires_grad_(true)});
    }
    for (int mb = 0; mb < m; ++mb) {
      inputs.push_back(torch::randn({2, 3, kHidden}));
      targets.push_back(torch::randn({2, 3, kHidden}));
    }
  }

  // Virtual stage `vs` of micro-batch `mb`; `input` undefined on vs 0.
  torch::Tensor ForwardVirtualStage(int vs, int mb, const torch::Tensor& input) const {
    torch::Tensor h = vs == 0 ? inputs[mb] * embed : input;
    for (int i = vs * kBlocksPerVirtualStage; i < (vs + 1) * kBlocksPerVirtualStage; ++i) {
      const ToyBlock& b = blocks[i];
      h = torch::tanh(torch::nn::functional::linear(h, b.w1, b.b1));
      h = torch::nn::functional::linear(h, b.w2) * b.g;
    }
    if (vs == virtual_stage_count - 1) return (h - targets[mb]).pow(2).mean() / micro_batches;
    return h;
  }

  std::vector<torch::Tensor> Parameters(int vs) const {
    std::vector<torch::Tensor> params;
    if (vs == 0) params.push_back(embed);
    for (int i = vs * kBlocksPerVirtualStage; i < (vs + 1) * kBlocksPerVirtualStage; ++i) {
      const ToyBlock& b = blocks[i];
      params.insert(params.end(), {b.w1, b.b1, b.w2, b.g});
    }
    return params;
  }
};

class ToyStageModel : public StageModel {
 public:
  ToyStageModel(const ToyModel& model, int stage, int stages)
      : model_(model), stage_(stage), stages_(stages) {}
  torch::Tensor Forward(int chunk, int micro_batch, const torch::Tensor& input) override {
    ++forwards_;
    return model_.ForwardVirtualStage(chunk * stages_ + stage_, micro_batch, input);
  }
  std::vector<int64_t> ActivationShape(int, int) const override { return {2, 3, kHidden}; }
  torch::TensorOptions ActivationOptions() const override { return torch::kFloat32; }
  std::vector<torch::Tensor> ChunkParameters(int chunk) const override {
    return model_.Parameters(chunk * stages_ + stage_);
  }
  int forwards() const { return forwards_; }

 private:
  const ToyModel& model_;
  int stage_;
  int stages_;
  int forwards_ = 0;
};

// ---- hand-written schedules ------------------------------------------------

inline Action A(ActionType type, int mb, int chunk) { return Action{type, mb, chunk}; }

// Receive right before its consumer, send right after its producer.
inline std::vector<std::vector<Action>> WithCommunication(
    const ScheduleShape& shape, const std::vector<std::vector<Action>>& compute) {
  std::vector<std::vector<Action>> out(compute.size());
  const int last_vs = shape.stages * shape.virtual_stages - 1;
  for (int s = 0; s < shape.stages; ++s) {
    for (const Action& a : compute[s]) {
      const int vs = a.chunk * shape.stages + s;
      const bool needs_grad =
          a.type == ActionType::kBackward || a.type == ActionType::kBackwardInput;
      if (a.type == ActionType::kForward && vs != 0) {
        out[s].push_back(A(ActionType::kRecvActivation, a.micro_batch, a.chunk));
      }
      if (needs_grad && vs != last_vs) {
        out[s].push_back(A(ActionType::kRecvGrad, a.micro_batch, a.chunk));
      }
      out[s].push_back(a);
      if (a.type == ActionType::kForward && vs != last_vs) {
        out[s].push_back(A(ActionType::kSendActivation, a.micro_batch, a.chunk));
      }
      if (needs_grad && vs != 0) out[s].push_back(A(ActionType::kSendGrad, a.micro_batch, a.chunk));
    }
  }
  return out;
}

// GPipe, 1F1B and ZB-H1 (v = 1).
inline std::vector<Action> OneChunkOrder(ScheduleKind kind, int stages, int m, int s) {
  std::vector<Action> order;
  if (kind == ScheduleKind::kGPipe) {
    for (int i = 0; i < m; ++i) order.push_back(A(ActionType::kForward, i, 0));
    for (int i = 0; i < m; ++i) order.push_back(A(ActionType::kBackward, i, 0));
    return order;
  }
  const bool split = kind == ScheduleKind::kZeroBubbleH1;
  const int warmup = std::min(stages - s - 1, m);
  const int lag = stages - 1 - s;  // ZB-H1: the weight phases this stage defers
  std::deque<int> weights;
  const auto backward = [&](int i, bool cooldown) {
    if (!split) {
      order.push_back(A(ActionType::kBackward, i, 0));
      return;
    }
    order.push_back(A(ActionType::kBackwardInput, i, 0));
    weights.push_back(i);
    if (cooldown || static_cast<int>(weights.size()) > lag) {
      order.push_back(A(ActionType::kBackwardWeight, weights.front(), 0));
      weights.pop_front();
    }
  };
  for (int i = 0; i < warmup; ++i) order.push_back(A(ActionType::kForward, i, 0));
  for (int i = 0; i < m - warmup; ++i) {
    order.push_back(A(ActionType::kForward, warmup + i, 0));
    backward(i, false);
  }
  for (int i = m - warmup; i < m; ++i) backward(i, true);
  for (int i : weights) order.push_back(A(ActionType::kBackwardWeight, i, 0));
  return order;
}

// Megatron's interleaved 1F1B (m % stages == 0).
inline std::vector<Action> InterleavedOrder(int p, int v, int m, int s) {
  const int total = m * v;
  const auto mb_of = [&](int k) { return (k / (p * v)) * p + k % p; };
  const auto fwd_chunk = [&](int k) { return (k / p) % v; };
  const auto bwd_chunk = [&](int k) { return v - 1 - (k / p) % v; };
  const int warmup = std::min((p - s - 1) * 2 + (v - 1) * p, total);
  std::vector<Action> order;
  int f = 0, b = 0;
  for (; f < warmup; ++f) order.push_back(A(ActionType::kForward, mb_of(f), fwd_chunk(f)));
  for (; f < total; ++f, ++b) {
    order.push_back(A(ActionType::kForward, mb_of(f), fwd_chunk(f)));
    order.push_back(A(ActionType::kBackward, mb_of(b), bwd_chunk(b)));
  }
  for (; b < total; ++b) order.push_back(A(ActionType::kBackward, mb_of(b), bwd_chunk(b)));
  return order;
}

inline Schedule TestSchedule(ScheduleKind kind, const ScheduleShape& shape) {
  std::vector<std::vector<Action>> compute;
  for (int s = 0; s < shape.stages; ++s) {
    compute.push_back(
        kind == ScheduleKind::kInterleaved1F1B
            ? InterleavedOrder(shape.stages, shape.virtual_stages, shape.micro_batches, s)
            : OneChunkOrder(kind, shape.stages, shape.micro_batches, s));
  }
  Schedule schedule;
  schedule.kind = kind;
  schedule.shape = shape;
  schedule.stages = WithCommunication(shape, compute);
  return schedule;
}

}  // namespace fulcrum::parallel::pipeline::testing
