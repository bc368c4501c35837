#include "trainer/optim/adamw.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "trainer/optim/adamw_update.h"
#include "trainer/optim/grouped_optimizer.h"

namespace fulcrum::optim {
namespace {

// Deterministic grad for (step, parameter index), any shape.
torch::Tensor GradFor(int step, int index, torch::IntArrayRef shape) {
  torch::manual_seed(1000 * step + index);
  return torch::randn(shape);
}

std::map<std::string, torch::Tensor> CloneState(const AdamW& opt) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& nt : opt.StateDict()) out[nt.name] = nt.tensor.clone();
  return out;
}

TEST(AdamWTest, MatchesTorchAdamWInFp32) {
  torch::manual_seed(0);
  std::vector<torch::Tensor> mine = {torch::randn({4, 3}), torch::randn({5})};
  std::vector<torch::Tensor> ref;
  for (auto& t : mine) {
    ref.push_back(t.clone().requires_grad_(true));
    t.requires_grad_(true);
  }
  AdamW opt({{"w", mine[0], true}, {"b", mine[1], true}}, AdamWOptions{0.9, 0.95, 1e-8, 0.1});
  torch::optim::AdamW torch_opt(
      ref, torch::optim::AdamWOptions(1e-3).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1));
  for (int step = 0; step < 6; ++step) {
    for (int i = 0; i < 2; ++i) {
      torch::Tensor g = GradFor(step, i, mine[i].sizes());
      mine[i].mutable_grad() = g.clone();
      ref[i].mutable_grad() = g.clone();
    }
    opt.Step(1e-3, 1.0f);
    torch_opt.step();
  }
  EXPECT_EQ(opt.step_count(), 6);
  for (int i = 0; i < 2; ++i) {
    EXPECT_TRUE(torch::allclose(mine[i], ref[i], /*rtol=*/0, /*atol=*/1e-7)) << i;
  }
}

// On the CPU the update is one fused pass (adamw_cpu_kernel.h) over ranges
// of 64K elements split between threads; every bit equals ATen's ops applied
// to whole tensors, as torch::optim::AdamW applies them. 600 x 1000 spans
// several ranges and a partial one, [7] is shorter than a vector (ATen's
// scalar path); the transposed parameter is not contiguous and takes the
// torch ops.
TEST(AdamWTest, CpuKernelIsBitwiseTheWholeTensorOps) {
  torch::manual_seed(3);
  std::vector<torch::Tensor> mine = {torch::randn({600, 1000}), torch::randn({70, 30}).t(),
                                     torch::randn({7})};
  std::vector<torch::Tensor> ref, m, v;
  for (auto& t : mine) {
    ref.push_back(t.clone());
    m.push_back(torch::zeros_like(t));
    v.push_back(torch::zeros_like(t));
    t.requires_grad_(true);
  }
  AdamW opt({{"w", mine[0], true}, {"t", mine[1], true}, {"b", mine[2], false}},
            AdamWOptions{0.9, 0.95, 1e-8, 0.1});
  const double lr = 1e-3;
  for (int step = 1; step <= 3; ++step) {
    for (size_t i = 0; i < mine.size(); ++i) {
      const torch::Tensor g = GradFor(step, static_cast<int>(i), mine[i].sizes());
      mine[i].mutable_grad() = g.clone();
      if (i < 2) ref[i].mul_(1.0 - lr * 0.1);
      m[i].mul_(0.9).add_(g, 1.0 - 0.9);
      v[i].mul_(0.95).addcmul_(g, g, 1.0 - 0.95);
      const torch::Tensor denom =
          v[i].sqrt().div_(std::sqrt(1.0 - std::pow(0.95, step))).add_(1e-8);
      ref[i].addcdiv_(m[i], denom, -lr / (1.0 - std::pow(0.9, step)));
    }
    opt.Step(lr, 1.0f);
  }
  for (size_t i = 0; i < mine.size(); ++i) EXPECT_TRUE(torch::equal(mine[i], ref[i])) << i;
}

