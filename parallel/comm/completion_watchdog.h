// CompletionWatchdog: the timeout of operations the host does not wait for.
//
// A GPU backend's Work::Wait() only orders the compute stream after the
// collective (an event) and returns, so that the host keeps queueing the
// layer's next kernels instead of stalling inside the layer until the
// collective is done. Whether the collective then completes is watched here:
// a thread polls each handed-over operation (every tenth of the timeout, at
// most 10 ms apart), releases what it held once it is done (its event), and
// when one is still pending at its deadline, or its poll reports an error,
// aborts it and ends every rank with the operation named, as a Work's
// timeout does. Generic over the backend: the operation is three callbacks.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/comm/comm_common.h"

namespace fulcrum::parallel {

class CompletionWatchdog {
 public:
  struct Operation {
    OpDescription op;
    // Non-blocking: whether the operation completed. An error ends the run
    // with its message. Called on the watchdog's thread only.
    std::function<absl::StatusOr<bool>()> poll;
    // Once, on the watchdog's thread, after poll() said done.
    std::function<void()> release;
    // Before the run ends over this operation (ncclCommAbort, say).
    std::function<void()> abort;
  };

  CompletionWatchdog(std::shared_ptr<const CommIdentity> identity, double timeout_seconds);
  // Waits for the operations still watched: each completes or ends the run
  // at its deadline.
  ~CompletionWatchdog();
  CompletionWatchdog(const CompletionWatchdog&) = delete;
  CompletionWatchdog& operator=(const CompletionWatchdog&) = delete;

  // The deadline is timeout_seconds from now.
  void Watch(Operation operation);
  // Returns once every operation handed over so far is released.
  void Drain();

 private:
  struct Watched {
    Operation operation;
    std::chrono::steady_clock::time_point deadline;
  };
  void Run();

  std::shared_ptr<const CommIdentity> identity_;
  double timeout_seconds_;
  std::chrono::steady_clock::duration period_;
  std::mutex mutex_;
  std::condition_variable work_or_stop_;  // the thread waits for either
  std::condition_variable drained_;       // Drain() waits for an empty watch
  bool stop_ = false;
  std::vector<Watched> watched_;  // guarded by mutex_
  size_t polling_ = 0;            // taken out of watched_ by the thread; guarded by mutex_
  std::thread thread_;
};

}  // namespace fulcrum::parallel
