#include "parallel/pipeline/forward_only.h"

#include "core/check.h"

namespace fulcrum::parallel::pipeline {

void RunForwardOnly(StageModel& model, const ScheduleShape& shape, int stage,
                    Communicator& activations) {
  FULCRUM_CHECK(stage >= 0 && stage < shape.stages, "stage ", stage, " of ", shape.stages);
  torch::NoGradGuard no_grad;
  const int p = shape.stages;
  const int virtual_stages = p * shape.virtual_stages;
  for (int mb = 0; mb < shape.micro_batches; ++mb) {
    for (int vs = stage; vs < virtual_stages; vs += p) {
      const int chunk = vs / p;
      torch::Tensor input;
      if (vs > 0) {
        input = torch::empty(model.ActivationShape(chunk, mb), model.ActivationOptions());
        activations.Recv(input, (vs - 1) % p);
      }
      const torch::Tensor out = model.Forward(chunk, mb, input);
      if (vs + 1 < virtual_stages) activations.Send(out.contiguous(), (vs + 1) % p);
    }
  }
}

}  // namespace fulcrum::parallel::pipeline