// ZeRO-1 updates segments of a flat buffer that start anywhere: an element's
// result depends on its values only, not on where its range begins.
TEST(AdamWTest, UpdateOfSegmentsIsBitwiseTheWholeUpdate) {
  torch::manual_seed(4);
  const int64_t n = 200003;  // odd: segments off every vector boundary
  const auto fresh = [&] {
    AdamWTensors t;
    torch::manual_seed(5);
    t.master = {torch::randn({n})};
    t.exp_avg = {torch::randn({n}).mul_(0.1)};
    t.exp_avg_sq = {torch::rand({n}).mul_(0.01)};
    t.grad = {torch::randn({n})};
    t.decay = {true};
    return t;
  };
  AdamWTensors whole = fresh(), parts = fresh();
  AdamWTensors segments;
  for (const auto& [start, len] :
       {std::pair<int64_t, int64_t>{0, 1001}, {1001, 77777}, {78778, n - 78778}}) {
    segments.master.push_back(parts.master[0].narrow(0, start, len));
    segments.exp_avg.push_back(parts.exp_avg[0].narrow(0, start, len));
    segments.exp_avg_sq.push_back(parts.exp_avg_sq[0].narrow(0, start, len));
    segments.grad.push_back(parts.grad[0].narrow(0, start, len));
    segments.decay.push_back(true);
  }
  const AdamWOptions options{0.9, 0.95, 1e-8, 0.1};
  for (int64_t step = 1; step <= 2; ++step) {
    AdamWUpdate(options, 1e-3, step, 1.0f, whole);
    AdamWUpdate(options, 1e-3, step, 1.0f, segments);
  }
  EXPECT_TRUE(torch::equal(whole.master[0], parts.master[0]));
  EXPECT_TRUE(torch::equal(whole.exp_avg[0], parts.exp_avg[0]));
  EXPECT_TRUE(torch::equal(whole.exp_avg_sq[0], parts.exp_avg_sq[0]));
  EXPECT_FALSE(torch::equal(whole.master[0], fresh().master[0]));  // it did update
}

// The clip folded into the update: Step(lr, c) is grad.mul_(c) then
// Step(lr, 1) to the bit, through the one-pass CPU kernel (contiguous
// gradient) and through the op-by-op path (a transposed one).
TEST(AdamWTest, GradScaleIsClippingInPlaceFirst) {
  for (bool contiguous : {true, false}) {
    SCOPED_TRACE(contiguous);
    torch::manual_seed(4);
    const torch::Tensor init = torch::randn({96, 80});
    torch::Tensor folded = init.clone().requires_grad_(true);
    torch::Tensor clipped = init.clone().requires_grad_(true);
    AdamW folded_opt({{"w", folded, true}}, AdamWOptions{0.9, 0.95, 1e-8, 0.1});
    AdamW clipped_opt({{"w", clipped, true}}, AdamWOptions{0.9, 0.95, 1e-8, 0.1});
    for (int step = 0; step < 3; ++step) {
      torch::Tensor g = torch::randn({96, 80});
      if (!contiguous) g = torch::randn({80, 96}).t();
      const float scale = 0.3f + 0.2f * static_cast<float>(step);
      folded.mutable_grad() = g.clone(at::MemoryFormat::Preserve);
      clipped.mutable_grad() = g.clone(at::MemoryFormat::Preserve).mul_(scale);
      ASSERT_EQ(folded.grad().is_contiguous(), contiguous);
      folded_opt.Step(1e-2, scale);
      clipped_opt.Step(1e-2, 1.0f);
      EXPECT_TRUE(torch::equal(folded, clipped)) << step;
    }
    EXPECT_FALSE(torch::equal(folded, init));
  }
}

TEST(AdamWTest, DecayFlagFalseSkipsWeightDecay) {
  torch::Tensor a = torch::ones({3}).requires_grad_(true);
  torch::Tensor b = torch::ones({3}).requires_grad_(true);
  AdamW opt({{"a", a, true}, {"b", b, false}}, AdamWOptions{0.9, 0.95, 1e-8, 0.5});
  a.mutable_grad() = torch::zeros({3});
  b.mutable_grad() = torch::zeros({3});
  opt.Step(0.1, 1.0f);
  EXPECT_TRUE(torch::allclose(a, torch::full({3}, 0.95f)));
  EXPECT_TRUE(torch::equal(b, torch::ones({3})));
}

TEST(AdamWTest, UndefinedGradStepsWithZeroGrad) {
  torch::manual_seed(1);
  torch::Tensor init = torch::randn({6});
  torch::Tensor x = init.clone().requires_grad_(true);
  torch::Tensor y = init.clone().requires_grad_(true);
  AdamW ox({{"p", x, true}}, AdamWOptions{0.9, 0.95, 1e-8, 0.1});
  AdamW oy({{"p", y, true}}, AdamWOptions{0.9, 0.95, 1e-8, 0.1});
  torch::Tensor g = torch::randn({6});
  x.mutable_grad() = g.clone();
  y.mutable_grad() = g.clone();
  ox.Step(1e-2, 1.0f);
  oy.Step(1e-2, 1.0f);
  torch::Tensor after_first = x.detach().clone();
  ox.ZeroGrad();
  EXPECT_FALSE(x.grad().defined());
  y.mutable_grad() = torch::zeros({6});
  ox.Step(1e-2, 1.0f);
  oy.Step(1e-2, 1.0f);
  EXPECT_TRUE(torch::equal(x, y));
  // The first moment keeps moving the parameter.
  EXPECT_GT((x - after_first).abs().max().item<float>(), 1e-4);
}

