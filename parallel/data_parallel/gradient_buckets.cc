#include "parallel/data_parallel/gradient_buckets.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <functional>
#include <utility>

#include "core/check.h"

namespace fulcrum::parallel {
namespace {

// One flat gradient buffer holding whole parameters (a parameter is never
// split across buckets; reduce-scatter chunks may split it).
struct Bucket {
  torch::Tensor flat;                   // [padded], the params' dtype
  std::vector<BucketSegment> segments;  // whole parameters, in bucket order
  int64_t numel = 0;                    // sum of the segments' numel
  int64_t padded = 0;                   // numel rounded up to a multiple of dp (reduce-scatter)
  int pending = 0;                      // params whose grad is not final yet (armed backward)
  bool ready = false;                   // every param's grad is final
  bool launched = false;
  WorkHandle work;
  torch::Tensor chunk_out;  // [padded / dp] reduce-scatter output (MPI: no aliasing)
};

// What a hook calls; reset when the GradientBuckets goes (the accumulators,
// and so the hooks, may outlive it: LibTorch 1.13 cannot remove a post hook).
struct HookLink {
  std::function<void(size_t)> on_grad_ready;
};

// Runs after a parameter's AccumulateGrad node: its .grad is final for this
// backward.
class GradReadyHook : public torch::autograd::FunctionPostHook {
 public:
  GradReadyHook(std::shared_ptr<HookLink> link, size_t index)
      : link_(std::move(link)), index_(index) {}
  torch::autograd::variable_list operator()(
      const torch::autograd::variable_list& outputs,
      const torch::autograd::variable_list& /*inputs*/) override {
    if (link_->on_grad_ready) link_->on_grad_ready(index_);
    return outputs;
  }

 private:
  std::shared_ptr<HookLink> link_;
  size_t index_;
};

}  // namespace

struct GradientBuckets::State {
  std::vector<torch::Tensor> params;
  Communicator& dp;
  BucketOptions options;
  std::vector<Bucket> buckets;
  std::vector<size_t> bucket_of;  // param index -> bucket index
  // The accumulators carry the hooks; the Variable only holds a weak_ptr to
  // its accumulator, so without these the nodes (and hooks) could vanish.
  std::vector<std::shared_ptr<torch::autograd::Node>> accumulators;
  std::shared_ptr<HookLink> link = std::make_shared<HookLink>();
  bool armed = false;
  // Per parameter: its bucket view holds this step's gradient so far (false
  // after ReleaseGrads until its first accumulation or FinishReduction).
  std::vector<bool> held;
  // Per parameter: accumulations still to come in the armed backward(s).
  std::vector<int> accumulations_left;
  size_t next_launch = 0;  // buckets launch in index order on every rank

  State(std::vector<torch::Tensor> p, Communicator& c, BucketOptions o)
      : params(std::move(p)), dp(c), options(o) {}

  int64_t ChunkNumel(const Bucket& b) const { return b.padded / dp.size(); }

  void Launch(Bucket& b) {
    FULCRUM_CHECK(!b.launched, "gradient bucket launched twice in one step");
    b.launched = true;
    if (dp.size() == 1) return;
    const bool all_reduce = options.reduction == GradReduction::kAllReduce;
    if (options.blocking) {  // done now; WaitAll finds no Work
      all_reduce ? dp.AllReduce(b.flat, ReduceOp::kSum)
                 : dp.ReduceScatter(b.flat, b.chunk_out, ReduceOp::kSum);
    } else {
      b.work = all_reduce ? dp.AllReduceAsync(b.flat, ReduceOp::kSum)
                          : dp.ReduceScatterAsync(b.flat, b.chunk_out, ReduceOp::kSum);
    }
  }

  // Launches ready buckets in index order: every rank must issue the
  // collectives in the same order, whatever order its hooks fire in.
  void LaunchReadyInOrder() {
    while (next_launch < buckets.size() && buckets[next_launch].ready) {
      Launch(buckets[next_launch]);
      ++next_launch;
    }
  }

  // After every accumulation into param k's .grad: a gradient AccumulateGrad
  // stored on its own (after ReleaseGrads) moves into the bucket view, and
  // the view becomes the .grad again, where later micro-batches add.
  void Adopt(size_t k) {
    const torch::Tensor grad = params[k].grad();
    if (grad.defined() && !IsView(k, grad)) {
      torch::NoGradGuard no_grad;
      torch::Tensor view = ViewOf(k);
      held[k] ? view.add_(grad) : view.copy_(grad);
      params[k].mutable_grad() = view;
    }
    held[k] = true;
  }

  // Before the buckets are reduced or read: a parameter without a gradient
  // since ReleaseGrads gets zeros, or the .grad something else gave it
  // (SyncPartialGradients all-reduces one it creates).
  void CompleteGrads() {
    torch::NoGradGuard no_grad;
    for (size_t k = 0; k < params.size(); ++k) {
      if (held[k]) continue;
      const torch::Tensor grad = params[k].grad();
      torch::Tensor view = ViewOf(k);
      grad.defined() ? view.copy_(grad) : view.zero_();
      params[k].mutable_grad() = view;
      held[k] = true;
    }
  }

