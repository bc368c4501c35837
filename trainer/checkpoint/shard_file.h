// One rank's file of a sharded checkpoint: a plain safetensors file (any
// safetensors tool opens it), plus a side file with the CRC-32C of every
// 1 KiB block, so that a rank reading a few rows of a shard verifies exactly
// the blocks it reads (a whole-file checksum would make it read everything).
// 1 KiB rather than a page: a rank that takes half of every row of a
// row-parallel weight (tp changed) reads ~1.1x what it needs, not 2x; the
// table is 0.4% of the file.
//
// Defines: kChecksumBlockBytes, ShardFileInfo, WriteShardFile, ByteRun,
// ShardFileReader.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/checkpoint/safetensors_writer.h"

namespace fulcrum::checkpoint {

inline constexpr uint64_t kChecksumBlockBytes = 1024;

struct ShardFileInfo {
  std::string name;                         // file name inside the checkpoint directory
  uint64_t bytes = 0;                       // its size
  std::string checksums;                    // the side file's name
  uint32_t checksums_crc32c = 0;            // the side file's own checksum
  std::map<std::string, uint64_t> offsets;  // tensor name -> file offset of its first byte
};

// Writes dir/name (safetensors) and dir/name.crc32c, each fsynced; no
// directory sync (the caller publishes the whole directory). A write error
// (disk full) names the file. `moment`, when set, is called at the moments a
// crash test kills the writer: "header", "half", "written", "synced".
absl::StatusOr<ShardFileInfo> WriteShardFile(
    const std::string& dir, const std::string& name, const std::vector<NamedTensor>& tensors,
    const std::function<void(const char*)>& moment = nullptr);

// Creates (truncates) `path`, writes `contents`, fsyncs; no rename, no
// directory sync: for files inside a directory published as a whole.
absl::Status WriteFileDurably(const std::string& path, const std::string& contents);

// `bytes` bytes at file offset `file_offset`, to `dst` (dst_offset from the
// caller's base pointer).
struct ByteRun {
  uint64_t file_offset = 0;
  uint64_t dst_offset = 0;
  uint64_t bytes = 0;
};

class ShardFileReader {
 public:
  // Checks the file's size and the side file's checksum; the error names
  // the file (missing, truncated, or a checksum table that does not match).
  static absl::StatusOr<std::unique_ptr<ShardFileReader>> Open(const std::string& dir,
                                                               const ShardFileInfo& info);
  ~ShardFileReader();
  ShardFileReader(const ShardFileReader&) = delete;
  ShardFileReader& operator=(const ShardFileReader&) = delete;

  // Copies every run to dst + run.dst_offset, reading only the checksum
  // blocks the runs touch (adjacent ones in one pread) and verifying each;
  // a mismatch is DataLoss naming the file and the byte range.
  absl::Status Read(std::vector<ByteRun> runs, uint8_t* dst);
  uint64_t bytes_read() const { return bytes_read_; }  // checksum table included
  const std::string& path() const { return path_; }

 private:
  ShardFileReader() = default;
  absl::Status ReadSpan(uint64_t begin, uint64_t end, std::vector<uint8_t>& buffer);

  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  std::vector<uint32_t> block_crcs_;
  uint64_t bytes_read_ = 0;
};

}  // namespace fulcrum::checkpoint
