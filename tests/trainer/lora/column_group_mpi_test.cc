// ForwardColumnGroup under mpirun 2, 3 and 4 (the world is the tp group):
// three column-parallel projections reading one RMSNorm's output (as q/k/v)
// give this rank's columns of the unsharded layers' outputs and the
// gradients of the unsharded layers, with and without sequence parallelism,
// full and LoRA, and unsharded layers their own; backward launches the input's reduction before it
// waits for the gathered input (the overlap), zero-bubble's split phases each run only their own
// collective, and under sp the group keeps no gathered input.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "parallel/tensor/tp_ops.h"
#include "tests/parallel/data_parallel/test_communicators.h"
#include "tests/tensor_bytes.h"
#include "tests/tensor_compare.h"
#include "trainer/lora/column_group.h"
#include "trainer/lora/lora_linear.h"

namespace fulcrum::lora {
namespace {

using models::RMSNorm;
using models::RmsNormOutput;
using parallel::testing::MakeWorldCommunicator;
using parallel::testing::RecordingCommunicator;
using testing::ExpectCloseToLargest;

constexpr int64_t kDim = 32, kOut = 24, kRank = 4, kBatch = 2, kSeq = 12;

struct Case {
  const char* name;
  bool bias, full, adapter;
};

// The unsharded norm and layers (the same on every rank: one seed), and the
// norm again with this rank's column shards of the layers.
struct Layers {
  RMSNorm norm{nullptr};
  std::vector<LoraLinear> layers;
  RMSNorm sharded_norm{nullptr};
  std::vector<LoraLinear> shards;

  std::vector<LoraLinearImpl*> ShardPointers() {
    std::vector<LoraLinearImpl*> out;
    for (LoraLinear& layer : shards) out.push_back(layer.get());
    return out;
  }
};

Layers MakeLayers(const Case& c, const parallel::tensor::TensorParallel& tp) {
  torch::manual_seed(17);
  Layers made;
  made.norm = RMSNorm(kDim, 1e-5, torch::kFloat);
  made.sharded_norm = RMSNorm(kDim, 1e-5, torch::kFloat);
  {
    torch::NoGradGuard no_grad;
    made.norm->weight.copy_(1 + torch::randn({kDim}) / 4);
    made.sharded_norm->weight.copy_(made.norm->weight);
  }
  for (const RMSNorm& norm : {made.norm, made.sharded_norm}) norm->weight.set_requires_grad(c.full);
  LinearParallel column;
  column.shard = LinearShard::kColumn;
  column.tp = tp;
  column.input_in_region = true;
  for (int i = 0; i < 3; ++i) {
    LoraLinear layer(kDim, kOut, c.bias, torch::kFloat);
    LoraLinear shard(kDim, kOut, c.bias, torch::kFloat, column);
    // The middle layer has no adapter (PEFT targeting q and v only).
    const bool adapter = c.adapter && i != 1;
    if (adapter) {
      LoraSpec spec;
      spec.rank = kRank;
      layer->AttachAdapter(spec);
      shard->AttachAdapter(spec);
    }
    torch::NoGradGuard no_grad;
    layer->weight.copy_(torch::randn({kOut, kDim}) / 6);
    shard->weight.copy_(shard->LocalLoraB(layer->weight));  // the same rows
    if (c.bias) {
      layer->bias.copy_(torch::randn({kOut}));
      shard->bias.copy_(shard->LocalLoraB(layer->bias));
    }
    if (adapter) {
      layer->lora_b().normal_();  // B = 0 would hide the adapter's path
      shard->lora_a().copy_(layer->lora_a());
      shard->lora_b().copy_(shard->LocalLoraB(layer->lora_b()));
    }
    for (LoraLinear* l : {&layer, &shard}) {
      (*l)->weight.set_requires_grad(c.full);
      if (c.bias) (*l)->bias.set_requires_grad(c.full);
    }
    made.layers.push_back(layer);
    made.shards.push_back(shard);
  }
  return made;
}

// This rank's positions of a [B, T, ...] tensor under sp, else all of it.
torch::Tensor SeqShard(const torch::Tensor& t, const parallel::tensor::TensorParallel& tp) {
  if (!tp.sequence_parallel) return t;
  const int64_t chunk = t.size(1) / tp.size();
  return t.narrow(1, tp.rank() * chunk, chunk);
}

class ColumnGroupTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    world_ = MakeWorldCommunicator();
    recording_ = std::make_unique<RecordingCommunicator>(*world_);
    tp_.group = recording_.get();
    tp_.sequence_parallel = GetParam();
  }
  bool sp() const { return tp_.sequence_parallel; }

  std::unique_ptr<parallel::Communicator> world_;
  std::unique_ptr<RecordingCommunicator> recording_;
  parallel::tensor::TensorParallel tp_;
};