  void OnGradReady(size_t param_index) {
    Adopt(param_index);
    if (!armed) return;
    Bucket& b = buckets[bucket_of[param_index]];
    int& left = accumulations_left[param_index];
    FULCRUM_CHECK(left > 0 && b.pending > 0, "parameter ", param_index,
                  " accumulated a gradient more often than armed for");
    if (--left > 0) return;
    if (--b.pending == 0) {
      b.ready = true;
      LaunchReadyInOrder();
    }
  }

  void WaitAll() {
    for (Bucket& b : buckets) {
      if (b.work) {
        b.work->Wait();
        b.work.reset();
      }
      if (options.reduction == GradReduction::kReduceScatter && dp.size() > 1) {
        torch::NoGradGuard no_grad;
        b.flat.narrow(0, dp.rank() * ChunkNumel(b), ChunkNumel(b)).copy_(b.chunk_out);
      }
    }
  }

  // Param i's gradient as a view into its bucket.
  torch::Tensor ViewOf(size_t i) const {
    const Bucket& b = buckets[bucket_of[i]];
    for (const BucketSegment& s : b.segments) {
      if (s.param_index == i) {
        return b.flat.narrow(0, s.bucket_offset, s.numel).view(params[i].sizes());
      }
    }
    FULCRUM_CHECK(false, "parameter ", i, " is in no bucket segment");
    return {};
  }
  bool IsView(size_t i, const torch::Tensor& grad) const {
    return grad.data_ptr() == ViewOf(i).data_ptr();
  }

