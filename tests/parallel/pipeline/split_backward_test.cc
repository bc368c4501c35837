// Split backward (zero-bubble): input phase + weight phase give exactly the
// gradients of one backward(), weight gradients appear only in the weight
// phase, and no backward node runs twice.
#include "parallel/pipeline/split_backward.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

namespace fulcrum::parallel::pipeline {
namespace {

namespace F = torch::nn::functional;

// A chunk: output of (input, params).
using ChunkFn =
    std::function<torch::Tensor(const torch::Tensor&, const std::vector<torch::Tensor>&)>;

struct Grads {
  torch::Tensor input;
  std::vector<torch::Tensor> params;
};

std::vector<torch::Tensor> MakeParams(const std::vector<std::vector<int64_t>>& shapes, int seed) {
  torch::manual_seed(seed);
  std::vector<torch::Tensor> params;
  for (const auto& s : shapes) params.push_back(torch::randn(s).requires_grad_(true));
  return params;
}

std::vector<torch::Tensor> CloneParams(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> out;
  for (const auto& p : params) out.push_back(p.detach().clone().requires_grad_(true));
  return out;
}

Grads ReferenceGrads(const ChunkFn& fn, const torch::Tensor& x0,
                     const std::vector<torch::Tensor>& params0, const torch::Tensor& grad_output) {
  torch::Tensor x = x0.detach().clone().requires_grad_(true);
  std::vector<torch::Tensor> params = CloneParams(params0);
  torch::Tensor out = fn(x, params);
  if (grad_output.defined()) {
    torch::autograd::backward({out}, {grad_output});
  } else {
    torch::autograd::backward({out});
  }
  Grads g{x.grad(), {}};
  for (const auto& p : params) g.params.push_back(p.grad());
  return g;
}

Grads SplitGrads(const ChunkFn& fn, const torch::Tensor& x0,
                 const std::vector<torch::Tensor>& params0, const torch::Tensor& grad_output) {
  torch::Tensor x = x0.detach().clone().requires_grad_(true);
  std::vector<torch::Tensor> params = CloneParams(params0);
  DeferredWeightGradients deferred;
  torch::Tensor out = fn(x, params);
  Grads g;
  g.input = BackwardInput(out, grad_output, x, params, deferred);
  EXPECT_TRUE(deferred.pending());
  EXPECT_FALSE(x.grad().defined()) << "the input phase must not accumulate into the input";
  BackwardWeight(deferred);
  EXPECT_FALSE(deferred.pending());
  for (const auto& p : params) g.params.push_back(p.grad());
  return g;
}

void ExpectSameGrads(const std::string& name, const ChunkFn& fn, const torch::Tensor& x,
                     const std::vector<torch::Tensor>& params, const torch::Tensor& grad_output) {
  SCOPED_TRACE(name);
  const Grads ref = ReferenceGrads(fn, x, params, grad_output);
  const Grads split = SplitGrads(fn, x, params, grad_output);
  ASSERT_TRUE(ref.input.defined());
  ASSERT_TRUE(split.input.defined());
  EXPECT_TRUE(torch::allclose(split.input, ref.input, 1e-6, 1e-6));
  ASSERT_EQ(split.params.size(), ref.params.size());
  for (size_t i = 0; i < ref.params.size(); ++i) {
    SCOPED_TRACE("param " + std::to_string(i));
    ASSERT_EQ(split.params[i].defined(), ref.params[i].defined());
    if (!ref.params[i].defined()) continue;
    EXPECT_TRUE(torch::allclose(split.params[i], ref.params[i], 1e-6, 1e-6))
        << (split.params[i] - ref.params[i]).abs().max().item<double>();
  }
}

TEST(SplitBackwardTest, LinearWithBias) {
  const auto params = MakeParams({{5, 4}, {5}}, 1);
  const torch::Tensor x = torch::randn({3, 4});
  ExpectSameGrads(
      "linear+bias", [](const auto& in, const auto& p) { return F::linear(in, p[0], p[1]); }, x,
      params, torch::randn({3, 5}));
}

TEST(SplitBackwardTest, LinearWithoutBiasOn3dInput) {
  const auto params = MakeParams({{6, 4}}, 2);
  const torch::Tensor x = torch::randn({2, 3, 4});
  ExpectSameGrads(
      "matmul 3d", [](const auto& in, const auto& p) { return torch::matmul(in, p[0].t()); }, x,
      params, torch::randn({2, 3, 6}));
  ExpectSameGrads(
      "linear 3d with bias",
      [](const auto& in, const auto& p) { return F::linear(in, p[0], p[0].sum(1)); }, x, params,
      torch::randn({2, 3, 6}));
}

TEST(SplitBackwardTest, RmsNormLikeMulByWeight) {
  const auto params = MakeParams({{4}}, 3);
  const torch::Tensor x = torch::randn({2, 3, 4});
  ExpectSameGrads(
      "rmsnorm",
      [](const auto& in, const auto& p) {
        return in * torch::rsqrt(in.pow(2).mean(-1, true) + 1e-6) * p[0];
      },
      x, params, torch::randn({2, 3, 4}));
}

TEST(SplitBackwardTest, ParameterUsedTwiceAndBiasOnlyBranch) {
  const auto params = MakeParams({{4, 4}, {4}}, 4);
  const torch::Tensor x = torch::randn({3, 4});
  ExpectSameGrads(
      "W twice",
      [](const auto& in, const auto& p) {
        return torch::tanh(F::linear(torch::tanh(F::linear(in, p[0])), p[0]));
      },
      x, params, torch::randn({3, 4}));
  // p[1] never meets the input: its branch joins at the add.
  ExpectSameGrads(
      "bias-only branch",
      [](const auto& in, const auto& p) { return F::linear(in, p[0]) + torch::exp(p[1] * 0.5); }, x,
      params, torch::randn({3, 4}));
}

TEST(SplitBackwardTest, LoraLikeAndScalarLoss) {
  // base (frozen) + x A^T B^T, 0-dim loss: grad_output undefined means 1.
  const auto params = MakeParams({{2, 6}, {6, 2}}, 5);
  torch::manual_seed(6);
  const torch::Tensor base = torch::randn({6, 6});
  const torch::Tensor x = torch::randn({2, 3, 6});
  ExpectSameGrads(
      "lora loss",
      [base](const auto& in, const auto& p) {
        const torch::Tensor y =
            F::linear(in, base) + torch::matmul(torch::matmul(in, p[0].t()), p[1].t());
        return y.pow(2).mean();
      },
      x, params, torch::Tensor());
}

TEST(SplitBackwardTest, ChainOfBlocks) {
  const auto params = MakeParams({{8, 8}, {8}, {8, 8}, {8}}, 7);
  const torch::Tensor x = torch::randn({2, 5, 8});
  ExpectSameGrads(
      "blocks",
      [](const auto& in, const auto& p) {
        torch::Tensor h = torch::tanh(F::linear(in, p[0], p[1]));
        h = F::linear(h, p[2]) * p[3];
        return h;
      },
      x, params, torch::randn({2, 5, 8}));
}

TEST(SplitBackwardTest, UndefinedInputDefersEverything) {
  const auto params0 = MakeParams({{5, 4}, {5}}, 8);
  const torch::Tensor data = torch::randn({3, 4});
  const auto fn = [&](const std::vector<torch::Tensor>& p) {
    return torch::tanh(F::linear(data, p[0], p[1])).sum();
  };
  std::vector<torch::Tensor> ref = CloneParams(params0);
  fn(ref).backward();
  std::vector<torch::Tensor> params = CloneParams(params0);
  DeferredWeightGradients deferred;
  const torch::Tensor out = fn(params);
  const torch::Tensor grad_input =
      BackwardInput(out, torch::Tensor(), torch::Tensor(), params, deferred);
  EXPECT_FALSE(grad_input.defined());
  EXPECT_TRUE(deferred.pending());
  EXPECT_FALSE(params[0].grad().defined());
  BackwardWeight(deferred);
  for (size_t i = 0; i < params.size(); ++i) {
    ASSERT_TRUE(params[i].grad().defined());
    EXPECT_TRUE(torch::equal(params[i].grad(), ref[i].grad()));
  }
}

TEST(SplitBackwardTest, AccumulatesLikeBackwardAndHooksFireInWeightPhase) {
  auto params = MakeParams({{4, 4}, {4}}, 9);
  const torch::Tensor x = torch::randn({3, 4}).requires_grad_(true);
  int weight_hook_calls = 0;
  params[0].register_hook([&weight_hook_calls](const torch::Tensor&) { ++weight_hook_calls; });
  // A previous micro-batch's gradient is already in .grad.
  params[1].mutable_grad() = torch::ones({4});
  DeferredWeightGradients deferred;
  const torch::Tensor out = F::linear(x, params[0], params[1]);
  const torch::Tensor gout = torch::randn({3, 4});
  const torch::Tensor gx = BackwardInput(out, gout, x, params, deferred);
  EXPECT_TRUE(torch::allclose(gx, gout.matmul(params[0].detach()), 1e-6, 1e-6));
  EXPECT_EQ(weight_hook_calls, 0);
  EXPECT_FALSE(params[0].grad().defined());
  EXPECT_TRUE(torch::equal(params[1].grad(), torch::ones({4})));
  BackwardWeight(deferred);
  EXPECT_EQ(weight_hook_calls, 1);
  EXPECT_TRUE(torch::allclose(params[0].grad(), gout.t().matmul(x.detach()), 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(params[1].grad(), gout.sum(0) + 1, 1e-6, 1e-6));
}

// Identity whose backward counts its calls.
struct CountingIdentity : public torch::autograd::Function<CountingIdentity> {
  static torch::Tensor forward(torch::autograd::AutogradContext*, const torch::Tensor& t) {
    return t.clone();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grads) {
    ++calls();
    return grads;
  }
  static int& calls() {
    static int count = 0;
    return count;
  }
};

TEST(SplitBackwardTest, NoBackwardNodeRunsTwice) {
  auto params = MakeParams({{4, 4}, {4}}, 10);
  const auto run = [&](const ChunkFn& fn, int* after_input, int* after_weight) {
    const torch::Tensor x = torch::randn({3, 4}).requires_grad_(true);
    for (auto& p : params) p.mutable_grad() = torch::Tensor();
    DeferredWeightGradients deferred;
    const torch::Tensor out = fn(x, params);
    CountingIdentity::calls() = 0;
    BackwardInput(out, torch::ones_like(out), x, params, deferred);
    *after_input = CountingIdentity::calls();
    BackwardWeight(deferred);
    *after_weight = CountingIdentity::calls();
  };
  int in = -1, all = -1;
  // On the input path, upstream of the linear: input phase only.
  run([](const auto& x,
         const auto& p) { return F::linear(CountingIdentity::apply(x), p[0], p[1]); },
      &in, &all);
  EXPECT_EQ(in, 1);
  EXPECT_EQ(all, 1);
  // Wrapping the output: input phase only.
  run([](const auto& x,
         const auto& p) { return CountingIdentity::apply(F::linear(x, p[0], p[1])); },
      &in, &all);
  EXPECT_EQ(in, 1);
  EXPECT_EQ(all, 1);
  // On the weight path: weight phase only.
  run([](const auto& x,
         const auto& p) { return F::linear(x, CountingIdentity::apply(p[0]), p[1]); },
      &in, &all);
  EXPECT_EQ(in, 0);
  EXPECT_EQ(all, 1);
  // A weight-path node shared by two uses runs once with the summed gradient.
  run(
      [](const auto& x, const auto& p) {
        const torch::Tensor w = CountingIdentity::apply(p[0]);
        return F::linear(torch::tanh(F::linear(x, w)), w);
      },
      &in, &all);
  EXPECT_EQ(in, 0);
  EXPECT_EQ(all, 1);
}

// The first stage's split point: the embedding output. The input phase runs
// down to it (the layer's input-side work) without touching any parameter;
// the weight phase runs the layer's weight part and the embedding's backward
// (counted: once, and only there); together they equal one backward().
TEST(SplitBackwardTest, SplitPointInsideTheGraphDefersOnlyWhatLiesBelow) {
  const auto params0 = MakeParams({{10, 4}, {4, 4}, {4}}, 12);
  const torch::Tensor ids = torch::tensor({1, 7, 3, 7}, torch::kLong);
  const auto embed = [&](const std::vector<torch::Tensor>& p) {
    return CountingIdentity::apply(F::embedding(ids, p[0]));
  };
  const auto layer = [](const torch::Tensor& e, const std::vector<torch::Tensor>& p) {
    return torch::tanh(F::linear(e, p[1], p[2])).sum();
  };
  std::vector<torch::Tensor> ref = CloneParams(params0);
  const torch::Tensor ref_e = embed(ref);
  ref_e.retain_grad();
  layer(ref_e, ref).backward();

  std::vector<torch::Tensor> params = CloneParams(params0);
  DeferredWeightGradients deferred;
  const torch::Tensor e = embed(params);
  const torch::Tensor out = layer(e, params);
  CountingIdentity::calls() = 0;
  const torch::Tensor grad_e = BackwardInput(out, torch::Tensor(), e, params, deferred);
  EXPECT_EQ(CountingIdentity::calls(), 0) << "the split point's node ran in the input phase";
  EXPECT_TRUE(torch::allclose(grad_e, ref_e.grad(), 1e-6, 1e-6));
  for (const auto& p : params) EXPECT_FALSE(p.grad().defined());
  BackwardWeight(deferred);
  EXPECT_EQ(CountingIdentity::calls(), 1);
  for (size_t i = 0; i < params.size(); ++i) {
    SCOPED_TRACE("param " + std::to_string(i));
    ASSERT_TRUE(params[i].grad().defined());
    EXPECT_TRUE(torch::allclose(params[i].grad(), ref[i].grad(), 1e-6, 1e-6));
  }
}

TEST(SplitBackwardDeathTest, WeightPhaseNeedsAnInputPhase) {
  DeferredWeightGradients deferred;
  EXPECT_FALSE(deferred.pending());
  EXPECT_DEATH(BackwardWeight(deferred), "without a pending input phase");
}

TEST(SplitBackwardDeathTest, MisuseOfTheInputPhaseIsABug) {
  auto params = MakeParams({{4, 4}}, 11);
  const torch::Tensor x = torch::randn({3, 4}).requires_grad_(true);
  DeferredWeightGradients deferred;
  // A non-scalar output needs its gradient.
  EXPECT_DEATH(BackwardInput(F::linear(x, params[0]), torch::Tensor(), x, params, deferred),
               "grad_output is needed");
  // The input (or split point) must require grad.
  const torch::Tensor constant = torch::randn({3, 4});
  EXPECT_DEATH(BackwardInput(F::linear(constant, params[0]).sum(), torch::Tensor(), constant,
                             params, deferred),
               "must require grad");
  // Twice without the weight phase.
  const torch::Tensor out = F::linear(x, params[0]).sum();
  BackwardInput(out, torch::Tensor(), x, params, deferred);
  EXPECT_DEATH(BackwardInput(out, torch::Tensor(), x, params, deferred), "pending");
  BackwardWeight(deferred);
  EXPECT_TRUE(params[0].grad().defined());
}

}  // namespace
}  // namespace fulcrum::parallel::pipeline
