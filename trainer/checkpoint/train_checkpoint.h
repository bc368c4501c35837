// Training checkpoints (one rank for now; the checkpoint issue makes them
// sharded and reshardable).
//
// Layout under checkpoint.dir:
//   step-00000010/  model.safetensors       trainable tensors, by parameter name
//                   optimizer.safetensors   AdamW state (moments, masters, step)
//                   rng.safetensors         generator states
//                   trainer_state.json      step, data position, world size
//                   recipe.yaml             the complete recipe of the run
//   latest          text file naming the newest complete step directory
// A step directory is written under a temporary name and renamed only when
// complete; `latest` is replaced atomically after that, and pruning of old
// directories (keep_last) happens only then.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/checkpoint/safetensors_writer.h"

namespace fulcrum::checkpoint {

struct TrainCheckpoint {
  int64_t step = 0;       // completed optimizer steps
  int64_t data_step = 0;  // the loader's position
  int64_t world_size = 1;
  std::string recipe_yaml;
  std::vector<NamedTensor> model;      // trainable tensors
  std::vector<NamedTensor> optimizer;  // AdamW::StateDict()
  std::vector<NamedTensor> rng;        // generator states (uint8 tensors)
};

struct LoadedTrainCheckpoint {
  std::string dir;
  int64_t step = 0;
  int64_t data_step = 0;
  int64_t world_size = 1;
  std::string recipe_yaml;
  std::map<std::string, torch::Tensor> model;
  std::map<std::string, torch::Tensor> optimizer;
  std::map<std::string, torch::Tensor> rng;
};

// Writes root/step-NNNNNNNN atomically, points root/latest at it, then prunes
// all but the newest keep_last (0 keeps all). Returns the directory written.
absl::StatusOr<std::string> SaveTrainCheckpoint(const std::string& root,
                                                const TrainCheckpoint& checkpoint,
                                                int64_t keep_last);

// "latest" -> the directory root/latest names; anything else is a path to a
// step directory (or to a root holding `latest`).
absl::StatusOr<std::string> ResolveCheckpoint(const std::string& root, const std::string& resume);

bool IsTrainCheckpoint(const std::string& dir);

absl::StatusOr<LoadedTrainCheckpoint> LoadTrainCheckpoint(const std::string& dir);

}  // namespace fulcrum::checkpoint
