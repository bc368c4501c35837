// Stop requests from a cluster: SIGTERM (preemption, scancel, a job's time
// limit) and SIGUSR1 (Slurm's `--signal` warning before the limit).
//
// The handler only records the signal; at every step boundary the trainer
// agrees over all ranks whether any received one, so all ranks stop after
// the same step, save a checkpoint and exit 0, and a signal to a single rank
// is enough.
#pragma once

#include <csignal>

namespace fulcrum::loop {

class StopSignals {
 public:
  // Installs the handlers; the destructor restores the previous ones.
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  // The signal this rank received since construction, 0 if none.
  int received() const;

 private:
  struct sigaction previous_term_ {};
  struct sigaction previous_usr1_ {};
};

}  // namespace fulcrum::loop
