#include "trainer/checkpoint/safetensors_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/check.h"
#include "core/status.h"
#include "trainer/checkpoint/dtype.h"

namespace fulcrum::checkpoint {
namespace {

// A header larger than this is a corrupt length field, not a real header.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1024 * 1024;

struct ParsedHeader {
  std::map<std::string, TensorEntry> entries;
  std::map<std::string, std::string> metadata;
};

absl::Status EntryError(const std::string& name, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\": ", what));
}

// Validates one header entry {dtype, shape, data_offsets} against a data
// section of `data_size` bytes.
absl::StatusOr<TensorEntry> ParseEntry(const std::string& name, const nlohmann::json& value,
                                       uint64_t data_size) {
  if (!value.is_object()) return EntryError(name, "header entry is not a JSON object");
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!value.contains(key)) return EntryError(name, absl::StrCat("missing \"", key, "\""));
  }
  TensorEntry entry;
  entry.name = name;
  const nlohmann::json& dtype = value.at("dtype");
  if (!dtype.is_string()) return EntryError(name, "\"dtype\" is not a string");
  entry.dtype = dtype.get<std::string>();
  const int64_t element_size = ElementSize(entry.dtype);
  if (element_size == 0) {
    return EntryError(name, absl::StrCat("unknown dtype \"", entry.dtype, "\""));
  }
  const nlohmann::json& shape = value.at("shape");
  if (!shape.is_array()) return EntryError(name, "\"shape\" is not an array");
  uint64_t numel = 1;
  for (const nlohmann::json& d : shape) {
    if (!d.is_number_unsigned())
      return EntryError(name, "\"shape\" has a non-integer or negative dim");
    const uint64_t dim = d.get<uint64_t>();
    if (dim > (1ull << 40) || (dim != 0 && numel > (1ull << 48) / dim)) {
      return EntryError(name, "\"shape\" is absurdly large");
    }
    numel *= dim;
    entry.shape.push_back(static_cast<int64_t>(dim));
  }
  const nlohmann::json& offsets = value.at("data_offsets");
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned()) {
    return EntryError(name, "\"data_offsets\" is not [begin, end] of non-negative integers");
  }
  entry.begin = offsets[0].get<uint64_t>();
  entry.end = offsets[1].get<uint64_t>();
  if (entry.begin > entry.end || entry.end > data_size) {
    return EntryError(name,
                      absl::StrCat("data_offsets [", entry.begin, ", ", entry.end,
                                   ") out of range of the data section (", data_size, " bytes)"));
  }
  const uint64_t expected = numel * static_cast<uint64_t>(element_size);
  if (entry.end - entry.begin != expected) {
    return EntryError(name, absl::StrCat("data_offsets span ", entry.end - entry.begin,
                                         " bytes but shape [", absl::StrJoin(entry.shape, ","),
                                         "] of ", entry.dtype, " needs ", expected));
  }
  return entry;
}

absl::StatusOr<std::map<std::string, std::string>> ParseMetadata(const nlohmann::json& value) {
  if (!value.is_object()) return absl::InvalidArgumentError("\"__metadata__\" is not an object");
  std::map<std::string, std::string> metadata;
  for (auto it = value.begin(); it != value.end(); ++it) {
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"__metadata__\" value of \"", it.key(), "\" is not a string"));
    }
    metadata[it.key()] = it.value().get<std::string>();
  }
  return metadata;
}

// Tensors must not share bytes (empty tensors share nothing).
absl::Status CheckNoOverlap(const std::map<std::string, TensorEntry>& entries) {
  std::vector<const TensorEntry*> sorted;
  for (const auto& [name, entry] : entries) {
    if (entry.end > entry.begin) sorted.push_back(&entry);
  }
  std::sort(sorted.begin(), sorted.end(),
            [](const TensorEntry* a, const TensorEntry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i]->begin < sorted[i - 1]->end) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensors \"", sorted[i - 1]->name, "\" [", sorted[i - 1]->begin, ", ",
                       sorted[i - 1]->end, ") and \"", sorted[i]->name, "\" [", sorted[i]->begin,
                       ", ", sorted[i]->end, ") overlap"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ParsedHeader> ParseHeader(const char* text, uint64_t length, uint64_t data_size) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text, text + length);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("header is not valid JSON: ", e.what()));
  }
  if (!json.is_object()) return absl::InvalidArgumentError("header is not a JSON object");
  ParsedHeader parsed;
  for (auto it = json.begin(); it != json.end(); ++it) {
    if (it.key() == "__metadata__") {
      FULCRUM_ASSIGN_OR_RETURN(parsed.metadata, ParseMetadata(it.value()));
      continue;
    }
    FULCRUM_ASSIGN_OR_RETURN(TensorEntry entry, ParseEntry(it.key(), it.value(), data_size));
    parsed.entries.emplace(it.key(), std::move(entry));
  }
  FULCRUM_RETURN_IF_ERROR(CheckNoOverlap(parsed.entries));
  return parsed;
}

std::vector<int64_t> SliceShape(std::vector<int64_t> shape, int64_t dim, int64_t length) {
  shape[dim] = length;
  return shape;
}

}  // namespace

