#include "data/dataset/loader.h"

#include <algorithm>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/status.h"
#include "data/dataset/sampler.h"

namespace fulcrum::data {
namespace {

absl::Status ValidateOptions(const LoaderOptions& o) {
  if (o.global_batch <= 0 || o.micro_batch <= 0 || o.dp_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("global_batch (", o.global_batch, "), micro_batch (", o.micro_batch,
                     ") and dp_size (", o.dp_size, ") must be positive"));
  }
  if (o.seq_len < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("seq_len must be >= 2 (a target needs a context), got ", o.seq_len));
  }
  if (o.dp_rank < 0 || o.dp_rank >= o.dp_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("dp_rank ", o.dp_rank, " is outside [0, dp_size ", o.dp_size, ")"));
  }
  if (o.global_batch % (o.micro_batch * o.dp_size) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("global_batch (", o.global_batch, ") must be divisible by micro_batch (",
                     o.micro_batch, ") x dp_size (", o.dp_size, ") = ", o.micro_batch * o.dp_size));
  }
  return absl::OkStatus();
}

absl::Status ValidateSamples(const std::vector<Sample>& samples) {
  if (samples.empty()) return absl::InvalidArgumentError("no samples");
  for (size_t i = 0; i < samples.size(); ++i) {
    if (samples[i].input_ids.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("sample ", i, " (line ", samples[i].line, ") is empty"));
    }
    if (samples[i].labels.size() != samples[i].input_ids.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("sample ", i, " (line ", samples[i].line, ") has ", samples[i].labels.size(),
                       " labels for ", samples[i].input_ids.size(), " input_ids"));
    }
  }
  return absl::OkStatus();
}

// Tensors of one micro-batch, allocated once and filled row by row straight
// from the row vectors (the only copy of the data).
struct MicroBatchWriter {
  MicroBatchWriter(int64_t rows, int64_t seq_len) : seq_len(seq_len) {
    const auto options = torch::TensorOptions().dtype(torch::kInt64);
    for (torch::Tensor* t : Fields()) *t = torch::empty({rows, seq_len}, options);
  }
  std::vector<torch::Tensor*> Fields() {
    return {&batch.input_ids, &batch.labels, &batch.attention_mask, &batch.position_ids,
            &batch.document_ids};
  }
  void Write(int64_t index, const Row& row) {
    const std::vector<const std::vector<int64_t>*> sources = {
        &row.input_ids, &row.labels, &row.attention_mask, &row.position_ids, &row.document_ids};
    const std::vector<torch::Tensor*> fields = Fields();
    for (size_t f = 0; f < fields.size(); ++f) {
      FULCRUM_CHECK(static_cast<int64_t>(sources[f]->size()) == seq_len, "row field ", f, " has ",
                    sources[f]->size(), " entries, seq_len ", seq_len);
      std::copy(sources[f]->begin(), sources[f]->end(),
                fields[f]->data_ptr<int64_t>() + index * seq_len);
    }
  }
  int64_t seq_len;
  MicroBatch batch;
};

}  // namespace

absl::StatusOr<DataLoader> DataLoader::Create(std::vector<Sample> samples,
                                              const LoaderOptions& options) {
  if (absl::Status s = ValidateOptions(options); !s.ok()) {
    return Annotate(s, "data loader options");
  }
  if (absl::Status s = ValidateSamples(samples); !s.ok()) return Annotate(s, "data loader");
  const int64_t rows = CountRows(samples, PackingOptions{options.seq_len, options.pack});
  FULCRUM_CHECK(rows >= 1, "rows=", rows);
  return DataLoader(std::move(samples), options, rows);
}

DataLoader::DataLoader(std::vector<Sample> samples, const LoaderOptions& options,
                       int64_t rows_per_epoch)
    : samples_(std::move(samples)), options_(options), rows_per_epoch_(rows_per_epoch) {}

int64_t DataLoader::grad_accumulation() const {
  return options_.global_batch / (options_.micro_batch * options_.dp_size);
}

void DataLoader::SetStep(int64_t step) {
  FULCRUM_CHECK(step >= 0, "step=", step);
  step_ = step;
}

const std::vector<Row>& DataLoader::EpochRows(int64_t epoch) {
  if (epoch != cached_epoch_) {
    std::vector<int64_t> order;
    const auto n = static_cast<int64_t>(samples_.size());
    if (options_.shuffle) {
      order = ShuffledOrder(n, options_.seed, epoch);
    } else {
      order.resize(n);
      std::iota(order.begin(), order.end(), int64_t{0});
    }
    cached_rows_ = BuildRows(samples_, order, PackingOptions{options_.seq_len, options_.pack});
    FULCRUM_CHECK(static_cast<int64_t>(cached_rows_.size()) == rows_per_epoch_, "epoch ", epoch,
                  " has ", cached_rows_.size(), " rows, expected ", rows_per_epoch_);
    cached_epoch_ = epoch;
  }
  return cached_rows_;
}

StepBatch DataLoader::Next() {
  const int64_t global_batch = options_.global_batch;
  const int64_t local_batch = global_batch / options_.dp_size;
  const int64_t first_row = step_ * global_batch;
  const int64_t local_begin = options_.dp_rank * local_batch;

  StepBatch step_batch;
  step_batch.epoch = first_row / rows_per_epoch_;
  std::vector<MicroBatchWriter> writers;
  writers.reserve(grad_accumulation());
  for (int64_t m = 0; m < grad_accumulation(); ++m) {
    writers.emplace_back(options_.micro_batch, options_.seq_len);
  }
  // One pass in global order, so that each epoch's rows are built at most
  // once per step even when the step straddles epochs.
  for (int64_t i = 0; i < global_batch; ++i) {
    const int64_t global_row = first_row + i;
    const Row& row = EpochRows(global_row / rows_per_epoch_)[global_row % rows_per_epoch_];
    const int64_t targets = CountTargets(row);
    step_batch.global_num_targets += targets;
    const int64_t local = i - local_begin;
    if (local < 0 || local >= local_batch) continue;
    MicroBatchWriter& writer = writers[local / options_.micro_batch];
    writer.Write(local % options_.micro_batch, row);
    writer.batch.num_targets += targets;
  }
  for (MicroBatchWriter& writer : writers) {
    step_batch.micro_batches.push_back(std::move(writer.batch));
  }
  ++step_;
  return step_batch;
}

}  // namespace fulcrum::data