// The group's outputs against this rank's columns of the unsharded layers,
// its gradients against theirs (partial ones summed over `world`).
void ExpectTheUnshardedLayers(const parallel::tensor::TensorParallel& tp,
                              parallel::Communicator& world) {
  for (const Case& c :
       {Case{"full", false, true, false}, Case{"full with bias", true, true, false},
        Case{"lora", false, false, true}, Case{"full and adapter", true, true, true}}) {
    SCOPED_TRACE(c.name);
    Layers m = MakeLayers(c, tp);
    torch::manual_seed(29);
    const torch::Tensor x = torch::randn({kBatch, kSeq, kDim});
    std::vector<torch::Tensor> weights;  // of each output in the loss
    for (int i = 0; i < 3; ++i) weights.push_back(torch::randn({kBatch, kSeq, kOut}));

    const torch::Tensor x_full = x.clone().set_requires_grad(true);
    const RmsNormOutput y = m.norm->ForwardRecomputable(x_full);
    torch::Tensor expected_loss = torch::zeros({});
    std::vector<torch::Tensor> expected;
    for (int i = 0; i < 3; ++i) {
      expected.push_back(m.layers[i]->forward(y.y));
      expected_loss = expected_loss + (expected.back() * weights[i]).sum();
    }
    expected_loss.backward();

    const torch::Tensor x_shard = SeqShard(x, tp).clone().set_requires_grad(true);
    const std::vector<torch::Tensor> got =
        ForwardColumnGroup(m.sharded_norm->ForwardRecomputable(x_shard), m.ShardPointers());
    ASSERT_EQ(got.size(), 3u);
    if (tp.active()) EXPECT_EQ(got[0].grad_fn(), got[2].grad_fn()) << "one autograd node";
    torch::Tensor loss = torch::zeros({});
    for (int i = 0; i < 3; ++i) {
      const LoraLinear& shard = m.shards[i];
      const torch::Tensor columns = shard->LocalLoraB(expected[i].transpose(0, 2)).transpose(0, 2);
      ExpectCloseToLargest(got[i], columns, 1e-6, "output " + std::to_string(i));
      loss = loss + (got[i] * shard->LocalLoraB(weights[i].transpose(0, 2)).transpose(0, 2)).sum();
    }
    loss.backward();

    ExpectCloseToLargest(x_shard.grad(), SeqShard(x_full.grad(), tp), 1e-5, "x");
    if (c.full) {
      // Under sp each rank's norm weight saw its positions only.
      torch::Tensor norm_grad = m.sharded_norm->weight.grad().clone();
      if (tp.sequence_parallel) world.AllReduce(norm_grad);
      ExpectCloseToLargest(norm_grad, m.norm->weight.grad(), 1e-5, "norm");
    }
    for (int i = 0; i < 3; ++i) {
      const LoraLinear &shard = m.shards[i], &layer = m.layers[i];
      const std::string at = " of layer " + std::to_string(i);
      if (c.full) {
        ExpectCloseToLargest(shard->weight.grad(), shard->LocalLoraB(layer->weight.grad()), 1e-5,
                             "weight" + at);
      }
      if (c.full && c.bias) {
        ExpectCloseToLargest(shard->bias.grad(), shard->LocalLoraB(layer->bias.grad()), 1e-5,
                             "bias" + at);
      }
      if (shard->has_adapter()) {
        // A is replicated and reads the sum over this rank's columns of B:
        // its gradient is partial (summed by SyncPartialGradients in training).
        torch::Tensor a_grad = shard->lora_a().grad().clone();
        if (tp.active()) world.AllReduce(a_grad);
        ExpectCloseToLargest(a_grad, layer->lora_a().grad(), 1e-5, "lora_A" + at);
        ExpectCloseToLargest(shard->lora_b().grad(), shard->LocalLoraB(layer->lora_b().grad()),
                             1e-5, "lora_B" + at);
      }
    }
  }
}

TEST_P(ColumnGroupTest, OutputsAndGradientsAreThoseOfTheUnshardedLayers) {
  ExpectTheUnshardedLayers(tp_, *world_);
}

// Unsharded layers (no tp group) give their own results (each layer's
// ForwardNormed).
TEST(ColumnGroupUnshardedTest, GivesTheLayersOwnResults) {
  const std::unique_ptr<parallel::Communicator> world = MakeWorldCommunicator();
  ExpectTheUnshardedLayers(parallel::tensor::TensorParallel{}, *world);
}

