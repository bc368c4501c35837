// Whole-file reads and atomic writes (temp file + fsync + rename + directory
// fsync), so that a reader never sees a half-written file.
#pragma once

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fulcrum {

absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// Writes `contents` to `path` atomically; the parent directory must exist.
absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents);

// Writes all `size` bytes to the open `fd`, retrying short and interrupted
// writes; errors (disk full) name `path`.
absl::Status WriteAllToFd(int fd, const void* data, size_t size, const std::string& path);

// fsyncs a directory so that a rename inside it is durable.
absl::Status SyncDirectory(const std::string& dir);

// Makes a fully written directory `staged` visible as `target`: an existing
// `target` is removed first, then `staged` is renamed and the parent synced.
absl::Status PublishDirectory(const std::string& staged, const std::string& target);

// "<target>.tmp-<pid>", emptied: where a directory is written before PublishDirectory.
absl::StatusOr<std::string> MakeStagingDirectory(const std::string& target);

}  // namespace fulcrum
