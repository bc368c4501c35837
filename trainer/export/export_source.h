// The model an export writes, one tensor at a time: the only place that
// knows where each value comes from, so that a model of any size passes
// through the memory of its largest tensor.
//
// From a training checkpoint: trained tensors (every parameter of a full
// fine-tune; the adapters and moved router biases of a LoRA run) are read
// from the checkpoint's pieces; the frozen base comes from the recipe's
// model.path (HF weights, FP8 dequantized) or, for a random init, is drawn
// again from the recipe's seed. From an HF directory: its weights, and the
// adapters of an optional PEFT directory.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "trainer/checkpoint/hf_weights.h"
#include "trainer/checkpoint/sharded_checkpoint.h"
#include "trainer/lora/lora_linear.h"
#include "trainer/lora/peft_adapter.h"
#include "trainer/models/init.h"
#include "trainer/models/model_config.h"

namespace fulcrum::exporter {

class ExportSource {
 public:
  // `dir`: a checkpoint step directory (ResolveCheckpoint has found it).
  static absl::StatusOr<std::unique_ptr<ExportSource>> FromTrainCheckpoint(const std::string& dir);
  // `adapter_dir` "" = no adapter.
  static absl::StatusOr<std::unique_ptr<ExportSource>> FromHfDirectory(
      const std::string& dir, const std::string& adapter_dir);

  const models::ModelConfig& config() const { return config_; }
  // The dtype the model holds its parameters in (the training's).
  torch::ScalarType dtype() const { return dtype_; }
  // The HF directory whose tokenizer and generation files go along ("" when
  // the base was a random init).
  const std::string& source_dir() const { return source_dir_; }
  // What a PEFT adapter names as its base_model_name_or_path.
  const std::string& base_path() const { return base_path_; }
  // Every base parameter and persistent buffer under its HF name, in
  // HfStateDict order, as meta tensors of dtype().
  const std::vector<checkpoint::NamedTensor>& specs() const { return specs_; }

  bool has_adapters() const { return !adapted_.empty(); }
  const lora::LoraSpec& lora_spec() const { return lora_spec_; }
  // The module paths that carry an adapter, in model order.
  const std::vector<std::string>& adapted_modules() const { return adapted_; }

  // The value the model holds for a base parameter or buffer `name` (one of
  // specs()), in dtype(), adapters not applied. Errors name the file.
  absl::StatusOr<torch::Tensor> Value(const std::string& name);
  // The whole adapter of `module_path` (one of adapted_modules()).
  absl::StatusOr<lora::AdapterValues> Adapter(const std::string& module_path);
  // Value(name) with its module's adapter folded in (W + scaling B A), as
  // lora::MergeLora folds it.
  absl::StatusOr<torch::Tensor> MergedValue(const std::string& name);

  // Bytes read from a training checkpoint so far (0 otherwise).
  uint64_t checkpoint_bytes_read() const;

 private:
  ExportSource() = default;
  absl::Status IndexCheckpointAdapters();
  absl::StatusOr<torch::Tensor> BaseValue(const std::string& name);
  const checkpoint::NamedTensor* SpecOf(const std::string& name) const;

  models::ModelConfig config_;
  torch::ScalarType dtype_ = torch::kFloat;
  std::string source_dir_, base_path_;
  std::vector<checkpoint::NamedTensor> specs_;
  std::map<std::string, size_t> spec_index_;
  lora::LoraSpec lora_spec_;
  std::vector<std::string> adapted_;

  // Where values come from; a value the checkpoint holds is read from it.
  std::unique_ptr<checkpoint::ShardedCheckpointReader> checkpoint_;
  std::string base_dir_;                                 // HF weights of the base ("" = none)
  std::optional<checkpoint::HfWeights> base_;            // opened at first use
  std::unique_ptr<models::InitialValueStream> initial_;  // a random-init base
  std::map<std::string, lora::AdapterValues> peft_;      // a PEFT directory's adapters
};

}  // namespace fulcrum::exporter
