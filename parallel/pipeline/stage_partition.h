// StagePartition: which decoder layers each pipeline stage holds.
//
// The model's layers are cut into stages x virtual_stages contiguous pieces,
// the virtual stages, in order. Virtual stage vs runs on stage vs % stages as
// its local chunk vs / stages (Megatron's interleaving: chunk c of every
// stage comes before chunk c + 1 of any stage). Without interleaving
// (virtual_stages = 1) virtual stage = stage and every stage has one chunk.
//
//   8 layers, pp 2, virtual 2, even:  vs0 = layers 0-1 on stage 0 chunk 0,
//   vs1 = 2-3 on stage 1 chunk 0, vs2 = 4-5 on stage 0 chunk 1, vs3 = 6-7 on
//   stage 1 chunk 1.
//
// The first virtual stage also holds the token embedding; the last one the
// final norm, the lm_head and the loss (and, with tied embeddings, a copy of
// the embedding matrix; see trainer/models).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace fulcrum::parallel::pipeline {

struct LayerRange {
  int64_t first = 0;  // global index of the first layer
  int64_t count = 0;
};

// One model chunk held by a stage.
struct StageChunk {
  int virtual_stage = 0;  // chunk * stages + stage
  LayerRange layers;
  bool first = false;  // virtual stage 0: takes token ids, holds the embedding
  bool last = false;   // the last virtual stage: final norm, lm_head, loss
};

class StagePartition {
 public:
  // `layers_per_virtual_stage` empty: an even split (num_layers must be
  // divisible by stages x virtual_stages). Otherwise it has stages x
  // virtual_stages entries in virtual-stage order, each >= 1, summing to
  // num_layers. Errors name the recipe keys (parallel.pp, parallel.pp_virtual,
  // parallel.pp_layers) and give the arithmetic, e.g. "parallel.pp_layers:
  // [7, 8, 8] has 3 entries, pp(4) x pp_virtual(1) = 4 needed".
  static absl::StatusOr<StagePartition> Create(
      int64_t num_layers, int stages, int virtual_stages,
      const std::vector<int64_t>& layers_per_virtual_stage = {});

  int stages() const { return stages_; }
  int virtual_stages() const { return virtual_stages_; }
  int num_virtual_stages() const { return stages_ * virtual_stages_; }
  int64_t num_layers() const;
  LayerRange Layers(int virtual_stage) const;
  int StageOf(int virtual_stage) const { return virtual_stage % stages_; }
  int ChunkOf(int virtual_stage) const { return virtual_stage / stages_; }
  // Stage `stage`'s chunks, chunk 0 first.
  std::vector<StageChunk> ChunksOf(int stage) const;

 private:
  StagePartition(int stages, int virtual_stages, std::vector<int64_t> counts)
      : stages_(stages), virtual_stages_(virtual_stages), counts_(std::move(counts)) {}

  int stages_ = 1;
  int virtual_stages_ = 1;
  std::vector<int64_t> counts_;  // layers per virtual stage
};

}  // namespace fulcrum::parallel::pipeline