absl::StatusOr<std::shared_ptr<SafetensorsReader>> SafetensorsReader::Open(
    const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::InternalError(absl::StrCat(path, ": fstat: ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": not a safetensors file: ", file_size,
                     " bytes, shorter than the 8-byte header length"));
  }
  void* mapping = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);  // the mapping stays valid without the descriptor
  if (mapping == MAP_FAILED) {
    return absl::InternalError(absl::StrCat(path, ": mmap: ", std::strerror(map_errno)));
  }
  std::shared_ptr<SafetensorsReader> reader(new SafetensorsReader());
  reader->path_ = path;
  reader->mapping_ = mapping;
  reader->mapping_size_ = file_size;
  const auto* bytes = static_cast<const uint8_t*>(mapping);
  uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | bytes[i];  // little-endian
  if (header_length > file_size - 8) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header length ", header_length,
                                                   " exceeds the file size (", file_size,
                                                   " bytes): truncated or not safetensors"));
  }
  if (header_length > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header length ", header_length,
                                                   " is absurd (limit ", kMaxHeaderBytes, ")"));
  }
  const uint64_t data_size = file_size - 8 - header_length;
  absl::StatusOr<ParsedHeader> parsed =
      ParseHeader(reinterpret_cast<const char*>(bytes + 8), header_length, data_size);
  if (!parsed.ok()) return Annotate(parsed.status(), path);
  reader->entries_ = std::move(parsed->entries);
  reader->metadata_ = std::move(parsed->metadata);
  reader->data_ = bytes + 8 + header_length;
  return reader;
}

void SafetensorsReader::DropResidentPages() const {
  // A private read-only file mapping is never dirty: its pages can be
  // dropped and re-read from the file.
  ::madvise(mapping_, mapping_size_, MADV_DONTNEED);
}

SafetensorsReader::~SafetensorsReader() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

std::vector<std::string> SafetensorsReader::Names() const {
  std::vector<std::string> names;
  names.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) names.push_back(name);
  return names;
}

bool SafetensorsReader::Contains(const std::string& name) const {
  return entries_.count(name) != 0;
}

absl::StatusOr<const TensorEntry*> SafetensorsReader::Find(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    return absl::NotFoundError(absl::StrCat(path_, ": no tensor \"", name, "\""));
  }
  return &it->second;
}

absl::StatusOr<TensorEntry> SafetensorsReader::Entry(const std::string& name) const {
  FULCRUM_ASSIGN_OR_RETURN(const TensorEntry* entry, Find(name));
  return *entry;
}

absl::StatusOr<torch::Tensor> SafetensorsReader::ViewBytes(const std::string& name) const {
  FULCRUM_ASSIGN_OR_RETURN(const TensorEntry* entry, Find(name));
  std::shared_ptr<const SafetensorsReader> self = shared_from_this();
  // from_blob wants a mutable pointer; the memory is PROT_READ (see header).
  void* data = const_cast<uint8_t*>(DataOf(*entry));
  return torch::from_blob(
      data, {static_cast<int64_t>(entry->end - entry->begin)}, [self](void*) {},
      torch::TensorOptions().dtype(torch::kUInt8));
}

absl::StatusOr<torch::Tensor> SafetensorsReader::View(const std::string& name) const {
  FULCRUM_ASSIGN_OR_RETURN(const TensorEntry* entry, Find(name));
  FULCRUM_ASSIGN_OR_RETURN(torch::Tensor bytes, ViewBytes(name));
  if (IsFloat8(entry->dtype)) return DequantizeFloat8(bytes.view(entry->shape), entry->dtype);
  const torch::ScalarType type = ScalarTypeFromSafetensors(entry->dtype).value();
  const int64_t element_size = ElementSize(entry->dtype);
  const auto address = reinterpret_cast<uintptr_t>(DataOf(*entry));
  if (address % static_cast<uintptr_t>(element_size) != 0) {
    // Misaligned (legal in the format, unusual in practice): copy into
    // aligned memory rather than hand kernels an unaligned pointer.
    torch::Tensor out = torch::empty(entry->shape, torch::TensorOptions().dtype(type));
    std::memcpy(out.data_ptr(), DataOf(*entry), entry->end - entry->begin);
    return out;
  }
  std::shared_ptr<const SafetensorsReader> self = shared_from_this();
  return torch::from_blob(
      const_cast<uint8_t*>(DataOf(*entry)), entry->shape, [self](void*) {},
      torch::TensorOptions().dtype(type));
}

absl::StatusOr<torch::Tensor> SafetensorsReader::ReadSlice(const std::string& name, int64_t dim,
                                                           int64_t start, int64_t length) const {
  FULCRUM_ASSIGN_OR_RETURN(const TensorEntry* entry, Find(name));
  const int64_t ndim = static_cast<int64_t>(entry->shape.size());
  if (dim < 0) dim += ndim;
  if (dim < 0 || dim >= ndim) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": tensor \"", name, "\": slice dim ",
                                                   dim, " out of range for ", ndim, " dims"));
  }
  const int64_t size = entry->shape[dim];
  if (start < 0 || length < 0 || start + length > size) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": tensor \"", name, "\": slice [", start,
                                                   ", ", start + length, ") out of range of dim ",
                                                   dim, " (size ", size, ")"));
  }
  // Row-major: [outer, size, inner] with `inner` counted in bytes.
  int64_t outer = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= entry->shape[d];
  int64_t inner = ElementSize(entry->dtype);
  for (int64_t d = dim + 1; d < ndim; ++d) inner *= entry->shape[d];
  const bool fp8 = IsFloat8(entry->dtype);
  const torch::ScalarType type =
      fp8 ? torch::kUInt8 : ScalarTypeFromSafetensors(entry->dtype).value();
  torch::Tensor out =
      torch::empty(SliceShape(entry->shape, dim, length), torch::TensorOptions().dtype(type));
  auto* dst = static_cast<uint8_t*>(out.data_ptr());
  const uint8_t* src = DataOf(*entry);
  const int64_t run = length * inner;  // bytes copied per outer index
  for (int64_t o = 0; o < outer && run > 0; ++o) {
    std::memcpy(dst + o * run, src + (o * size + start) * inner, static_cast<size_t>(run));
  }
  if (fp8) return DequantizeFloat8(out, entry->dtype);
  return out;
}

}  // namespace fulcrum::checkpoint
