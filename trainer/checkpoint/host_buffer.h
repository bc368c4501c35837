// Host memory for checkpoint snapshots: large, long-lived, filled at once.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace fulcrum::checkpoint {

// A CPU tensor [numel] of `dtype`, its pages already faulted in. Backed by
// an anonymous mapping advised as transparent huge pages, so that faulting
// in gigabytes costs one fault per 2 MiB instead of one per 4 KiB (on a
// kernel whose THP mode is "madvise" that is 3 s against 15 ms per GiB);
// elsewhere the advice is ignored and the pages are ordinary ones.
torch::Tensor NewHostBuffer(int64_t numel, torch::ScalarType dtype);

}  // namespace fulcrum::checkpoint
