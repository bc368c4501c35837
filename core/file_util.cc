#include "core/file_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/status.h"

namespace fulcrum {
namespace {
absl::Status ErrnoError(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(path, ": ", what, ": ", std::strerror(errno)));
}
}  // namespace

absl::StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open for reading"));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status WriteAllToFd(int fd, const void* data, size_t size, const std::string& path) {
  const auto* bytes = static_cast<const uint8_t*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, bytes, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("write", path);
    }
    bytes += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status SyncDirectory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return ErrnoError("open directory", dir);
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return ErrnoError("fsync directory", dir);
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view contents) {
  const std::filesystem::path target(path);
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return ErrnoError("create", tmp);
  size_t written = 0;
  while (written < contents.size()) {
    const ssize_t n = ::write(fd, contents.data() + written, contents.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      const absl::Status status = ErrnoError("write", tmp);
      ::close(fd);
      ::unlink(tmp.c_str());
      return status;
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const absl::Status status = ErrnoError("fsync", tmp);
    ::unlink(tmp.c_str());
    return status;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const absl::Status status = ErrnoError("rename", tmp);
    ::unlink(tmp.c_str());
    return status;
  }
  const std::string parent =
      target.has_parent_path() ? target.parent_path().string() : std::string(".");
  return SyncDirectory(parent);
}

absl::StatusOr<std::string> MakeStagingDirectory(const std::string& target) {
  std::string trimmed = target;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  const std::string staged = absl::StrCat(trimmed, ".tmp-", ::getpid());
  std::error_code ec;
  std::filesystem::remove_all(staged, ec);
  std::filesystem::create_directories(staged, ec);
  if (ec) return absl::InternalError(absl::StrCat(staged, ": cannot create: ", ec.message()));
  return staged;
}

absl::Status PublishDirectory(const std::string& staged, const std::string& target) {
  FULCRUM_RETURN_IF_ERROR(SyncDirectory(staged));
  std::error_code ec;
  std::filesystem::remove_all(target, ec);
  if (ec) return absl::InternalError(absl::StrCat(target, ": cannot replace: ", ec.message()));
  std::filesystem::rename(staged, target, ec);
  if (ec) return absl::InternalError(absl::StrCat(staged, ": cannot rename: ", ec.message()));
  const std::filesystem::path parent = std::filesystem::absolute(target).parent_path();
  return SyncDirectory(parent.string());
}

}  // namespace fulcrum
