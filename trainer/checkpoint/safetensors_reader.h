// Memory-mapped, validated reader of one .safetensors file.
//
// File layout: [8-byte little-endian header length N][N bytes of JSON header]
// [data section]. The header maps each tensor name to {dtype, shape,
// data_offsets: [begin, end)} relative to the data section, plus an optional
// "__metadata__" string map.
//
// Defines: TensorEntry, SafetensorsReader.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fulcrum::checkpoint {

struct TensorEntry {
  std::string name;
  std::string dtype;  // safetensors dtype string, e.g. "BF16"
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets relative to the data section
};

class SafetensorsReader : public std::enable_shared_from_this<SafetensorsReader> {
 public:
  // mmaps the file read-only and validates the header (length, JSON, every
  // entry's dtype/shape/data_offsets, ranges in bounds, sizes, no overlap).
  // Every error names the file and, when relevant, the tensor.
  static absl::StatusOr<std::shared_ptr<SafetensorsReader>> Open(const std::string& path);
  ~SafetensorsReader();  // munmap
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;

  const std::string& path() const { return path_; }
  std::vector<std::string> Names() const;  // sorted
  bool Contains(const std::string& name) const;
  absl::StatusOr<TensorEntry> Entry(const std::string& name) const;
  const std::map<std::string, std::string>& Metadata() const { return metadata_; }

  // Zero-copy CPU tensor viewing the mapping; the tensor keeps this reader
  // (and so the mapping) alive. NOTE: read-only memory: clone before writing.
  // F8 types are returned dequantized to float32 (a copy); a tensor whose
  // bytes are misaligned for its element type is returned as a copy too.
  absl::StatusOr<torch::Tensor> View(const std::string& name) const;

  // The tensor's raw bytes: a zero-copy uint8 view, shape [end - begin].
  // This is how F8 tensors can be read undecoded.
  absl::StatusOr<torch::Tensor> ViewBytes(const std::string& name) const;

  // Drops the pages of the mapping from this process's resident memory (they
  // stay in the page cache; a later access faults them back in). Views stay
  // valid. A reader that streams a file larger than memory calls it as it
  // goes, so its RSS does not grow with the file.
  void DropResidentPages() const;

  // A copy of rows [start, start+length) along `dim` (negative dims count
  // from the end) reading only the bytes needed: one contiguous range for
  // dim 0, one strided run per outer index otherwise. F8: float32.
  absl::StatusOr<torch::Tensor> ReadSlice(const std::string& name, int64_t dim, int64_t start,
                                          int64_t length) const;

 private:
  SafetensorsReader() = default;
  absl::StatusOr<const TensorEntry*> Find(const std::string& name) const;
  const uint8_t* DataOf(const TensorEntry& entry) const { return data_ + entry.begin; }

  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  const uint8_t* data_ = nullptr;  // start of the data section inside the mapping
  std::map<std::string, TensorEntry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace fulcrum::checkpoint