// The one-pass update of a bf16 parameter (the bf16 gradient widened as it
// is read, the parameter rounded as the master is written) is the op-by-op
// update of its fp32 copy to the bit, with a clip scale, at a size with a
// vector tail, and through the op-by-op path for a transposed gradient.
TEST(AdamWTest, Bf16GradientsAndParametersInOnePass) {
  for (bool contiguous : {true, false}) {
    SCOPED_TRACE(contiguous);
    torch::manual_seed(9);
    torch::Tensor bf = torch::randn({37, 29}).to(torch::kBFloat16).requires_grad_(true);
    torch::Tensor fp = bf.detach().to(torch::kFloat).requires_grad_(true);
    const torch::Tensor init = bf.detach().clone();
    AdamW obf({{"w", bf, true}}, AdamWOptions{0.9, 0.95, 1e-8, 0.1});
    AdamW ofp({{"w", fp, true}}, AdamWOptions{0.9, 0.95, 1e-8, 0.1});
    for (int step = 0; step < 3; ++step) {
      torch::Tensor g = torch::randn({37, 29}).to(torch::kBFloat16);
      if (!contiguous) g = torch::randn({29, 37}).to(torch::kBFloat16).t();
      bf.mutable_grad() = g.clone(at::MemoryFormat::Preserve);
      fp.mutable_grad() = g.to(torch::kFloat).mul_(0.7f);
      obf.Step(0.05, 0.7f);
      ofp.Step(0.05, 1.0f);
      EXPECT_TRUE(torch::equal(bf, fp.to(torch::kBFloat16))) << step;
    }
    EXPECT_FALSE(torch::equal(bf, init));
  }
}

TEST(AdamWTest, Bf16ParamsKeepFp32Master) {
  torch::manual_seed(2);
  torch::Tensor bf = torch::randn({8, 4}).to(torch::kBFloat16).requires_grad_(true);
  torch::Tensor fp = bf.detach().to(torch::kFloat).requires_grad_(true);
  AdamW obf({{"w", bf, true}}, AdamWOptions{0.9, 0.95, 1e-8, 0.1});
  AdamW ofp({{"w", fp, true}}, AdamWOptions{0.9, 0.95, 1e-8, 0.1});
  for (int step = 0; step < 4; ++step) {
    torch::Tensor g = GradFor(step, 0, {8, 4}).to(torch::kBFloat16);
    bf.mutable_grad() = g;
    fp.mutable_grad() = g.to(torch::kFloat);
    obf.Step(1e-3, 1.0f);
    ofp.Step(1e-3, 1.0f);
  }
  torch::Tensor master;
  for (const auto& nt : obf.StateDict()) {
    if (nt.name == "master.w") master = nt.tensor;
  }
  ASSERT_TRUE(master.defined());
  EXPECT_EQ(master.scalar_type(), torch::kFloat);
  EXPECT_TRUE(torch::equal(master, fp));  // same values, same fp32 arithmetic
  EXPECT_TRUE(torch::equal(bf, master.to(torch::kBFloat16)));
  EXPECT_EQ(bf.scalar_type(), torch::kBFloat16);
  // 4 steps of ~1e-3 are below bf16 resolution for many elements: the master
  // is what carries them.
  EXPECT_FALSE(torch::equal(master, bf.to(torch::kFloat)));
  // No master for fp32 params.
  for (const auto& nt : ofp.StateDict()) EXPECT_NE(nt.name.rfind("master.", 0), 0u) << nt.name;
}

