// all_to_all of rows as an autograd function: the exchange at the heart of
// expert parallelism. Forward sends consecutive blocks of input_splits[r]
// rows to rank r and receives output_splits[r] rows from rank r (rank
// order); backward sends the gradients back the same way reversed.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "parallel/comm/communicator.h"

namespace fulcrum::parallel::expert {

// x [sum(input_splits), ...] -> [sum(output_splits), ...] (same trailing
// shape and dtype). The splits must agree across the group (rank r's
// output_splits[s] == rank s's input_splits[r]); TokenDispatcher exchanges
// the counts first. Zero-row blocks are allowed.
torch::Tensor AllToAllRows(const torch::Tensor& x, const std::vector<int64_t>& output_splits,
                           const std::vector<int64_t>& input_splits, Communicator& group);

}  // namespace fulcrum::parallel::expert
