// PrefetchingLoader: a DataLoader one step ahead on a background thread, so
// that building the next step's rows (an epoch's packing included) overlaps
// the current step's compute instead of stalling it.
//
// The batches are DataLoader's, in the same order; step() and SetStep() mean
// what they mean there (the step of the next batch Next() returns), so a
// checkpoint saves and resumes the same data position with or without the
// prefetch. `prepare` runs on the background thread on each batch before it
// is handed out (the trainer pins the tensors for asynchronous copies to a
// GPU there).
#pragma once

#include <functional>
#include <future>
#include <memory>

#include "data/dataset/loader.h"

namespace fulcrum::data {

class PrefetchingLoader {
 public:
  using Prepare = std::function<void(StepBatch&)>;

  explicit PrefetchingLoader(DataLoader loader, Prepare prepare = nullptr);
  ~PrefetchingLoader();
  PrefetchingLoader(const PrefetchingLoader&) = delete;
  PrefetchingLoader& operator=(const PrefetchingLoader&) = delete;

  // The batch of step(), and starts building the one after it.
  StepBatch Next();
  int64_t step() const { return step_; }
  // Drops a prefetched batch; the next Next() returns step `step`.
  void SetStep(int64_t step);
  int64_t rows_per_epoch() const { return loader_.rows_per_epoch(); }
  int64_t grad_accumulation() const { return loader_.grad_accumulation(); }

 private:
  StepBatch Build();
  void DropPending();

  DataLoader loader_;  // touched by the background task only while one is pending
  Prepare prepare_;
  int64_t step_ = 0;
  std::future<StepBatch> pending_;  // the batch of step_, when valid
};

}  // namespace fulcrum::data