  // (Re)points param i's .grad at its bucket view; a caller that reset the
  // grad to undefined (AdamW::ZeroGrad) does not break the layout.
  void AttachGrad(size_t i) {
    torch::Tensor grad = params[i].grad();
    if (!grad.defined() || !IsView(i, grad)) params[i].mutable_grad() = ViewOf(i);
    held[i] = true;
  }
};

GradientBuckets::GradientBuckets(std::vector<torch::Tensor> params, Communicator& dp,
                                 BucketOptions options)
    : state_(std::make_unique<State>(std::move(params), dp, options)) {
  State& s = *state_;
  FULCRUM_CHECK(options.bucket_bytes > 0, "bucket_bytes must be positive");
  const int64_t dp_size = dp.size();
  s.bucket_of.assign(s.params.size(), 0);
  // Reverse registration order: the order backward finishes gradients.
  std::vector<std::vector<size_t>> groups;
  int64_t group_bytes = 0;
  for (size_t k = s.params.size(); k-- > 0;) {
    const torch::Tensor& p = s.params[k];
    FULCRUM_CHECK(p.defined() && p.requires_grad() && p.is_leaf(), "parameter ", k,
                  " must be a leaf that requires grad");
    FULCRUM_CHECK(p.is_contiguous(), "parameter ", k, " must be contiguous");
    const int64_t bytes = p.numel() * static_cast<int64_t>(p.element_size());
    const bool dtype_change =
        !groups.empty() && s.params[groups.back().front()].scalar_type() != p.scalar_type();
    if (groups.empty() || dtype_change || group_bytes + bytes > options.bucket_bytes) {
      if (groups.empty() || !groups.back().empty()) groups.emplace_back();
      group_bytes = 0;
    }
    groups.back().push_back(k);
    group_bytes += bytes;
  }
  torch::NoGradGuard no_grad;
  for (const std::vector<size_t>& group : groups) {
    Bucket b;
    for (size_t k : group) {
      b.segments.push_back(BucketSegment{k, 0, b.numel, s.params[k].numel()});
      b.numel += s.params[k].numel();
      s.bucket_of[k] = s.buckets.size();
    }
    b.padded = options.reduction == GradReduction::kReduceScatter
                   ? (b.numel + dp_size - 1) / dp_size * dp_size
                   : b.numel;
    const torch::Tensor& first = s.params[group.front()];
    b.flat = torch::zeros({b.padded}, first.options().requires_grad(false));
    if (options.reduction == GradReduction::kReduceScatter) {
      b.chunk_out = torch::empty({b.padded / dp_size}, b.flat.options());
    }
    s.buckets.push_back(std::move(b));
  }
  s.held.assign(s.params.size(), true);
  s.link->on_grad_ready = [state = &s](size_t k) { state->OnGradReady(k); };
  for (size_t k = 0; k < s.params.size(); ++k) {
    s.AttachGrad(k);
    std::shared_ptr<torch::autograd::Node> acc =
        torch::autograd::impl::grad_accumulator(s.params[k]);
    FULCRUM_CHECK(acc != nullptr, "parameter ", k, " has no gradient accumulator");
    acc->add_post_hook(std::make_unique<GradReadyHook>(s.link, k));
    s.accumulators.push_back(std::move(acc));
  }
}

GradientBuckets::~GradientBuckets() {
  // Outstanding Works must finish before their buffers go; the hooks stay on
  // the accumulators (which may outlive us) but no longer call into State.
  for (Bucket& b : state_->buckets) {
    if (b.work) b.work->Wait();
  }
  state_->link->on_grad_ready = nullptr;
}

void GradientBuckets::ArmForLastBackward(int accumulations) {
  State& s = *state_;
  FULCRUM_CHECK(!s.armed, "ArmForLastBackward called twice without FinishReduction");
  FULCRUM_CHECK(accumulations >= 1, "ArmForLastBackward(", accumulations, ")");
  s.armed = true;
  s.accumulations_left.assign(s.params.size(), accumulations);
  s.next_launch = 0;
  for (Bucket& b : s.buckets) {
    b.pending = static_cast<int>(b.segments.size());
    b.ready = false;
    b.launched = false;
  }
}

void GradientBuckets::FinishReduction() {
  State& s = *state_;
  s.CompleteGrads();
  if (!s.armed) {
    s.next_launch = 0;
    for (Bucket& b : s.buckets) b.launched = false;
  }
  // Buckets whose params got no gradient this step still take part (zeros or
  // earlier micro-batches' sums).
  for (Bucket& b : s.buckets) b.ready = true;
  s.LaunchReadyInOrder();
  s.WaitAll();
  s.armed = false;
}

void GradientBuckets::ZeroGrads() {
  torch::NoGradGuard no_grad;
  for (Bucket& b : state_->buckets) b.flat.zero_();
  for (size_t k = 0; k < state_->params.size(); ++k) state_->AttachGrad(k);
}

void GradientBuckets::ReleaseGrads() {
  State& s = *state_;
  FULCRUM_CHECK(!s.armed, "ReleaseGrads during an armed backward");
  for (size_t k = 0; k < s.params.size(); ++k) {
    s.params[k].mutable_grad() = torch::Tensor();
    s.held[k] = false;
  }
}

std::vector<GradientBuckets::OwnedSegment> GradientBuckets::OwnedSegments() const {
  const State& s = *state_;
  std::vector<OwnedSegment> out;
  const bool sharded = s.options.reduction == GradReduction::kReduceScatter;
  for (size_t bi = 0; bi < s.buckets.size(); ++bi) {
    const Bucket& b = s.buckets[bi];
    const int64_t lo = sharded ? s.dp.rank() * s.ChunkNumel(b) : 0;
    const int64_t hi = sharded ? lo + s.ChunkNumel(b) : b.numel;
    for (const BucketSegment& seg : b.segments) {
      const int64_t start = std::max(lo, seg.bucket_offset);
      const int64_t end = std::min(hi, seg.bucket_offset + seg.numel);
      if (start >= end) continue;
      out.push_back(OwnedSegment{
          bi, BucketSegment{seg.param_index, seg.param_offset + (start - seg.bucket_offset), start,
                            end - start}});
    }
  }
  return out;
}

torch::Tensor GradientBuckets::BucketGrads(size_t bucket) const {
  FULCRUM_CHECK(bucket < state_->buckets.size(), "bucket ", bucket, " out of range");
  return state_->buckets[bucket].flat;
}

size_t GradientBuckets::num_buckets() const { return state_->buckets.size(); }

GradReduction GradientBuckets::reduction() const { return state_->options.reduction; }

void GradientBuckets::AllGatherParameters() {
  State& s = *state_;
  if (s.dp.size() == 1) return;
  FULCRUM_CHECK(s.options.reduction == GradReduction::kReduceScatter,
                "AllGatherParameters needs reduce-scatter buckets (ZeRO-1)");
  torch::NoGradGuard no_grad;
  // No new memory: this rank's chunk is staged in the reduce-scatter output
  // buffer and the gradient buckets (spent once the optimizer has stepped)
  // receive the gathered values, then are zeroed for the next step.
  const std::vector<OwnedSegment> owned = OwnedSegments();
  std::vector<WorkHandle> works;
  for (size_t bi = 0; bi < s.buckets.size(); ++bi) {
    Bucket& b = s.buckets[bi];
    const int64_t lo = s.dp.rank() * s.ChunkNumel(b);
    b.chunk_out.zero_();  // padding stays 0
    for (const OwnedSegment& o : owned) {
      if (o.bucket != bi) continue;
      const BucketSegment& seg = o.segment;
      b.chunk_out.narrow(0, seg.bucket_offset - lo, seg.numel)
          .copy_(s.params[seg.param_index].view(-1).narrow(0, seg.param_offset, seg.numel));
    }
    works.push_back(s.dp.AllGatherAsync(b.chunk_out, b.flat));
  }
  for (size_t bi = 0; bi < s.buckets.size(); ++bi) {
    works[bi]->Wait();
    Bucket& b = s.buckets[bi];
    for (const BucketSegment& seg : b.segments) {
      s.params[seg.param_index]
          .view(-1)
          .narrow(0, seg.param_offset, seg.numel)
          .copy_(b.flat.narrow(0, seg.bucket_offset, seg.numel));
    }
    b.flat.zero_();
  }
}

}  // namespace fulcrum::parallel
