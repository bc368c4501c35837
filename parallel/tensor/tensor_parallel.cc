#include "parallel/tensor/tensor_parallel.h"

#include "core/check.h"
#include "parallel/tensor/tp_ops.h"

namespace fulcrum::parallel::tensor {

ShardRange EvenShard(int64_t n, int rank, int size) {
  FULCRUM_CHECK(size >= 1 && rank >= 0 && rank < size, "rank ", rank, " of size ", size);
  FULCRUM_CHECK(n >= 0 && n % size == 0, "dimension of ", n, " does not split evenly over ", size,
                " ranks (", n, " % ", size, " = ", n % size, ")");
  const int64_t length = n / size;
  return ShardRange{rank * length, length};
}

torch::Tensor ColumnParallelInput(const torch::Tensor& x, const TensorParallel& tp) {
  if (!tp.active()) return x;
  return tp.sequence_parallel ? GatherFromSpRegion(x, *tp.group) : CopyToTpRegion(x, *tp.group);
}

torch::Tensor RowParallelOutput(const torch::Tensor& partial, const TensorParallel& tp) {
  if (!tp.active()) return partial;
  return tp.sequence_parallel ? ReduceScatterToSpRegion(partial, *tp.group)
                              : ReduceFromTpRegion(partial, *tp.group);
}

}  // namespace fulcrum::parallel::tensor