// The reduction of the input's gradient is launched before backward waits
// for the gathered input, and waited on after the weights' gradients.
TEST_P(ColumnGroupTest, BackwardLaunchesTheReductionBeforeWaitingForTheGather) {
  Layers m = MakeLayers(Case{"full and adapter", true, true, true}, tp_);
  const torch::Tensor x =
      SeqShard(torch::randn({kBatch, kSeq, kDim}), tp_).clone().requires_grad_(true);
  const std::vector<torch::Tensor> out =
      ForwardColumnGroup(m.sharded_norm->ForwardRecomputable(x), m.ShardPointers());
  recording_->RecordWaits(true);
  recording_->events().clear();
  (out[0].sum() + out[1].sum() + out[2].sum()).backward();
  const std::string full = std::to_string(kBatch * kSeq * kDim);
  const std::vector<std::string> expected =
      sp() ? std::vector<std::string>{"launch:all_gather:" + full, "launch:reduce_scatter:" + full,
                                      "wait:all_gather", "wait:reduce_scatter"}
           : std::vector<std::string>{"launch:all_reduce:" + full, "wait:all_reduce"};
  EXPECT_EQ(recording_->events(), expected);
}

// Zero-bubble's split backward: the input phase reduces and gathers nothing,
// the weight phase gathers and reduces nothing; the gradients are one
// backward's.
TEST_P(ColumnGroupTest, SplitPhasesRunOnlyTheirOwnCollective) {
  const Case lora{"lora", false, false, true};
  Layers whole = MakeLayers(lora, tp_);
  Layers split = MakeLayers(lora, tp_);
  torch::manual_seed(31);
  const torch::Tensor x0 = SeqShard(torch::randn({kBatch, kSeq, kDim}), tp_);
  const auto loss = [&](Layers& m, const torch::Tensor& x) {
    const std::vector<torch::Tensor> out =
        ForwardColumnGroup(m.sharded_norm->ForwardRecomputable(x), m.ShardPointers());
    return (out[0] * out[0]).sum() + out[1].sum() + (out[2] * 3).sum();
  };
  const torch::Tensor x1 = x0.clone().requires_grad_(true);
  loss(whole, x1).backward();

  const torch::Tensor x2 = x0.clone().requires_grad_(true);
  const torch::Tensor l = loss(split, x2);
  recording_->RecordWaits(true);
  recording_->events().clear();
  const torch::Tensor dx = torch::autograd::grad({l}, {x2}, {}, /*retain_graph=*/true)[0];
  const std::string full = std::to_string(kBatch * kSeq * kDim);
  using Events = std::vector<std::string>;
  const Events input_phase = sp() ? Events{"launch:reduce_scatter:" + full, "wait:reduce_scatter"}
                                  : Events{"launch:all_reduce:" + full, "wait:all_reduce"};
  EXPECT_EQ(recording_->events(), input_phase);
  recording_->events().clear();
  std::vector<torch::Tensor> adapters;
  for (LoraLinear& shard : split.shards) {
    if (shard->has_adapter()) adapters.insert(adapters.end(), {shard->lora_a(), shard->lora_b()});
  }
  const std::vector<torch::Tensor> found = torch::autograd::grad({l}, adapters);
  const Events weight_phase =
      sp() ? Events{"launch:all_gather:" + full, "wait:all_gather"} : Events{};
  EXPECT_EQ(recording_->events(), weight_phase);
  ExpectCloseToLargest(dx, x1.grad(), 1e-6, "x");
  size_t k = 0;
  for (LoraLinear& shard : whole.shards) {
    if (!shard->has_adapter()) continue;
    ExpectCloseToLargest(found[k++], shard->lora_a().grad(), 1e-6, "lora_A");
    ExpectCloseToLargest(found[k++], shard->lora_b().grad(), 1e-6, "lora_B");
  }
}

// Under sp the group keeps this rank's 1/rms and the adapters' [N, r]
// products, not the gathered [B, T, dim] input the layers read.
TEST_P(ColumnGroupTest, KeepsNoGatheredInput) {
  Layers m = MakeLayers(Case{"lora", false, false, true}, tp_);
  const torch::Tensor x =
      SeqShard(torch::randn({kBatch, kSeq, kDim}), tp_).clone().requires_grad_(true);
  const int64_t rows = kBatch * kSeq, shard_rows = x.size(0) * x.size(1);
  const int64_t kept = testing::KeptForBackward([&] {
    const std::vector<torch::Tensor> out =
        ForwardColumnGroup(m.sharded_norm->ForwardRecomputable(x), m.ShardPointers());
    return out[0] + out[1] + out[2];
  });
  const int64_t rstd = shard_rows * 4, lows = 2 * rows * kRank * 4;
  EXPECT_EQ(kept, rstd + lows);
  // Each layer on its own keeps the input it read (the gathered one under sp).
  const int64_t separate = testing::KeptForBackward([&] {
    const RmsNormOutput y = m.sharded_norm->ForwardRecomputable(x).InTpRegion(tp_);
    return m.shards[0]->ForwardNormed(y) + m.shards[1]->ForwardNormed(y) +
           m.shards[2]->ForwardNormed(y);
  });
  if (sp()) EXPECT_GE(separate, rstd + lows + rows * kDim * 4);
}

INSTANTIATE_TEST_SUITE_P(SequenceParallel, ColumnGroupTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "sp" : "tp";
                         });

}  // namespace
}  // namespace fulcrum::lora
