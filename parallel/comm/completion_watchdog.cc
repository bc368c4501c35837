#include "parallel/comm/completion_watchdog.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"

namespace fulcrum::parallel {

CompletionWatchdog::CompletionWatchdog(std::shared_ptr<const CommIdentity> identity,
                                       double timeout_seconds)
    : identity_(std::move(identity)), timeout_seconds_(timeout_seconds) {
  const double period = std::min(0.01, timeout_seconds_ / 10.0);
  period_ = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(period));
  thread_ = std::thread([this] { Run(); });
}

CompletionWatchdog::~CompletionWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  work_or_stop_.notify_one();
  thread_.join();
}

void CompletionWatchdog::Watch(Operation operation) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(timeout_seconds_));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    watched_.push_back(Watched{std::move(operation), deadline});
  }
  work_or_stop_.notify_one();
}

void CompletionWatchdog::Drain() {
  std::unique_lock<std::mutex> lock(mutex_);
  drained_.wait(lock, [this] { return watched_.empty() && polling_ == 0; });
}

void CompletionWatchdog::Run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    // Stopping still sees every watched operation through.
    work_or_stop_.wait(lock, [this] { return stop_ || !watched_.empty(); });
    if (watched_.empty()) return;
    // Polled outside the lock, so that Watch() never waits on a poll.
    std::vector<Watched> batch;
    batch.swap(watched_);
    polling_ = batch.size();
    lock.unlock();
    std::vector<Watched> pending;
    const auto now = std::chrono::steady_clock::now();
    for (Watched& w : batch) {
      const absl::StatusOr<bool> done = w.operation.poll();
      if (!done.ok() || (!*done && now >= w.deadline)) {
        if (w.operation.abort) w.operation.abort();
        CommFatal(*identity_, done.ok() ? TimeoutReason(w.operation.op, timeout_seconds_)
                                        : absl::StrCat(DescribeOp(w.operation.op), ": ",
                                                       done.status().message()));
      }
      if (*done) {
        if (w.operation.release) w.operation.release();
      } else {
        pending.push_back(std::move(w));
      }
    }
    lock.lock();
    polling_ = 0;
    // The older operations first, as they were handed over.
    watched_.insert(watched_.begin(), std::make_move_iterator(pending.begin()),
                    std::make_move_iterator(pending.end()));
    if (watched_.empty()) {
      drained_.notify_all();
    } else {
      work_or_stop_.wait_for(lock, period_);
    }
  }
}

}  // namespace fulcrum::parallel
