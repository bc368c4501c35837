// Training state in full (unsharded) tensors, whatever the layout: what a
// checkpoint holds, so that any tp/dp/zero layout can resume it.
//
//   GatherTrainables / GatherOptimizerState  shards -> full (collective over tp)
//   ShardOptimizerState                      full -> this rank's shards
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "trainer/checkpoint/safetensors_writer.h"
#include "trainer/models/parallel_layout.h"
#include "trainer/optim/adamw.h"

namespace fulcrum::loop {

// name -> layout, for the trainable parameters.
using LayoutIndex = std::map<std::string, const models::ParamLayout*>;
LayoutIndex IndexLayouts(const std::vector<optim::NamedParameter>& params,
                         const std::vector<models::ParamLayout>& layouts);

// Every trainable parameter, full size (collective over tp: every tp rank calls).
std::vector<checkpoint::NamedTensor> GatherTrainables(
    const std::vector<optim::NamedParameter>& params, const LayoutIndex& layouts);

// Optimizer state entries ("exp_avg.<name>", "exp_avg_sq.<name>",
// "master.<name>", "step"): those of a parameter gathered like it.
std::vector<checkpoint::NamedTensor> GatherOptimizerState(
    std::vector<checkpoint::NamedTensor> state, const LayoutIndex& layouts);

// The entries of `full` that belong to `layouts`' parameters, plus those of
// no parameter ("step"): a pipeline stage's part of a whole-model state.
std::map<std::string, torch::Tensor> StateOfParameters(
    const std::map<std::string, torch::Tensor>& full, const LayoutIndex& layouts);

// The entries (parameters under their names, optimizer state under its keys)
// of routed experts' parameters: what an ep rank other than the first adds to
// a whole-model gather (the first holds the replicated rest).
std::vector<checkpoint::NamedTensor> RoutedExpertEntries(std::vector<checkpoint::NamedTensor> all,
                                                         const LayoutIndex& layouts);

// Full optimizer/parameter entries -> this rank's shards (keys kept).
std::map<std::string, torch::Tensor> ShardOptimizerState(
    const std::map<std::string, torch::Tensor>& full, const LayoutIndex& layouts);

}  // namespace fulcrum::loop
