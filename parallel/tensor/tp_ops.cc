#include "parallel/tensor/tp_ops.h"

#include <cstdint>
#include <vector>

#include "core/check.h"

namespace fulcrum::parallel::tensor {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The group travels through the autograd graph as an integer in saved_data
// (an IValue cannot hold a raw pointer). The Communicator outlives the graph:
// it belongs to the mesh, which outlives every step.
void SaveGroup(AutogradContext* ctx, Communicator* group) {
  ctx->saved_data["group"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(group));
}
Communicator& LoadGroup(AutogradContext* ctx) {
  return *reinterpret_cast<Communicator*>(static_cast<intptr_t>(ctx->saved_data["group"].toInt()));
}

int64_t WrapDim(int64_t dim, int64_t ndim) {
  const int64_t wrapped = dim < 0 ? dim + ndim : dim;
  FULCRUM_CHECK(wrapped >= 0 && wrapped < ndim, "dim ", dim, " out of range for ", ndim,
                "-d tensor");
  return wrapped;
}

// Sum over the group into a fresh tensor (never writes the caller's x, which
// may be a gradient buffer autograd still shares).
torch::Tensor AllReduceSum(const torch::Tensor& x, Communicator& group) {
  torch::Tensor out = x.contiguous().clone();
  group.AllReduce(out, ReduceOp::kSum);
  return out;
}

// This rank's contiguous chunk of `dim` (dim size divisible by the group size).
torch::Tensor SplitAlongDim(const torch::Tensor& x, int64_t dim, Communicator& group) {
  dim = WrapDim(dim, x.dim());
  const int64_t n = x.size(dim);
  FULCRUM_CHECK(n % group.size() == 0, "dim ", dim, " of size ", n, " does not split over ",
                group.size(), " ranks of group ", group.name());
  const int64_t chunk = n / group.size();
  return x.narrow(dim, group.rank() * chunk, chunk).contiguous();
}

// Collectives along a dim, launched (`blocking` false) or done: the
// blocking form is the backend's blocking call, which MPI runs faster.
//
// All-gather into [size, ..] (rank r's x at index r), then move the rank axis
// next to `dim` and merge the two: [.., size, n, ..] -> [.., size * n, ..],
// which is the concatenation along `dim` in rank order.
PendingAlongDim GatherAlongDim(const torch::Tensor& x, int64_t dim, Communicator& comm,
                               bool blocking) {
  dim = WrapDim(dim, x.dim());
  if (comm.size() == 1) return PendingAlongDim(nullptr, [x] { return x; });
  torch::NoGradGuard no_grad;
  const torch::Tensor input = x.contiguous();
  std::vector<int64_t> gathered_shape = x.sizes().vec();
  gathered_shape.insert(gathered_shape.begin(), comm.size());
  torch::Tensor gathered =
      torch::empty(gathered_shape, x.options().memory_format(torch::MemoryFormat::Contiguous));
  WorkHandle work;
  if (blocking) {
    comm.AllGather(input, gathered);
  } else {
    work = comm.AllGatherAsync(input, gathered);
  }
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape[dim] *= comm.size();
  return PendingAlongDim(std::move(work), [gathered, dim, out_shape] {
    torch::NoGradGuard no_grad;
    return gathered.movedim(0, dim).reshape(out_shape);
  });
}

// The chunks are made contiguous in rank order first ([size, .., c, ..])
// because ReduceScatter splits its flat input.
PendingAlongDim ReduceScatterAlong(const torch::Tensor& x, int64_t dim, Communicator& group,
                                   bool blocking) {
  dim = WrapDim(dim, x.dim());
  const int64_t size = group.size();
  const int64_t n = x.size(dim);
  FULCRUM_CHECK(n % size == 0, "dim ", dim, " of size ", n, " does not reduce-scatter over ", size,
                " ranks of group ", group.name());
  if (size == 1) return PendingAlongDim(nullptr, [x] { return x; });
  torch::NoGradGuard no_grad;
  std::vector<int64_t> split_shape = x.sizes().vec();
  split_shape[dim] = n / size;
  split_shape.insert(split_shape.begin() + dim, size);
  // [.., size, c, ..] -> [size, .., c, ..]
  const torch::Tensor input = x.reshape(split_shape).movedim(dim, 0).contiguous();
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape[dim] = n / size;
  torch::Tensor out =
      torch::empty(out_shape, x.options().memory_format(torch::MemoryFormat::Contiguous));
  WorkHandle work;
  if (blocking) {
    group.ReduceScatter(input, out, ReduceOp::kSum);
  } else {
    work = group.ReduceScatterAsync(input, out, ReduceOp::kSum);
  }
  return PendingAlongDim(std::move(work), [out] { return out; });
}

torch::Tensor ReduceScatterAlongDim(const torch::Tensor& x, int64_t dim, Communicator& group) {
  return ReduceScatterAlong(x, dim, group, /*blocking=*/true).Wait();
}

class CopyToTpRegionFn : public torch::autograd::Function<CopyToTpRegionFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, Communicator* group) {
    SaveGroup(ctx, group);
    return x.view_as(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {AllReduceSum(grads[0], LoadGroup(ctx)), torch::Tensor()};
  }
};

