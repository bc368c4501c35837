#include "trainer/loop/forward_inputs.h"

namespace fulcrum::loop {

models::ForwardInputs ForwardInputsOn(const data::MicroBatch& micro, const torch::Device& device) {
  const auto on_device = [&](const torch::Tensor& t) {
    return t.defined() ? t.to(torch::TensorOptions().device(device), /*non_blocking=*/true) : t;
  };
  models::ForwardInputs inputs;
  inputs.input_ids = on_device(micro.input_ids);
  inputs.attention_mask = micro.attention_mask;
  inputs.position_ids = on_device(micro.position_ids);
  inputs.document_ids = micro.document_ids;
  return inputs;
}

}  // namespace fulcrum::loop
