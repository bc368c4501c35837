// Named tensors held by different pipeline stages, brought to stage 0: what
// a checkpoint (full tensors of the whole model) needs under pp. The same
// gather brings an ep group's routed experts to its first rank.
#pragma once

#include <vector>

#include "parallel/comm/communicator.h"
#include "trainer/checkpoint/safetensors_writer.h"

namespace fulcrum::loop {

// Collective over the pp group `pp` (group rank = stage). Stage 0 returns its
// own tensors followed by those of stages 1, 2, ... in their order, each
// name once (a tied embedding copy on the last stage is dropped: stage 0's is
// kept). The other stages send theirs and return an empty list. Tensors
// travel contiguous, as they are (dtype and shape kept).
std::vector<checkpoint::NamedTensor> GatherAcrossStages(std::vector<checkpoint::NamedTensor> mine,
                                                        parallel::Communicator& pp);

}  // namespace fulcrum::loop
