// Deterministic random initialisation of a CausalLM (for `fulcrum init` and
// from-scratch training).
#pragma once

#include <ATen/core/Generator.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "trainer/checkpoint/safetensors_writer.h"
#include "trainer/models/causal_lm.h"
#include "trainer/models/model_config.h"

namespace fulcrum::models {

// 2-D weights (linears, embedding, routers, experts) ~ N(0,
// initializer_range), 1-D norm weights = 1, biases = 0, persistent buffers
// (DeepSeek-V3 gate.e_score_correction_bias) = 0. Drawn on the CPU in fp32 from a generator seeded
// with `seed`, in the whole single-rank model's named_parameters() order, then copied (so the
// values do not depend on the device, and the dtype only rounds them). A tp shard or a pipeline
// stage gets exactly its part of the whole model's values (a tied embedding copy on the last stage
// included). Adapter (lora_*) parameters are left alone.
void InitializeWeights(CausalLMImpl& model, uint64_t seed);

// The value InitializeWeights gives every base parameter and persistent buffer
// of the whole single-rank model with `config`, in HfStateDict order: sink(HF name, full fp32 CPU
// tensor). The model's shapes come from a meta-device build (no memory): one
// full tensor is alive at a time.
void ForEachInitialValue(
    const ModelConfig& config, uint64_t seed,
    const std::function<void(const std::string& name, const torch::Tensor& value)>& sink);

// ForEachInitialValue as a cursor: the values in the same order, one at a
// time, on demand (an exporter pulls them while it writes).
class InitialValueStream {
 public:
  InitialValueStream(const ModelConfig& config, uint64_t seed);
  // The names and meta-device shapes of every value, in order.
  const std::vector<checkpoint::NamedTensor>& specs() const { return specs_; }
  // The value of `name`. Asking in order costs one draw per value; asking
  // for an earlier one restarts the generator and draws up to it again.
  // FULCRUM_CHECK that `name` is one of specs().
  torch::Tensor ValueOf(const std::string& name);

 private:
  std::vector<checkpoint::NamedTensor> specs_;
  std::map<std::string, size_t> index_;
  double std_ = 0.0;
  uint64_t seed_ = 0;
  size_t next_ = 0;  // the index of the value the generator draws next
  at::Generator generator_;
};

}  // namespace fulcrum::models
