#include "trainer/checkpoint/shard_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "core/crc32c.h"
#include "core/file_util.h"
#include "core/status.h"

namespace fulcrum::checkpoint {
namespace {

// Reads are grouped into spans of at most this many bytes (one pread each).
constexpr uint64_t kMaxSpanBytes = 16 << 20;

absl::Status ErrnoError(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(path, ": ", what, ": ", std::strerror(errno)));
}

// A file written sequentially, checksummed per block as it goes.
class ChecksummedFile {
 public:
  ChecksummedFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  absl::Status Append(const void* data, size_t size) {
    FULCRUM_RETURN_IF_ERROR(WriteAllToFd(fd_, data, size, path_));
    const auto* p = static_cast<const uint8_t*>(data);
    while (size > 0) {
      const size_t take = std::min<size_t>(size, kChecksumBlockBytes - in_block_);
      crc_ = Crc32c(p, take, crc_);
      in_block_ += take;
      bytes_ += take;
      p += take;
      size -= take;
      if (in_block_ == kChecksumBlockBytes) Flush();
    }
    return absl::OkStatus();
  }
  std::vector<uint32_t> Finish() {
    if (in_block_ > 0) Flush();
    return std::move(crcs_);
  }
  uint64_t bytes() const { return bytes_; }

 private:
  void Flush() {
    crcs_.push_back(crc_);
    crc_ = 0;
    in_block_ = 0;
  }
  int fd_;
  std::string path_;
  uint32_t crc_ = 0;
  size_t in_block_ = 0;
  uint64_t bytes_ = 0;
  std::vector<uint32_t> crcs_;
};

std::string EncodeCrcs(const std::vector<uint32_t>& crcs) {
  std::string out(crcs.size() * 4, '\0');
  for (size_t i = 0; i < crcs.size(); ++i) {
    for (int b = 0; b < 4; ++b) out[i * 4 + b] = static_cast<char>((crcs[i] >> (8 * b)) & 0xff);
  }
  return out;
}

absl::Status WriteTensors(ChecksummedFile& file, const std::string& path,
                          const std::vector<const NamedTensor*>& sorted,
                          const std::function<void(const char*)>& moment) {
  for (size_t i = 0; i < sorted.size(); ++i) {
    const NamedTensor* t = sorted[i];
    if (i == sorted.size() / 2 && moment) moment("half");
    try {
      const torch::Tensor cpu = t->tensor.to(torch::kCPU).contiguous();
      FULCRUM_RETURN_IF_ERROR(file.Append(cpu.data_ptr(), cpu.numel() * cpu.element_size()));
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat(
          path, ": tensor \"", t->name, "\": cannot copy to CPU: ", e.what_without_backtrace()));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteFileDurably(const std::string& path, const std::string& contents) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("create", path);
  absl::Status status = WriteAllToFd(fd, contents.data(), contents.size(), path);
  if (status.ok() && ::fsync(fd) != 0) status = ErrnoError("fsync", path);
  if (::close(fd) != 0 && status.ok()) status = ErrnoError("close", path);
  return status;
}

absl::StatusOr<ShardFileInfo> WriteShardFile(const std::string& dir, const std::string& name,
                                             const std::vector<NamedTensor>& tensors,
                                             const std::function<void(const char*)>& moment) {
  const std::string path = (std::filesystem::path(dir) / name).string();
  absl::StatusOr<std::string> header = SafetensorsHeader(tensors, {});
  if (!header.ok()) return Annotate(header.status(), path);
  ShardFileInfo info;
  info.name = name;
  info.checksums = name + ".crc32c";
  // The header lays tensors out sorted by name; their offsets follow it.
  const uint64_t data_start = 8 + header->size();
  const nlohmann::json parsed = nlohmann::json::parse(*header);
  std::vector<const NamedTensor*> sorted;
  for (const NamedTensor& t : tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(),
            [](const NamedTensor* a, const NamedTensor* b) { return a->name < b->name; });
  for (const NamedTensor* t : sorted) {
    info.offsets[t->name] = data_start + parsed.at(t->name).at("data_offsets")[0].get<uint64_t>();
  }

  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("create", path);
  ChecksummedFile file(fd, path);
  uint8_t length[8];
  uint64_t n = header->size();
  for (int i = 0; i < 8; ++i, n >>= 8) length[i] = static_cast<uint8_t>(n & 0xff);
  absl::Status status = file.Append(length, sizeof(length));
  if (status.ok()) status = file.Append(header->data(), header->size());
  if (status.ok() && moment) moment("header");
  if (status.ok()) status = WriteTensors(file, path, sorted, moment);
  if (status.ok() && moment) moment("written");
  if (status.ok() && ::fsync(fd) != 0) status = ErrnoError("fsync", path);
  if (::close(fd) != 0 && status.ok()) status = ErrnoError("close", path);
  FULCRUM_RETURN_IF_ERROR(status);
  if (moment) moment("synced");
  info.bytes = file.bytes();
  const std::string crcs = EncodeCrcs(file.Finish());
  info.checksums_crc32c = Crc32c(crcs.data(), crcs.size());
  FULCRUM_RETURN_IF_ERROR(
      WriteFileDurably((std::filesystem::path(dir) / info.checksums).string(), crcs));
  return info;
}

absl::StatusOr<std::unique_ptr<ShardFileReader>> ShardFileReader::Open(const std::string& dir,
                                                                       const ShardFileInfo& info) {
  std::unique_ptr<ShardFileReader> reader(new ShardFileReader());
  reader->path_ = (std::filesystem::path(dir) / info.name).string();
  const std::string crc_path = (std::filesystem::path(dir) / info.checksums).string();
  reader->fd_ = ::open(reader->path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (reader->fd_ < 0) {
    return absl::DataLossError(absl::StrCat(reader->path_, ": cannot open a file the checkpoint ",
                                            "lists: ", std::strerror(errno)));
  }
  const off_t size = ::lseek(reader->fd_, 0, SEEK_END);
  if (size < 0 || static_cast<uint64_t>(size) != info.bytes) {
    return absl::DataLossError(absl::StrCat(reader->path_, ": ", size, " bytes, the checkpoint ",
                                            "metadata says ", info.bytes, " (truncated?)"));
  }
  reader->size_ = info.bytes;
  std::error_code ec;
  const uint64_t blocks = (info.bytes + kChecksumBlockBytes - 1) / kChecksumBlockBytes;
  if (!std::filesystem::is_regular_file(crc_path, ec) ||
      std::filesystem::file_size(crc_path, ec) != blocks * 4) {
    return absl::DataLossError(absl::StrCat(crc_path, ": missing or not ", blocks * 4, " bytes"));
  }
  std::string crcs(blocks * 4, '\0');
  const int crc_fd = ::open(crc_path.c_str(), O_RDONLY | O_CLOEXEC);
  const ssize_t got = crc_fd < 0 ? -1 : ::pread(crc_fd, crcs.data(), crcs.size(), 0);
  if (crc_fd >= 0) ::close(crc_fd);
  if (got != static_cast<ssize_t>(crcs.size())) {
    return absl::DataLossError(absl::StrCat(crc_path, ": cannot read"));
  }
  reader->bytes_read_ = crcs.size();  // the table is read too
  if (Crc32c(crcs.data(), crcs.size()) != info.checksums_crc32c) {
    return absl::DataLossError(absl::StrCat(crc_path, ": checksum mismatch (corrupted)"));
  }
  reader->block_crcs_.resize(blocks);
  for (uint64_t i = 0; i < blocks; ++i) {
    uint32_t c = 0;
    for (int b = 3; b >= 0; --b) c = (c << 8) | static_cast<uint8_t>(crcs[i * 4 + b]);
    reader->block_crcs_[i] = c;
  }
  return reader;
}

ShardFileReader::~ShardFileReader() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status ShardFileReader::ReadSpan(uint64_t begin, uint64_t end, std::vector<uint8_t>& buffer) {
  buffer.resize(end - begin);
  uint64_t done = 0;
  while (done < buffer.size()) {
    const ssize_t n =
        ::pread(fd_, buffer.data() + done, buffer.size() - done, static_cast<off_t>(begin + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return absl::DataLossError(absl::StrCat(path_, ": cannot read at ", begin + done));
    done += static_cast<uint64_t>(n);
  }
  bytes_read_ += buffer.size();
  for (uint64_t block = begin / kChecksumBlockBytes; block * kChecksumBlockBytes < end; ++block) {
    const uint64_t lo = block * kChecksumBlockBytes;
    const uint64_t hi = std::min(lo + kChecksumBlockBytes, size_);
    if (Crc32c(buffer.data() + (lo - begin), hi - lo) != block_crcs_[block]) {
      return absl::DataLossError(
          absl::StrCat(path_, ": checksum mismatch in bytes [", lo, ", ", hi, ") (corrupted)"));
    }
  }
  return absl::OkStatus();
}

absl::Status ShardFileReader::Read(std::vector<ByteRun> runs, uint8_t* dst) {
  // Split long runs at span boundaries, then read block-aligned spans that
  // cover consecutive runs.
  std::vector<ByteRun> pieces;
  for (const ByteRun& run : runs) {
    if (run.file_offset + run.bytes > size_) {
      return absl::DataLossError(absl::StrCat(path_, ": bytes [", run.file_offset, ", ",
                                              run.file_offset + run.bytes, ") are past its end"));
    }
    for (uint64_t done = 0; done < run.bytes;) {
      const uint64_t at = run.file_offset + done;
      const uint64_t take = std::min(run.bytes - done, kMaxSpanBytes - at % kMaxSpanBytes);
      pieces.push_back({at, run.dst_offset + done, take});
      done += take;
    }
  }
  std::sort(pieces.begin(), pieces.end(),
            [](const ByteRun& a, const ByteRun& b) { return a.file_offset < b.file_offset; });
  std::vector<uint8_t> buffer;
  size_t i = 0;
  while (i < pieces.size()) {
    const uint64_t begin = pieces[i].file_offset / kChecksumBlockBytes * kChecksumBlockBytes;
    uint64_t end = 0;
    size_t j = i;
    for (; j < pieces.size(); ++j) {
      const uint64_t piece_end = pieces[j].file_offset + pieces[j].bytes;
      const uint64_t aligned_end = std::min(
          size_, (piece_end + kChecksumBlockBytes - 1) / kChecksumBlockBytes * kChecksumBlockBytes);
      // A gap of whole unneeded blocks, or a span grown too long: stop here.
      if (j > i && (pieces[j].file_offset / kChecksumBlockBytes * kChecksumBlockBytes > end ||
                    aligned_end - begin > kMaxSpanBytes)) {
        break;
      }
      end = std::max(end, aligned_end);
    }
    FULCRUM_RETURN_IF_ERROR(ReadSpan(begin, end, buffer));
    for (size_t k = i; k < j; ++k) {
      std::memcpy(dst + pieces[k].dst_offset, buffer.data() + (pieces[k].file_offset - begin),
                  pieces[k].bytes);
    }
    i = j;
  }
  return absl::OkStatus();
}

}  // namespace fulcrum::checkpoint
