// DeadlineWatchdog: the timeout of a blocking backend call.
//
// A blocking MPI collective cannot be polled, and Open MPI's blocking
// collectives are markedly faster than its non-blocking ones on CPU (1 MiB
// all_reduce on 2 ranks: 236 us vs 398 us), so the blocking forms call them
// directly and this watchdog keeps the "never a hang" promise: Arm() before
// the call, Disarm() after; a call still armed after the timeout ends every
// rank with the same message a Work's timeout gives. Arming costs a clock
// read and an uncontended lock (no thread wake-up); the watchdog's thread
// looks every tenth of the timeout (at most every 50 ms).
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "parallel/comm/comm_common.h"

namespace fulcrum::parallel {

class DeadlineWatchdog {
 public:
  DeadlineWatchdog(std::shared_ptr<const CommIdentity> identity, double timeout_seconds);
  ~DeadlineWatchdog();
  DeadlineWatchdog(const DeadlineWatchdog&) = delete;
  DeadlineWatchdog& operator=(const DeadlineWatchdog&) = delete;

  void Arm(const OpDescription& op);
  void Disarm();

  // Arms for the lifetime of the scope.
  class Scope {
   public:
    Scope(DeadlineWatchdog& watchdog, const OpDescription& op) : watchdog_(watchdog) {
      watchdog_.Arm(op);
    }
    ~Scope() { watchdog_.Disarm(); }
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    DeadlineWatchdog& watchdog_;
  };

 private:
  void Watch();

  std::shared_ptr<const CommIdentity> identity_;
  double timeout_seconds_;
  std::chrono::steady_clock::duration period_;
  std::mutex mutex_;
  std::condition_variable stop_signal_;
  bool stop_ = false;
  std::optional<OpDescription> armed_op_;  // guarded by mutex_
  std::chrono::steady_clock::time_point deadline_;
  std::thread thread_;
};

}  // namespace fulcrum::parallel
