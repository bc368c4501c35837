// Sharded training checkpoints: every rank writes only what it holds, and
// any layout reads back the parts it needs.
//
// Layout under checkpoint.dir:
//   step-00000010/  metadata.json            written by rank 0, last
//                   rank-00000.safetensors   rank 0's pieces (shard_file.h)
//                   rank-00000.safetensors.crc32c
//                   ...                      one pair per rank
//                   recipe.yaml              the complete recipe of the run
//   latest          text file naming the newest complete step directory
//
// metadata.json holds the step, the data position, the mesh that wrote it,
// every file's size and checksum, and for every logical tensor ("model/<param
// or buffer>", "optimizer/exp_avg.<param>", "rng/<rank>") its global shape,
// dtype and saved pieces: file, byte offset and region (shard_region.h).
//
// Saving is collective (SaveShardedCheckpoint): ranks exchange what they
// hold, each piece held by several ranks (dp replicas, tp-replicated norms)
// is written once, by the holder with the fewest bytes so far, so the writes
// spread over the ranks. A step directory is written under a temporary name,
// every file fsynced, then renamed; `latest` is replaced atomically after
// that, and pruning of old directories (keep_last) happens only then.
//
// Defines: LocalPiece, CheckpointHeader, SavedPiece, SavedTensor,
// CheckpointMetadata, PlanWrites, SavedCheckpoint, SaveOptions, kSaveMoments,
// ShardedSave, SaveShardedCheckpoint, ResolveCheckpoint,
// IsTrainCheckpoint, ShardedCheckpointReader.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parallel/runtime/world.h"
#include "trainer/checkpoint/shard_file.h"
#include "trainer/checkpoint/shard_region.h"

namespace fulcrum::checkpoint {

// A piece of a logical tensor this rank holds.
struct LocalPiece {
  std::string tensor;          // logical name
  std::vector<int64_t> shape;  // the global shape
  ShardRegion region;
  torch::Tensor values;  // region.numel() elements in region order (any shape, any device)
};

// What a checkpoint records besides tensors.
struct CheckpointHeader {
  int64_t step = 0;            // completed optimizer steps
  int64_t data_step = 0;       // the loader's position
  int64_t optimizer_step = 0;  // the optimizer's step count (bias correction)
  int64_t world_size = 1;
  std::map<std::string, int64_t> mesh;  // "dp", "tp", "pp", "ep", "zero", ...
  std::string recipe_yaml;
};

struct SavedPiece {
  std::string file;
  uint64_t offset = 0;  // of its first byte in `file`
  ShardRegion region;
};

struct SavedTensor {
  std::string dtype;  // safetensors name
  std::vector<int64_t> shape;
  std::vector<SavedPiece> pieces;
};

struct CheckpointMetadata {
  CheckpointHeader header;
  std::map<std::string, SavedTensor> tensors;
  std::map<std::string, ShardFileInfo> files;
};

// Which of this rank's pieces it writes, given every rank's pieces (each
// rank's list as (tensor, region, bytes) in its own order): for every
// distinct (tensor, region) the holder with the fewest bytes assigned so
// far, lower rank on ties. Same result on every rank.
struct PieceKey {
  std::string tensor;
  ShardRegion region;
  int64_t bytes = 0;
};
std::vector<bool> PlanWrites(const std::vector<std::vector<PieceKey>>& all, int rank);

// Collective over the world: PlanWrites over every rank's `pieces` -> which
// of this rank's pieces it writes (what a save of them would write).
std::vector<bool> PlanOwnWrites(const parallel::World& world,
                                const std::vector<LocalPiece>& pieces);

struct SavedCheckpoint {
  std::string dir;     // root/step-NNNNNNNN
  uint64_t bytes = 0;  // of all ranks' files
};

struct SaveOptions {
  int64_t keep_last = 0;  // step directories kept (0: all)
  // Crash tests: the moment of the save at which this process kills itself
  // with SIGKILL (kSaveMoments; "" never).
  std::string crash_at;
};

// The moments of a save, in order (rank 0 passes all of them, the other
// ranks those of their own file, "begin" to "file-done", and "saved").
inline constexpr const char* kSaveMoments[] = {"begin",
                                               "staging-created",
                                               "header",
                                               "half",
                                               "written",
                                               "synced",
                                               "file-done",
                                               "files-agreed",
                                               "metadata-created",
                                               "metadata-written",
                                               "metadata-synced",
                                               "recipe-written",
                                               "staging-synced",
                                               "renamed",
                                               "published",
                                               "latest-staged",
                                               "latest-renamed",
                                               "latest-synced",
                                               "pruned-one",
                                               "saved"};

// One save in three phases, so that the file writing may run on a
// background thread while training goes on (checkpoint.async):
//   Begin   collective: who writes what; rank 0 stages the directory. The
//           pieces this rank writes are kept, copied to host memory when
//           given a `snapshot` (training may then change the originals);
//   Write   this rank's file: no communication, any thread;
//   Finish  collective: every rank's outcome agreed, rank 0 publishes; the
//           first failing rank's error on every rank.
class ShardedSave {
 public:
  // `snapshot`, when set, holds the host copies: tensors of the same sizes
  // from an earlier save are reused (no new memory, no page faults), others
  // replaced. It must outlive the save and not be shared with another one
  // in progress.
  static absl::StatusOr<std::unique_ptr<ShardedSave>> Begin(const parallel::World& world,
                                                            const std::string& root,
                                                            const CheckpointHeader& header,
                                                            const std::vector<LocalPiece>& pieces,
                                                            const SaveOptions& options,
                                                            std::vector<torch::Tensor>* snapshot);
  void Write();
  absl::StatusOr<SavedCheckpoint> Finish();
  int64_t step() const { return header_.step; }

