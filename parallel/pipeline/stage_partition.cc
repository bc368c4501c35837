// StagePartition::Create checks the recipe's pipeline keys against the
// model's layer count; the accessors are plain index arithmetic over the
// per-virtual-stage layer counts.
#include "parallel/pipeline/stage_partition.h"

#include <numeric>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/check.h"

namespace fulcrum::parallel::pipeline {
namespace {

// "pp(4) x pp_virtual(2) = 8", or "pp(4)" without interleaving.
std::string DescribeVirtualStages(int stages, int virtual_stages) {
  if (virtual_stages == 1) return absl::StrCat("pp(", stages, ")");
  return absl::StrCat("pp(", stages, ") x pp_virtual(", virtual_stages,
                      ") = ", int64_t{stages} * virtual_stages);
}

absl::Status CheckExplicitCounts(int64_t num_layers, int stages, int virtual_stages,
                                 const std::vector<int64_t>& counts) {
  const std::string list = absl::StrCat("[", absl::StrJoin(counts, ", "), "]");
  const int64_t needed = int64_t{stages} * virtual_stages;
  if (static_cast<int64_t>(counts.size()) != needed) {
    return absl::InvalidArgumentError(absl::StrCat(
        "parallel.pp_layers: ", list, " has ", counts.size(), " entries, pp(", stages,
        ") x pp_virtual(", virtual_stages, ") = ", needed, " needed (one per virtual stage)"));
  }
  for (size_t i = 0; i < counts.size(); ++i) {
    if (counts[i] < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("parallel.pp_layers: ", list, ": entry ", i, " is ", counts[i],
                       "; every virtual stage needs at least one layer"));
    }
  }
  const int64_t sum = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  if (sum != num_layers) {
    return absl::InvalidArgumentError(absl::StrCat("parallel.pp_layers: ", list, " sums to ",
                                                   absl::StrJoin(counts, " + "), " = ", sum,
                                                   ", but the model has ", num_layers, " layers"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<StagePartition> StagePartition::Create(
    int64_t num_layers, int stages, int virtual_stages,
    const std::vector<int64_t>& layers_per_virtual_stage) {
  if (stages < 1) {
    return absl::InvalidArgumentError(absl::StrCat("parallel.pp: must be >= 1, got ", stages));
  }
  if (virtual_stages < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("parallel.pp_virtual: must be >= 1, got ", virtual_stages));
  }
  if (num_layers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("the model has ", num_layers, " layers; a pipeline needs at least one"));
  }
  const int64_t num_virtual = int64_t{stages} * virtual_stages;
  if (!layers_per_virtual_stage.empty()) {
    absl::Status status =
        CheckExplicitCounts(num_layers, stages, virtual_stages, layers_per_virtual_stage);
    if (!status.ok()) return status;
    return StagePartition(stages, virtual_stages, layers_per_virtual_stage);
  }
  if (num_layers % num_virtual != 0) {
    const std::string key = virtual_stages == 1 ? "parallel.pp" : "parallel.pp_virtual";
    return absl::InvalidArgumentError(absl::StrCat(
        key, ": ", num_layers, " layers are not divisible by ",
        DescribeVirtualStages(stages, virtual_stages), " (", num_layers, " % ", num_virtual, " = ",
        num_layers % num_virtual, "); set parallel.pp_layers to split them unevenly"));
  }
  return StagePartition(stages, virtual_stages,
                        std::vector<int64_t>(num_virtual, num_layers / num_virtual));
}

int64_t StagePartition::num_layers() const {
  return std::accumulate(counts_.begin(), counts_.end(), int64_t{0});
}

LayerRange StagePartition::Layers(int virtual_stage) const {
  FULCRUM_CHECK(virtual_stage >= 0 && virtual_stage < num_virtual_stages(),
                "virtual_stage=", virtual_stage, " of ", num_virtual_stages());
  const int64_t first =
      std::accumulate(counts_.begin(), counts_.begin() + virtual_stage, int64_t{0});
  return LayerRange{first, counts_[virtual_stage]};
}

std::vector<StageChunk> StagePartition::ChunksOf(int stage) const {
  FULCRUM_CHECK(stage >= 0 && stage < stages_, "stage=", stage, " of ", stages_);
  std::vector<StageChunk> chunks;
  chunks.reserve(virtual_stages_);
  for (int chunk = 0; chunk < virtual_stages_; ++chunk) {
    const int vs = chunk * stages_ + stage;
    chunks.push_back(StageChunk{vs, Layers(vs), vs == 0, vs == num_virtual_stages() - 1});
  }
  return chunks;
}

}  // namespace fulcrum::parallel::pipeline
