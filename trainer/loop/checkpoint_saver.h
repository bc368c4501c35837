// CheckpointSaver: how the trainer saves (checkpoint section): at once, or
// with checkpoint.async the state copied to host memory at the step
// boundary and this rank's file written by a background thread while
// training goes on, published once every rank's write is done.
//
//   saver.PrepareBuffers(pieces);            // async: collective, once
//   saver.Save(header, pieces);              // collective
//   ... each step boundary, agreed over ranks:
//   if (!any_rank_writing) saver.FinishPending();  // collective
//
// A save due while the previous one is still being written waits for it
// (back-pressure: at most one snapshot in memory). FULCRUM_TEST_CRASH_SAVE=
// STEP:MOMENT makes the save of that step kill its process at that moment
// (the crash tests; checkpoint::kSaveMoments).
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "parallel/runtime/logger.h"
#include "parallel/runtime/world.h"
#include "trainer/checkpoint/sharded_checkpoint.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::loop {

class CheckpointSaver {
 public:
  CheckpointSaver(const parallel::World& world, const parallel::Logger& logger,
                  recipe::CheckpointSection section)
      : world_(world), logger_(logger), section_(std::move(section)) {}
  ~CheckpointSaver();  // waits for a background write (never published then)
  CheckpointSaver(const CheckpointSaver&) = delete;
  CheckpointSaver& operator=(const CheckpointSaver&) = delete;

  // Collective: publishes a pending save first, then saves `pieces`, or
  // with checkpoint.async begins saving them (snapshot, background write).
  absl::Status Save(const checkpoint::CheckpointHeader& header,
                    const std::vector<checkpoint::LocalPiece>& pieces);
  // With checkpoint.async, collective: plans a save of `pieces` and
  // allocates (and touches) the host buffers it would copy them into on a
  // background thread, so that the first save does not stall training on
  // fresh memory. Call once the pieces have their final shapes (after a
  // step: optimizer state exists); a no-op otherwise and after the first.
  void PrepareBuffers(const std::vector<checkpoint::LocalPiece>& pieces);
  bool buffers_prepared() const { return prepared_; }
  // This rank's background write is still running.
  bool writing() const { return pending_ != nullptr && !written_; }
  // Collective: waits for the pending save's write and publishes it; no-op
  // (on every rank alike) when there is none.
  absl::Status FinishPending();
  // The newest published checkpoint ("" none yet).
  const std::string& last_checkpoint() const { return last_checkpoint_; }

 private:
  checkpoint::SaveOptions OptionsFor(int64_t step) const;
  // Joins the thread preparing the buffers, if it runs.
  void WaitForBuffers();

  const parallel::World& world_;
  const parallel::Logger& logger_;
  recipe::CheckpointSection section_;
  std::unique_ptr<checkpoint::ShardedSave> pending_;
  std::vector<torch::Tensor> snapshot_;  // host copies, reused by every async save
  std::thread writer_;
  std::atomic<bool> written_{false};
  bool prepared_ = false;
  double prepare_seconds_ = 0.0;          // the background allocation's time (read after join)
  double pending_blocked_seconds_ = 0.0;  // the pending save's stall at its start
  std::string last_checkpoint_;
};

}  // namespace fulcrum::loop