 private:
  ShardedSave() = default;
  void Moment(const char* name) const;

  const parallel::World* world_ = nullptr;
  std::string root_;
  CheckpointHeader header_;
  SaveOptions options_;
  std::string name_;                 // step-NNNNNNNN
  std::vector<LocalPiece> written_;  // the pieces this rank writes
  absl::StatusOr<ShardFileInfo> info_ = absl::UnknownError("not written");
};

// Collective over the world: writes root/step-NNNNNNNN as above from every
// rank's `pieces`; returns it on every rank, or the first failing rank's
// error on every rank (the previous checkpoint and `latest` intact).
absl::StatusOr<SavedCheckpoint> SaveShardedCheckpoint(const parallel::World& world,
                                                      const std::string& root,
                                                      const CheckpointHeader& header,
                                                      const std::vector<LocalPiece>& pieces,
                                                      const SaveOptions& options);

// "latest" -> the directory root/latest names; anything else is a path to a
// step directory (or to a root holding `latest`).
absl::StatusOr<std::string> ResolveCheckpoint(const std::string& root, const std::string& resume);

bool IsTrainCheckpoint(const std::string& dir);

class ShardedCheckpointReader {
 public:
  // Reads and checks metadata.json (the error names it); files are opened
  // and checked (size, checksum table) when first read.
  static absl::StatusOr<std::unique_ptr<ShardedCheckpointReader>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const CheckpointMetadata& metadata() const { return metadata_; }
  bool Has(const std::string& tensor) const { return metadata_.tensors.count(tensor) > 0; }

  // Fills `out` (contiguous, region.numel() elements, the saved dtype) with
  // `region` of `tensor`, reading only the checksum blocks that hold it from
  // the pieces that overlap it. Errors name the file: a missing tensor, a
  // different shape or dtype, a region the pieces do not cover, a missing,
  // short or corrupted file.
  absl::Status Read(const std::string& tensor, const ShardRegion& region, torch::Tensor& out);
  // The whole tensor, in its saved dtype and shape.
  absl::StatusOr<torch::Tensor> ReadWhole(const std::string& tensor);

  uint64_t bytes_read() const;    // from the files so far
  uint64_t bytes_needed() const;  // of the regions asked for so far

 private:
  ShardedCheckpointReader() = default;
  absl::StatusOr<ShardFileReader*> File(const std::string& name);

  std::string dir_;
  CheckpointMetadata metadata_;
  std::map<std::string, std::unique_ptr<ShardFileReader>> files_;
  uint64_t bytes_needed_ = 0;
};

}  // namespace fulcrum::checkpoint
