#include "data/dataset/prefetching_loader.h"

#include <utility>

namespace fulcrum::data {

PrefetchingLoader::PrefetchingLoader(DataLoader loader, Prepare prepare)
    : loader_(std::move(loader)), prepare_(std::move(prepare)), step_(loader_.step()) {}

PrefetchingLoader::~PrefetchingLoader() { DropPending(); }

StepBatch PrefetchingLoader::Build() {
  StepBatch batch = loader_.Next();
  if (prepare_) prepare_(batch);
  return batch;
}

StepBatch PrefetchingLoader::Next() {
  StepBatch batch = pending_.valid() ? pending_.get() : Build();
  ++step_;
  // The underlying loader is at step_ now: build that batch meanwhile.
  pending_ = std::async(std::launch::async, [this] { return Build(); });
  return batch;
}

void PrefetchingLoader::SetStep(int64_t step) {
  DropPending();
  loader_.SetStep(step);
  step_ = step;
}

void PrefetchingLoader::DropPending() {
  if (pending_.valid()) pending_.wait();
  pending_ = std::future<StepBatch>();
}

}  // namespace fulcrum::data
