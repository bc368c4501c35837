// DataLoader: an endless, resumable, dp-sharded stream of training steps.
//
// Defines: MicroBatch, StepBatch, LoaderOptions, DataLoader.
//
// The stream of global rows concatenates epochs: epoch e's rows are
// BuildRows(samples, order(e)), order(e) = ShuffledOrder(n, seed, e) (or the
// identity without shuffle); every epoch has rows_per_epoch() rows. Step s
// takes global rows [s * global_batch, (s + 1) * global_batch) (a step may
// straddle two epochs); dp rank r takes the r-th contiguous slice of
// global_batch / dp_size rows and splits it into micro-batches of micro_batch
// rows. The loader's whole state is the step index, so resume is SetStep(saved)
// and every dp layout sees the same global rows at a given step.
//
// Worked example: global_batch 8, micro_batch 2, dp_size 2: step 3 covers
// global rows 24..31; rank 0 gets micro-batches {24,25} {26,27}, rank 1 gets
// {28,29} {30,31}.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "data/dataset/packing.h"
#include "data/dataset/pretokenized_dataset.h"

namespace fulcrum::data {

struct MicroBatch {
  torch::Tensor input_ids;       // [micro_batch, seq_len] int64, CPU
  torch::Tensor labels;          // [micro_batch, seq_len] int64, -100 = not a target
  torch::Tensor attention_mask;  // [micro_batch, seq_len] int64, 1 real, 0 padding
  torch::Tensor position_ids;    // [micro_batch, seq_len] int64
  torch::Tensor document_ids;    // [micro_batch, seq_len] int64, -1 padding
  int64_t num_targets = 0;       // count of labels[:, 1:] != -100 (the loss's denominator share)
};

struct StepBatch {
  std::vector<MicroBatch> micro_batches;  // this rank's, grad_accumulation of them
  int64_t global_num_targets = 0;         // targets of the WHOLE global batch over all dp ranks,
                                          // so that sum-of-losses / global_num_targets is the
                                          // global mean
  int64_t epoch = 0;                      // epoch of the step's first global row
};

struct LoaderOptions {
  int64_t global_batch = 8;  // rows per optimizer step over all dp ranks
  int64_t micro_batch = 1;   // rows per forward/backward
  int64_t seq_len = 512;     // tokens per row, >= 2
  bool shuffle = true;       // a new permutation of the samples each epoch
  bool pack = true;          // concatenate samples into rows (see packing.h)
  uint64_t seed = 1234;      // shuffle seed
  int64_t dp_rank = 0;       // this rank's index on the data-parallel axis
  int64_t dp_size = 1;       // data-parallel degree
};

class DataLoader {
 public:
  // Errors: invalid options (sizes not positive, seq_len < 2, dp_rank out of
  // [0, dp_size), global_batch not divisible by micro_batch * dp_size, with
  // the arithmetic), no samples, or a malformed sample (empty, labels length).
  static absl::StatusOr<DataLoader> Create(std::vector<Sample> samples,
                                           const LoaderOptions& options);

  // The batch of step(), then advances to the next step.
  StepBatch Next();
  int64_t step() const { return step_; }
  // Resume: the next Next() returns step `step` (>= 0).
  void SetStep(int64_t step);
  int64_t rows_per_epoch() const { return rows_per_epoch_; }
  // Micro-batches per step on each rank: global_batch / (micro_batch * dp_size).
  int64_t grad_accumulation() const;

 private:
  DataLoader(std::vector<Sample> samples, const LoaderOptions& options, int64_t rows_per_epoch);
  // Rows of `epoch`, built on demand; only the latest epoch is kept.
  const std::vector<Row>& EpochRows(int64_t epoch);

  std::vector<Sample> samples_;
  LoaderOptions options_;
  int64_t rows_per_epoch_ = 0;
  int64_t step_ = 0;
  int64_t cached_epoch_ = -1;
  std::vector<Row> cached_rows_;
};

}  // namespace fulcrum::data
