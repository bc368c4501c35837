// The weights of a Hugging Face model directory, read and written in the
// layout of transformers' save_pretrained:
//   <prefix>.safetensors                               (one file), or
//   <prefix>.safetensors.index.json                    {"metadata": {"total_size": N},
//   <prefix>-00001-of-0000K.safetensors ...             "weight_map": {name: file}}
//
// Defines: HfWeights, WriteHfWeights, WriteHfWeightsStreamed.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/checkpoint/safetensors_reader.h"
#include "trainer/checkpoint/safetensors_writer.h"

namespace fulcrum::checkpoint {

class HfWeights {
 public:
  // Opens "<dir>/model.safetensors" if present (transformers prefers it too),
  // else "<dir>/model.safetensors.index.json" and every shard it names,
  // eagerly; every index entry must exist in its shard.
  static absl::StatusOr<HfWeights> Open(const std::string& dir);
  // Same with another file prefix, e.g. "adapter_model".
  static absl::StatusOr<HfWeights> Open(const std::string& dir, const std::string& prefix);

  std::vector<std::string> Names() const;  // sorted
  bool Contains(const std::string& name) const;
  absl::StatusOr<TensorEntry> Entry(const std::string& name) const;
  // See SafetensorsReader::View / ReadSlice / ViewBytes. View decodes FP8
  // (Entry(name).dtype "F8_E4M3" / "F8_E5M2") to float32; ViewBytes gives the
  // undecoded bytes as uint8 (LibTorch 1.13 has no float8 type).
  absl::StatusOr<torch::Tensor> ViewBytes(const std::string& name) const;
  absl::StatusOr<torch::Tensor> View(const std::string& name) const;
  absl::StatusOr<torch::Tensor> ReadSlice(const std::string& name, int64_t dim, int64_t start,
                                          int64_t length) const;
  const std::string& dir() const { return dir_; }
  // SafetensorsReader::DropResidentPages of every shard.
  void DropResidentPages() const;
  // The reader holding `name` (e.g. for its path in error messages).
  absl::StatusOr<std::shared_ptr<SafetensorsReader>> ReaderOf(const std::string& name) const;

 private:
  std::string dir_;
  // tensor name -> the shard holding it (shards shared between names).
  std::map<std::string, std::shared_ptr<SafetensorsReader>> readers_;
};

// Writes `tensors` as an HF model's weights into `dir` (which must exist):
// "<prefix>.safetensors" when the total size <= max_shard_bytes, else
// "<prefix>-00001-of-0000N.safetensors"... plus "<prefix>.safetensors.index.json"
// (metadata.total_size, weight_map). A tensor is never split; shards are
// filled in the given order; a tensor larger than max_shard_bytes gets a shard
// of its own. Each file has metadata {"format": "pt"}. Stale files of a
// previous save with the same prefix (the other layout, or shards of another
// count) are removed after the new ones are in place.
absl::Status WriteHfWeights(const std::string& dir, const std::vector<NamedTensor>& tensors,
                            int64_t max_shard_bytes, const std::string& prefix = "model");

// As WriteHfWeights, but `specs` announce the tensors (meta tensors will do)
// and produce(i) gives the i-th value when it is due (WriteSafetensorsStreamed):
// values are asked for once each, in the order of `specs`, and one is alive
// at a time.
absl::Status WriteHfWeightsStreamed(const std::string& dir, const std::vector<NamedTensor>& specs,
                                    const TensorProducer& produce, int64_t max_shard_bytes,
                                    const std::string& prefix = "model");

}  // namespace fulcrum::checkpoint