class ReduceFromTpRegionFn : public torch::autograd::Function<ReduceFromTpRegionFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, Communicator* group) {
    return AllReduceSum(x, *group);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {grads[0], torch::Tensor()};
  }
};

class GatherFromTpRegionFn : public torch::autograd::Function<GatherFromTpRegionFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, Communicator* group) {
    SaveGroup(ctx, group);
    return AllGatherAlongDim(x, -1, *group);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {SplitAlongDim(grads[0], -1, LoadGroup(ctx)), torch::Tensor()};
  }
};

class ScatterToTpRegionFn : public torch::autograd::Function<ScatterToTpRegionFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, Communicator* group) {
    SaveGroup(ctx, group);
    return SplitAlongDim(x, -1, *group);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {AllGatherAlongDim(grads[0], -1, LoadGroup(ctx)), torch::Tensor()};
  }
};

class ScatterToSpRegionFn : public torch::autograd::Function<ScatterToSpRegionFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, Communicator* group) {
    SaveGroup(ctx, group);
    return SplitAlongDim(x, kSeqDim, *group);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {AllGatherAlongDim(grads[0], kSeqDim, LoadGroup(ctx)), torch::Tensor()};
  }
};

// Backward is a reduce-scatter, not a split: the gathered sequence feeds a
// column-parallel matmul, so each rank's gradient is a partial sum.
class GatherFromSpRegionFn : public torch::autograd::Function<GatherFromSpRegionFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, Communicator* group) {
    SaveGroup(ctx, group);
    return AllGatherAlongDim(x, kSeqDim, *group);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {ReduceScatterAlongDim(grads[0], kSeqDim, LoadGroup(ctx)), torch::Tensor()};
  }
};

class ReduceScatterToSpRegionFn : public torch::autograd::Function<ReduceScatterToSpRegionFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, Communicator* group) {
    SaveGroup(ctx, group);
    return ReduceScatterAlongDim(x, kSeqDim, *group);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {AllGatherAlongDim(grads[0], kSeqDim, LoadGroup(ctx)), torch::Tensor()};
  }
};

class GatherSpToReplicatedFn : public torch::autograd::Function<GatherSpToReplicatedFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, Communicator* group) {
    SaveGroup(ctx, group);
    return AllGatherAlongDim(x, kSeqDim, *group);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    return {SplitAlongDim(grads[0], kSeqDim, LoadGroup(ctx)), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor CopyToTpRegion(const torch::Tensor& x, Communicator& tp) {
  if (tp.size() == 1) return x;
  return CopyToTpRegionFn::apply(x, &tp);
}

torch::Tensor ReduceFromTpRegion(const torch::Tensor& x, Communicator& tp) {
  if (tp.size() == 1) return x;
  return ReduceFromTpRegionFn::apply(x, &tp);
}

torch::Tensor GatherFromTpRegion(const torch::Tensor& x, Communicator& tp) {
  if (tp.size() == 1) return x;
  return GatherFromTpRegionFn::apply(x, &tp);
}

torch::Tensor ScatterToTpRegion(const torch::Tensor& x, Communicator& tp) {
  if (tp.size() == 1) return x;
  return ScatterToTpRegionFn::apply(x, &tp);
}

torch::Tensor ScatterToSpRegion(const torch::Tensor& x, Communicator& tp) {
  if (tp.size() == 1) return x;
  return ScatterToSpRegionFn::apply(x, &tp);
}

torch::Tensor GatherFromSpRegion(const torch::Tensor& x, Communicator& tp) {
  if (tp.size() == 1) return x;
  return GatherFromSpRegionFn::apply(x, &tp);
}

torch::Tensor ReduceScatterToSpRegion(const torch::Tensor& x, Communicator& tp) {
  if (tp.size() == 1) return x;
  return ReduceScatterToSpRegionFn::apply(x, &tp);
}

torch::Tensor GatherSpToReplicated(const torch::Tensor& x, Communicator& tp) {
  if (tp.size() == 1) return x;
  return GatherSpToReplicatedFn::apply(x, &tp);
}

torch::Tensor AllGatherAlongDim(const torch::Tensor& x, int64_t dim, Communicator& comm) {
  return GatherAlongDim(x, dim, comm, /*blocking=*/true).Wait();
}

PendingAlongDim AllGatherAlongDimAsync(const torch::Tensor& x, int64_t dim, Communicator& comm) {
  return GatherAlongDim(x, dim, comm, /*blocking=*/false);
}

PendingAlongDim ReduceScatterAlongDimAsync(const torch::Tensor& x, int64_t dim,
                                           Communicator& group) {
  return ReduceScatterAlong(x, dim, group, /*blocking=*/false);
}

torch::Tensor PendingAlongDim::Wait() {
  FULCRUM_CHECK(finish_ != nullptr, "a pending collective waited on twice");
  if (work_ != nullptr) work_->Wait();
  work_.reset();
  torch::Tensor result = finish_();
  finish_ = nullptr;
  return result;
}

}  // namespace fulcrum::parallel::tensor