TEST(AdamWTest, StateDictRoundTripResumesBitExactly) {
  torch::manual_seed(3);
  torch::Tensor w = torch::randn({3, 5}).requires_grad_(true);
  torch::Tensor h = torch::randn({7}).to(torch::kBFloat16).requires_grad_(true);
  const AdamWOptions options{0.9, 0.95, 1e-8, 0.1};
  AdamW a({{"w", w, true}, {"h", h, false}}, options);
  auto run = [](AdamW& opt, torch::Tensor& w, torch::Tensor& h, int from, int to) {
    for (int step = from; step < to; ++step) {
      w.mutable_grad() = GradFor(step, 0, w.sizes());
      h.mutable_grad() = GradFor(step, 1, h.sizes()).to(torch::kBFloat16);
      opt.Step(1e-3 * (step + 1), 1.0f);
    }
  };
  run(a, w, h, 0, 3);
  auto state = CloneState(a);
  EXPECT_EQ(state.size(), 6u);  // step, 2 x (exp_avg, exp_avg_sq), master.h
  EXPECT_EQ(state.at("step").item<int64_t>(), 3);
  torch::Tensor w2 = w.detach().clone().requires_grad_(true);
  // A bf16 param rebuilt from a (lossy) source: the master restores it.
  torch::Tensor h2 = torch::zeros({7}, torch::kBFloat16).requires_grad_(true);
  run(a, w, h, 3, 6);

  AdamW b({{"w", w2, true}, {"h", h2, false}}, options);
  ASSERT_TRUE(b.LoadStateDict(state).ok());
  EXPECT_EQ(b.step_count(), 3);
  run(b, w2, h2, 3, 6);
  EXPECT_TRUE(torch::equal(w, w2));
  EXPECT_TRUE(torch::equal(h, h2));
  auto sa = CloneState(a);
  auto sb = CloneState(b);
  for (const auto& [key, value] : sa) EXPECT_TRUE(torch::equal(value, sb.at(key))) << key;
}

TEST(AdamWTest, LoadStateDictRejectsBadStateAndChangesNothing) {
  torch::Tensor w = torch::ones({2, 2}).requires_grad_(true);
  AdamW opt({{"w", w, true}}, AdamWOptions{});
  w.mutable_grad() = torch::ones({2, 2});
  opt.Step(1e-3, 1.0f);
  const auto good = CloneState(opt);

  auto expect_error = [&](std::map<std::string, torch::Tensor> state, const std::string& needle) {
    absl::Status status = opt.LoadStateDict(state);
    EXPECT_FALSE(status.ok());
    EXPECT_NE(std::string(status.message()).find(needle), std::string::npos) << status;
  };
  auto missing = good;
  missing.erase("exp_avg_sq.w");
  expect_error(missing, "exp_avg_sq.w");
  auto unknown = good;
  unknown["exp_avg.v"] = torch::zeros({2, 2});
  expect_error(unknown, "exp_avg.v");
  auto wrong_shape = good;
  wrong_shape["exp_avg.w"] = torch::zeros({4});
  expect_error(wrong_shape, "exp_avg.w");
  auto wrong_dtype = good;
  wrong_dtype["exp_avg.w"] = torch::zeros({2, 2}, torch::kDouble);
  expect_error(wrong_dtype, "exp_avg.w");
  auto bad_step = good;
  bad_step["step"] = torch::ones({1});
  expect_error(bad_step, "step");
  auto no_step = good;
  no_step.erase("step");
  expect_error(no_step, "step");

  EXPECT_EQ(opt.step_count(), 1);
  const auto after = CloneState(opt);
  for (const auto& [key, value] : good) EXPECT_TRUE(torch::equal(value, after.at(key))) << key;
}

struct TinyNet : torch::nn::Module {
  TinyNet() {
    linear = register_module("linear", torch::nn::Linear(3, 2));
    norm = register_parameter("norm", torch::ones({3}));
    frozen = register_parameter("frozen", torch::ones({2, 2}), /*requires_grad=*/false);
  }
  torch::nn::Linear linear{nullptr};
  torch::Tensor norm;
  torch::Tensor frozen;
};

TEST(TrainableParametersTest, SplitsDecayAndSkipsFrozen) {
  TinyNet net;
  auto params = TrainableParameters(net, /*decay_norms_and_biases=*/false);
  std::map<std::string, bool> decay;
  for (const auto& p : params) decay[p.name] = p.decay;
  EXPECT_EQ(decay, (std::map<std::string, bool>{
                       {"linear.weight", true}, {"linear.bias", false}, {"norm", false}}));
  for (const auto& p : TrainableParameters(net, /*decay_norms_and_biases=*/true)) {
    EXPECT_TRUE(p.decay) << p.name;
  }
}

}  // namespace
}  // namespace fulcrum::optim

