// Optimizer: the interface the trainer steps, checkpoints and measures,
// implemented by AdamW (every rank holds the whole state) and ShardedAdamW
// (ZeRO-1: each dp rank holds the state of its chunk of every gradient bucket).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "trainer/checkpoint/safetensors_writer.h"

namespace fulcrum::optim {

struct NamedParameter {
  std::string name;     // module path + parameter name ("layers.0.self_attn.q_proj.lora_A.weight")
  torch::Tensor param;  // any shape, any floating dtype
  bool decay = true;    // whether weight decay applies
};

// A part of the optimizer state this rank holds: elements [flat_begin,
// flat_begin + values.numel()) of the flattened state `key` of `param` (of
// this rank's shard of the parameter, as the parameter tensor it updates).
// `values` is the live state: a sharded checkpoint writes it as it is and
// reads into it.
struct LocalStateShard {
  std::string key;    // "exp_avg.<param>", "exp_avg_sq.<param>" or "master.<param>"
  std::string param;  // the parameter's name
  int64_t flat_begin = 0;
  torch::Tensor values;  // contiguous fp32
};

class Optimizer {
 public:
  virtual ~Optimizer();
  // One update with learning rate `lr` from the parameters' current grads
  // times `grad_scale` (the clip coefficient: ClipCoefficient; 1 for none).
  // The grads are consumed: the update may scale them in place.
  virtual void Step(double lr, float grad_scale) = 0;
  virtual const std::vector<NamedParameter>& parameters() const = 0;
  virtual int64_t step_count() const = 0;
  // Full-shape tensors, keys as AdamW::StateDict ("step", "exp_avg.<name>",
  // "exp_avg_sq.<name>", "master.<name>"), so checkpoints do not depend on
  // the layout. NOTE: collective over dp for a sharded optimizer.
  virtual std::vector<checkpoint::NamedTensor> StateDict() = 0;
  // Full-shape tensors as StateDict returns; validated before anything
  // changes (the error names the key).
  virtual absl::Status LoadStateDict(const std::map<std::string, torch::Tensor>& state) = 0;
  // Every piece of state this rank holds (no communication), and the step
  // count that goes with it (RestoreStepCount after reading into them).
  virtual std::vector<LocalStateShard> LocalState() = 0;
  virtual void RestoreStepCount(int64_t step) = 0;
  // Bytes of optimizer state (moments + fp32 masters) held on this rank.
  virtual int64_t state_bytes() const = 0;
};

}  // namespace fulcrum::optim
