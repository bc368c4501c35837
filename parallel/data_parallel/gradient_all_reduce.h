// Sums gradients over the data-parallel ranks (CPU tensors, MPI).
//
// The minimal data parallelism the foundation needs: one flat fp32 buffer,
// one MPI_Allreduce per step, after the last micro-batch's backward. The
// parallel-core issue replaces it with bucketed, overlapped reduction through
// the Communicator (and reduce-scatter for ZeRO-1).
#pragma once

#include <mpi.h>
#include <torch/torch.h>

#include <vector>

namespace fulcrum::parallel {

// grads: defined gradient tensors (any float dtype); summed in fp32 in place.
void AllReduceGradients(const std::vector<torch::Tensor>& grads, MPI_Comm comm);

// Sum of one double over `comm`.
double AllReduceSum(double value, MPI_Comm comm);

}  // namespace fulcrum::parallel
