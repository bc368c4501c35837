// TensorBoard event files: scalars that `tensorboard --logdir` (and
// tensorboard's EventFileLoader, tbparse, ...) read, written without
// TensorFlow or protobuf: each record is
//   uint64 length | uint32 masked CRC-32C of length | data | uint32 masked CRC-32C of data
// (TFRecord framing), data an Event protocol buffer encoded by hand:
//   Event { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//   Summary { repeated Value value = 1; }  Value { string tag = 1; float simple_value = 2; }
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace fulcrum::metrics {

class TensorBoardWriter {
 public:
  // Creates `dir` and dir/events.out.tfevents.<seconds>.<host>.<pid>, and
  // writes its first event (file_version "brain.Event:2"). Errors name the
  // file.
  static absl::StatusOr<std::unique_ptr<TensorBoardWriter>> Create(const std::string& dir);

  // One event at `step` holding every (tag, value); flushed, so that a
  // running TensorBoard sees it. A failed write (disk full) is an error
  // naming the file.
  absl::Status AddScalars(int64_t step, const std::vector<std::pair<std::string, double>>& scalars);
  const std::string& path() const { return path_; }

 private:
  explicit TensorBoardWriter(std::string path) : path_(std::move(path)) {}
  absl::Status WriteRecord(const std::string& data);

  std::string path_;
  std::ofstream out_;
};

// A record's CRC as TFRecord stores it: rotated right by 15, plus a constant.
uint32_t MaskedCrc32c(const void* data, size_t size);

}  // namespace fulcrum::metrics
