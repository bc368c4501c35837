#include "trainer/loop/checkpoint_saver.h"

#include <chrono>
#include <cstdlib>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "core/status.h"
#include "trainer/checkpoint/host_buffer.h"

namespace fulcrum::loop {
namespace {

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

CheckpointSaver::~CheckpointSaver() {
  // A write (never published then) or the buffers' preparation.
  if (writer_.joinable()) writer_.join();
}

checkpoint::SaveOptions CheckpointSaver::OptionsFor(int64_t step) const {
  checkpoint::SaveOptions options;
  options.keep_last = section_.keep_last;
  if (const char* crash = std::getenv("FULCRUM_TEST_CRASH_SAVE")) {
    const std::vector<std::string> parts = absl::StrSplit(crash, absl::MaxSplits(':', 1));
    if (parts.size() == 2 && parts[0] == std::to_string(step)) options.crash_at = parts[1];
  }
  return options;
}

void CheckpointSaver::PrepareBuffers(const std::vector<checkpoint::LocalPiece>& pieces) {
  if (!section_.async || prepared_ || pending_ != nullptr) return;
  prepared_ = true;
  const std::vector<bool> writes = checkpoint::PlanOwnWrites(world_, pieces);
  std::vector<torch::Tensor> shapes;  // numel and dtype of each piece ShardedSave copies
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (!writes[i]) continue;
    shapes.push_back(
        torch::empty({pieces[i].values.numel()}, pieces[i].values.options().device(torch::kMeta)));
  }
  writer_ = std::thread([this, shapes = std::move(shapes)] {
    const auto start = std::chrono::steady_clock::now();
    snapshot_.clear();
    for (const torch::Tensor& shape : shapes) {
      snapshot_.push_back(checkpoint::NewHostBuffer(shape.numel(), shape.scalar_type()));
    }
    prepare_seconds_ = SecondsSince(start);
  });
}

void CheckpointSaver::WaitForBuffers() {
  if (pending_ != nullptr || !writer_.joinable()) return;
  writer_.join();
  int64_t bytes = 0;
  for (const torch::Tensor& t : snapshot_) bytes += t.numel() * t.element_size();
  logger_.Info(absl::StrFormat(
      "checkpoint: %.1f MiB of host buffers for asynchronous saves were prepared in the "
      "background in %.2f s",
      bytes / 1048576.0, prepare_seconds_));
}

absl::Status CheckpointSaver::Save(const checkpoint::CheckpointHeader& header,
                                   const std::vector<checkpoint::LocalPiece>& pieces) {
  const auto waited_from = std::chrono::steady_clock::now();
  WaitForBuffers();
  FULCRUM_RETURN_IF_ERROR(FinishPending());  // back-pressure
  const double waited = SecondsSince(waited_from);
  const auto start = std::chrono::steady_clock::now();
  if (!section_.async) {
    FULCRUM_ASSIGN_OR_RETURN(const checkpoint::SavedCheckpoint saved,
                             checkpoint::SaveShardedCheckpoint(world_, section_.dir, header, pieces,
                                                               OptionsFor(header.step)));
    const double seconds = SecondsSince(start);
    logger_.Info(absl::StrFormat("checkpoint: %s (%.1f MiB in %.2f s, %.2f GB/s)", saved.dir,
                                 saved.bytes / 1048576.0, seconds,
                                 saved.bytes / 1e9 / std::max(seconds, 1e-9)));
    last_checkpoint_ = saved.dir;
    return absl::OkStatus();
  }
  FULCRUM_ASSIGN_OR_RETURN(pending_,
                           checkpoint::ShardedSave::Begin(world_, section_.dir, header, pieces,
                                                          OptionsFor(header.step), &snapshot_));
  written_ = false;
  writer_ = std::thread([this] {
    pending_->Write();
    written_ = true;
  });
  pending_blocked_seconds_ = SecondsSince(start);
  logger_.Info(
      absl::StrFormat("checkpoint: step %d copied to host memory in %.2f s, writing in "
                      "the background (the previous save held training %.2f s)",
                      header.step, pending_blocked_seconds_, waited));
  return absl::OkStatus();
}

absl::Status CheckpointSaver::FinishPending() {
  if (pending_ == nullptr) return absl::OkStatus();
  const auto start = std::chrono::steady_clock::now();
  writer_.join();
  const absl::StatusOr<checkpoint::SavedCheckpoint> saved = pending_->Finish();
  pending_.reset();
  FULCRUM_RETURN_IF_ERROR(saved.status());
  const double blocked = SecondsSince(start);
  logger_.Info(absl::StrFormat(
      "checkpoint: %s (%.1f MiB written in the background; training waited %.2f s to start "
      "it and %.2f s to publish it)",
      saved->dir, saved->bytes / 1048576.0, pending_blocked_seconds_, blocked));
  last_checkpoint_ = saved->dir;
  return absl::OkStatus();
}

}  // namespace fulcrum::loop
