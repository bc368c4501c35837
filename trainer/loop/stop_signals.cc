#include "trainer/loop/stop_signals.h"

namespace fulcrum::loop {
namespace {

// A signal handler can only reach process-wide state, and only this type is
// safe to write from it: the one global of the trainer, written here, read
// by StopSignals.
volatile std::sig_atomic_t g_received_signal = 0;

extern "C" void RecordStopSignal(int signal) { g_received_signal = signal; }

}  // namespace

StopSignals::StopSignals() {
  g_received_signal = 0;
  struct sigaction action {};
  action.sa_handler = RecordStopSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // blocking reads and writes carry on
  sigaction(SIGTERM, &action, &previous_term_);
  sigaction(SIGUSR1, &action, &previous_usr1_);
}

StopSignals::~StopSignals() {
  sigaction(SIGTERM, &previous_term_, nullptr);
  sigaction(SIGUSR1, &previous_usr1_, nullptr);
}

int StopSignals::received() const { return g_received_signal; }

}  // namespace fulcrum::loop
