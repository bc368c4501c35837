// Writes .safetensors files that the Python `safetensors` library and HF
// transformers read.
//
// Defines: NamedTensor, WriteSafetensors, TensorProducer,
// WriteSafetensorsStreamed, SafetensorsHeader.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fulcrum::checkpoint {

struct NamedTensor {
  std::string name;
  torch::Tensor tensor;  // any device, dtype with a safetensors name, any layout
};

// Header JSON sorted by name, padded with spaces to a multiple of 8 bytes,
// tensors contiguous in header order, optional "__metadata__". Atomic: a
// temp file in the same directory, fsync, rename, directory fsync; nothing is
// left at `path` on error. Tensors are moved to CPU one at a time and made
// contiguous. Duplicate or empty names, undefined tensors and dtypes without
// a safetensors name are InvalidArgument.
absl::Status WriteSafetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// The value of the tensor `index` of a streamed write, asked for when its
// bytes are due; it must have the dtype and shape its spec announced.
using TensorProducer = std::function<absl::StatusOr<torch::Tensor>(size_t index)>;

// As WriteSafetensors, but `specs` only announce names, dtypes and shapes
// (meta tensors will do) and the data is laid out in the given order: each
// value is produced, written and released before the next is asked for, so
// a file of any size passes through the memory of one tensor. A value whose
// dtype or shape differs from its spec is an error naming the tensor.
absl::Status WriteSafetensorsStreamed(const std::string& path,
                                      const std::vector<NamedTensor>& specs,
                                      const TensorProducer& produce,
                                      const std::map<std::string, std::string>& metadata = {});

// The padded header bytes (without the 8-byte length) WriteSafetensors
// writes for `tensors`; exposed for tests and for size planning.
absl::StatusOr<std::string> SafetensorsHeader(const std::vector<NamedTensor>& tensors,
                                              const std::map<std::string, std::string>& metadata);

}  // namespace fulcrum::checkpoint
