#include "parallel/comm/deadline_watchdog.h"

#include <algorithm>

namespace fulcrum::parallel {

DeadlineWatchdog::DeadlineWatchdog(std::shared_ptr<const CommIdentity> identity,
                                   double timeout_seconds)
    : identity_(std::move(identity)), timeout_seconds_(timeout_seconds) {
  const double period = std::min(0.05, timeout_seconds_ / 10.0);
  period_ = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(period));
  thread_ = std::thread([this] { Watch(); });
}

DeadlineWatchdog::~DeadlineWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  stop_signal_.notify_one();
  thread_.join();
}

void DeadlineWatchdog::Arm(const OpDescription& op) {
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                            std::chrono::duration<double>(timeout_seconds_));
  std::lock_guard<std::mutex> lock(mutex_);
  armed_op_ = op;
  deadline_ = deadline;
}

void DeadlineWatchdog::Disarm() {
  std::lock_guard<std::mutex> lock(mutex_);
  armed_op_.reset();
}

void DeadlineWatchdog::Watch() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    stop_signal_.wait_for(lock, period_, [this] { return stop_; });
    if (stop_ || !armed_op_ || std::chrono::steady_clock::now() < deadline_) continue;
    // The main thread is stuck inside the backend call: end the run from
    // here, as a Work's timeout does.
    CommFatal(*identity_, TimeoutReason(*armed_op_, timeout_seconds_));
  }
}

}  // namespace fulcrum::parallel
