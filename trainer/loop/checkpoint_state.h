// This rank's training state as sharded-checkpoint pieces, and back.
//
// Logical tensors (sharded_checkpoint.h):
//   model/<param>             every trainable parameter: this rank's tp box
//   model/<buffer>            persistent buffers (routers' correction biases), whole
//   optimizer/<key>           "exp_avg.<param>", ...: the parameter's box, under
//                             ZeRO-1 only the rank's flat segment of it
//   rng/cpu_generator.<rank>  the rank's generator state
// Frozen base weights are not saved: the recipe's model.path supplies them.
// Whatever the layout that saved them, each rank reads back the region its
// own layout holds (dp, zero, tp, pp and ep may all change).
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "trainer/checkpoint/sharded_checkpoint.h"
#include "trainer/models/parallel_layout.h"
#include "trainer/optim/optimizer.h"

namespace fulcrum::loop {

// name -> layout, for the trainable parameters.
using LayoutIndex = std::map<std::string, const models::ParamLayout*>;
LayoutIndex IndexLayouts(const std::vector<optim::NamedParameter>& params,
                         const std::vector<models::ParamLayout>& layouts);

// The box of the full parameter this rank holds.
checkpoint::ShardRegion RegionOf(const models::ParamLayout& layout);

// No communication; the pieces view the live tensors. Under pp with tied
// embeddings the last stage's copy of the embedding (and its state) is left
// to the first stage: its ZeRO-1 segments follow another bucket layout, and
// the values are the same.
std::vector<checkpoint::LocalPiece> TrainingStatePieces(const LayoutIndex& layouts,
                                                        optim::Optimizer& optimizer,
                                                        torch::nn::Module& model, int rank,
                                                        int pp_rank);

// Reads this rank's parameters, buffers, optimizer state and generator
// (when the checkpoint has this rank's) from `reader`. Errors name the
// checkpoint file and the tensor.
absl::Status RestoreTrainingState(checkpoint::ShardedCheckpointReader& reader,
                                  const LayoutIndex& layouts, optim::Optimizer& optimizer,
                                  torch::nn::Module& model, int rank);

}  // namespace fulcrum::loop