namespace fulcrum::optim {
namespace {

// Through the Optimizer interface: state bytes count moments and the fp32
// masters of non-fp32 params only.
TEST(AdamWTest, OptimizerInterfaceAndStateBytes) {
  torch::Tensor w = torch::ones({2, 3}).requires_grad_(true);
  torch::Tensor h = torch::ones({5}, torch::kBFloat16).requires_grad_(true);
  AdamW adamw({{"w", w, true}, {"h", h, false}}, AdamWOptions{});
  Optimizer& opt = adamw;
  EXPECT_EQ(opt.state_bytes(), 4 * (2 * 6 + 3 * 5));
  EXPECT_EQ(opt.parameters().size(), 2u);
  w.mutable_grad() = torch::ones({2, 3});
  opt.Step(0.1, 1.0f);
  EXPECT_EQ(opt.step_count(), 1);
  EXPECT_TRUE(torch::allclose(w, torch::full({2, 3}, 0.9f), 1e-6, 1e-6));
  EXPECT_TRUE(torch::equal(h, torch::ones({5}, torch::kBFloat16)));  // zero grad, no decay
  EXPECT_EQ(opt.StateDict().size(), 6u);  // step, 2 x (exp_avg, exp_avg_sq), master.h
}

}  // namespace
}  // namespace fulcrum::optim

namespace fulcrum::optim {
namespace {

// Two AdamW groups (as the dense and the routed-expert parameters under ep)
// behave as one AdamW over both: same updates, the union of the state dicts
// with "step" once, and a state dict split back over the groups on load.
TEST(GroupedOptimizerTest, GroupsStepAndCheckpointLikeOneOptimizer) {
  torch::manual_seed(4);
  const torch::Tensor w0 = torch::randn({3, 4}), e0 = torch::randn({5});
  auto fresh = [&](torch::Tensor& w, torch::Tensor& e) {
    w = w0.clone().requires_grad_(true);
    e = e0.clone().requires_grad_(true);
  };
  auto grouped = [](torch::Tensor& w, torch::Tensor& e) {
    std::vector<std::unique_ptr<Optimizer>> groups;
    groups.push_back(std::make_unique<AdamW>(std::vector<NamedParameter>{{"w", w, true}},
                                             AdamWOptions{0.9, 0.95, 1e-8, 0.1}));
    groups.push_back(std::make_unique<AdamW>(std::vector<NamedParameter>{{"experts.0.e", e, false}},
                                             AdamWOptions{0.9, 0.95, 1e-8, 0.1}));
    return std::make_unique<GroupedOptimizer>(std::move(groups));
  };
  auto run = [](Optimizer& opt, torch::Tensor& w, torch::Tensor& e, int from, int to) {
    for (int step = from; step < to; ++step) {
      w.mutable_grad() = GradFor(step, 0, w.sizes());
      e.mutable_grad() = GradFor(step, 1, e.sizes());
      opt.Step(1e-2, 1.0f);
    }
  };
  torch::Tensor w, e, w1, e1;
  fresh(w, e);
  fresh(w1, e1);
  AdamW one({{"w", w1, true}, {"experts.0.e", e1, false}}, AdamWOptions{0.9, 0.95, 1e-8, 0.1});
  std::unique_ptr<GroupedOptimizer> two = grouped(w, e);
  EXPECT_EQ(two->parameters().size(), 2u);
  EXPECT_EQ(two->parameters()[1].name, "experts.0.e");
  run(one, w1, e1, 0, 3);
  run(*two, w, e, 0, 3);
  EXPECT_TRUE(torch::equal(w, w1));
  EXPECT_TRUE(torch::equal(e, e1));
  EXPECT_EQ(two->step_count(), 3);
  EXPECT_EQ(two->state_bytes(), one.state_bytes());

  std::map<std::string, torch::Tensor> state;
  for (const auto& nt : two->StateDict()) {
    EXPECT_TRUE(state.emplace(nt.name, nt.tensor.clone()).second) << nt.name << " twice";
  }
  const std::map<std::string, torch::Tensor> reference = CloneState(one);
  ASSERT_EQ(state.size(), reference.size());
  for (const auto& [key, value] : reference) {
    ASSERT_TRUE(state.count(key)) << key;
    EXPECT_TRUE(torch::equal(state.at(key), value)) << key;
  }
  // Resume into fresh groups: the next steps equal the uninterrupted ones.
  torch::Tensor w2 = w.detach().clone().requires_grad_(true);
  torch::Tensor e2 = e.detach().clone().requires_grad_(true);
  std::unique_ptr<GroupedOptimizer> resumed = grouped(w2, e2);
  ASSERT_TRUE(resumed->LoadStateDict(state).ok());
  run(*two, w, e, 3, 5);
  run(*resumed, w2, e2, 3, 5);
  EXPECT_TRUE(torch::equal(w, w2));
  EXPECT_TRUE(torch::equal(e, e2));
  // A key of no group's parameter is an error naming it.
  state["exp_avg.experts.1.e"] = torch::zeros({5});
  const absl::Status status = resumed->LoadStateDict(state);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(std::string(status.message()).find("'exp_avg.experts.1.e'"), std::string::npos)
      << status;
}

}  // namespace
}  // namespace fulcrum::optim
