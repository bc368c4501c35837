#include "trainer/checkpoint/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/status.h"
#include "trainer/checkpoint/dtype.h"

namespace fulcrum::checkpoint {
namespace {

absl::Status ErrnoError(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(path, ": ", what, ": ", std::strerror(errno)));
}

// The order tensors are laid out in: sorted by name (the header order).
std::vector<const NamedTensor*> SortedByName(const std::vector<NamedTensor>& tensors) {
  std::vector<const NamedTensor*> sorted;
  sorted.reserve(tensors.size());
  for (const NamedTensor& t : tensors) sorted.push_back(&t);
  std::sort(sorted.begin(), sorted.end(),
            [](const NamedTensor* a, const NamedTensor* b) { return a->name < b->name; });
  return sorted;
}

absl::Status ValidateTensors(const std::vector<NamedTensor>& tensors) {
  std::set<std::string> seen;
  for (const NamedTensor& t : tensors) {
    if (t.name.empty()) return absl::InvalidArgumentError("a tensor has an empty name");
    if (t.name == "__metadata__") {
      return absl::InvalidArgumentError("\"__metadata__\" is reserved, not a tensor name");
    }
    if (!seen.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name \"", t.name, "\""));
    }
    if (!t.tensor.defined()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor \"", t.name, "\" is undefined"));
    }
    if (!HasSafetensorsName(t.tensor.scalar_type())) {
      return absl::InvalidArgumentError(absl::StrCat("tensor \"", t.name, "\": dtype ",
                                                     c10::toString(t.tensor.scalar_type()),
                                                     " has no safetensors name"));
    }
  }
  return absl::OkStatus();
}

// Header JSON for `tensors` laid out in the given order.
std::string HeaderInOrder(const std::vector<const NamedTensor*>& ordered,
                          const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();  // std::map-backed: keys sorted
  uint64_t offset = 0;
  for (const NamedTensor* t : ordered) {
    const uint64_t size = static_cast<uint64_t>(t->tensor.numel() * t->tensor.element_size());
    header[t->name] = {{"dtype", SafetensorsDtypeName(t->tensor.scalar_type())},
                       {"shape", t->tensor.sizes().vec()},
                       {"data_offsets", {offset, offset + size}}};
    offset += size;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text = header.dump();
  // Pad so that the data section starts 8-byte aligned (8 + text.size()).
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

// Streams header and tensor bytes into the open temp file `fd`.
absl::Status WriteContents(int fd, const std::string& tmp, const std::string& header,
                           const std::vector<NamedTensor>& specs, const TensorProducer& produce) {
  uint8_t length[8];
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i, n >>= 8) length[i] = static_cast<uint8_t>(n & 0xff);
  FULCRUM_RETURN_IF_ERROR(WriteAllToFd(fd, length, sizeof(length), tmp));
  FULCRUM_RETURN_IF_ERROR(WriteAllToFd(fd, header.data(), header.size(), tmp));
  for (size_t i = 0; i < specs.size(); ++i) {
    const NamedTensor& spec = specs[i];
    absl::StatusOr<torch::Tensor> value = produce(i);
    if (!value.ok())
      return Annotate(value.status(), absl::StrCat(tmp, ": tensor \"", spec.name, "\""));
    if (!value->defined() || value->scalar_type() != spec.tensor.scalar_type() ||
        value->sizes() != spec.tensor.sizes()) {
      return absl::InternalError(absl::StrCat(
          tmp, ": tensor \"", spec.name, "\": produced ",
          value->defined() ? c10::toString(value->scalar_type()) : "nothing", " ",
          value->defined() ? c10::str(value->sizes()) : "", " where the header announced ",
          c10::toString(spec.tensor.scalar_type()), " ", c10::str(spec.tensor.sizes())));
    }
    try {
      const torch::Tensor cpu = value->to(torch::kCPU).contiguous();
      FULCRUM_RETURN_IF_ERROR(
          WriteAllToFd(fd, cpu.data_ptr(), cpu.numel() * cpu.element_size(), tmp));
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat(
          tmp, ": tensor \"", spec.name, "\": cannot copy to CPU: ", e.what_without_backtrace()));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> SafetensorsHeader(const std::vector<NamedTensor>& tensors,
                                              const std::map<std::string, std::string>& metadata) {
  FULCRUM_RETURN_IF_ERROR(ValidateTensors(tensors));
  return HeaderInOrder(SortedByName(tensors), metadata);
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<NamedTensor> sorted;
  sorted.reserve(tensors.size());
  for (const NamedTensor* t : SortedByName(tensors)) sorted.push_back(*t);
  return WriteSafetensorsStreamed(
      path, sorted, [&](size_t i) -> absl::StatusOr<torch::Tensor> { return sorted[i].tensor; },
      metadata);
}

absl::Status WriteSafetensorsStreamed(const std::string& path,
                                      const std::vector<NamedTensor>& specs,
                                      const TensorProducer& produce,
                                      const std::map<std::string, std::string>& metadata) {
  if (absl::Status valid = ValidateTensors(specs); !valid.ok()) return Annotate(valid, path);
  std::vector<const NamedTensor*> ordered;
  ordered.reserve(specs.size());
  for (const NamedTensor& t : specs) ordered.push_back(&t);
  const std::string header = HeaderInOrder(ordered, metadata);
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("create", tmp);
  absl::Status status = WriteContents(fd, tmp, header, specs, produce);
  if (status.ok() && ::fsync(fd) != 0) status = ErrnoError("fsync", tmp);
  if (::close(fd) != 0 && status.ok()) status = ErrnoError("close", tmp);
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) status = ErrnoError("rename", tmp);
  if (!status.ok()) {
    ::unlink(tmp.c_str());
    return status;
  }
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  return SyncDirectory(parent.empty() ? std::string(".") : parent.string());
}

}  // namespace fulcrum::checkpoint
