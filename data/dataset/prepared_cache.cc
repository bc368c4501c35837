#include "data/dataset/prepared_cache.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "core/file_util.h"
#include "core/status.h"
#include "data/dataset/content_hash.h"

namespace fulcrum::data {
namespace {

constexpr char kManifest[] = "manifest.json";
constexpr const char* kSplits[] = {"train", "validation"};

// A read-only mapping of a whole file; empty files map to nothing.
class MappedFile {
 public:
  static absl::StatusOr<MappedFile> Open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return absl::NotFoundError(absl::StrCat(path, ": ", std::strerror(errno)));
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      return absl::InternalError(absl::StrCat(path, ": fstat: ", std::strerror(err)));
    }
    MappedFile file;
    file.size_ = static_cast<size_t>(st.st_size);
    if (file.size_ > 0) {
      void* p = ::mmap(nullptr, file.size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int err = errno;
        ::close(fd);
        return absl::InternalError(absl::StrCat(path, ": mmap: ", std::strerror(err)));
      }
      file.data_ = p;
    }
    ::close(fd);
    return file;
  }
  MappedFile(MappedFile&& other) noexcept : data_(other.data_), size_(other.size_) {
    other.data_ = nullptr;
    other.size_ = 0;
  }
  MappedFile& operator=(MappedFile&&) = delete;
  MappedFile(const MappedFile&) = delete;
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(data_, size_);
  }
  const unsigned char* bytes() const { return static_cast<const unsigned char*>(data_); }
  size_t size() const { return size_; }

 private:
  MappedFile() = default;
  void* data_ = nullptr;
  size_t size_ = 0;
};

// Little-endian encode/decode, independent of the host's byte order.
void AppendLe(std::string& out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}
int64_t LoadLe(const unsigned char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  if (bytes == 4) return static_cast<int32_t>(static_cast<uint32_t>(v));
  return static_cast<int64_t>(v);
}

void AppendInt32(std::string& out, int64_t value) {
  FULCRUM_CHECK(
      value >= std::numeric_limits<int32_t>::min() && value <= std::numeric_limits<int32_t>::max(),
      "value ", value, " does not fit the cache's int32 shards");
  AppendLe(out, static_cast<uint32_t>(static_cast<int32_t>(value)), 4);
}

struct SplitFiles {
  std::string tokens, labels, offsets;
  int64_t num_tokens = 0;
};

SplitFiles EncodeSplit(const std::vector<Sample>& samples) {
  SplitFiles files;
  int64_t total = 0;
  for (const Sample& s : samples) total += static_cast<int64_t>(s.input_ids.size());
  files.tokens.reserve(static_cast<size_t>(total) * 4);
  files.labels.reserve(static_cast<size_t>(total) * 4);
  files.offsets.reserve((samples.size() + 1) * 8);
  AppendLe(files.offsets, 0, 8);
  for (const Sample& s : samples) {
    FULCRUM_CHECK(s.labels.size() == s.input_ids.size(), "labels ", s.labels.size(), " vs ids ",
                  s.input_ids.size());
    for (int64_t id : s.input_ids) AppendInt32(files.tokens, id);
    for (int64_t label : s.labels) AppendInt32(files.labels, label);
    files.num_tokens += static_cast<int64_t>(s.input_ids.size());
    AppendLe(files.offsets, static_cast<uint64_t>(files.num_tokens), 8);
  }
  return files;
}

absl::Status WriteBinary(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return absl::InternalError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

absl::StatusOr<nlohmann::json> ReadManifest(const std::string& dir) {
  const std::string path = absl::StrCat(dir, "/", kManifest);
  FULCRUM_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  nlohmann::json manifest = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!manifest.is_object()) {
    return absl::DataLossError(absl::StrCat(path, ": not a JSON object"));
  }
  return manifest;
}

// The first JSON path at which `a` and `b` differ ("" when equal).
std::string FirstDifference(const nlohmann::json& a, const nlohmann::json& b,
                            const std::string& path) {
  if (a == b) return "";
  if (a.is_object() && b.is_object()) {
    for (const auto& [key, value] : b.items()) {
      const std::string sub = absl::StrCat(path, ".", key);
      if (!a.contains(key)) return sub;
      std::string diff = FirstDifference(a.at(key), value, sub);
      if (!diff.empty()) return diff;
    }
    for (const auto& [key, value] : a.items()) {
      if (!b.contains(key)) return absl::StrCat(path, ".", key);
    }
  }
  if (a.is_array() && b.is_array() && a.size() == b.size()) {
    for (size_t i = 0; i < a.size(); ++i) {
      std::string diff = FirstDifference(a[i], b[i], absl::StrCat(path, "[", i, "]"));
      if (!diff.empty()) return diff;
    }
  }
  return path;
}

absl::StatusOr<std::vector<Sample>> LoadSplit(const std::string& dir, const std::string& split,
                                              const nlohmann::json& expected) {
  const std::string base = absl::StrCat(dir, "/", split);
  FULCRUM_ASSIGN_OR_RETURN(const MappedFile tokens, MappedFile::Open(base + ".tokens"));
  FULCRUM_ASSIGN_OR_RETURN(const MappedFile labels, MappedFile::Open(base + ".labels"));
  FULCRUM_ASSIGN_OR_RETURN(const MappedFile offsets, MappedFile::Open(base + ".offsets"));
  const int64_t num_samples = expected.value("samples", int64_t{-1});
  const int64_t num_tokens = expected.value("tokens", int64_t{-1});
  if (num_samples < 0 || num_tokens < 0) {
    return absl::DataLossError(
        absl::StrCat(dir, "/", kManifest, ": splits.", split, ": missing samples/tokens counts"));
  }
  const auto size_error = [&](const std::string& file, size_t got, int64_t want) {
    return absl::DataLossError(absl::StrCat(file, ": ", got, " bytes, the manifest implies ", want,
                                            " (truncated or foreign file)"));
  };
  if (static_cast<int64_t>(tokens.size()) != num_tokens * 4) {
    return size_error(base + ".tokens", tokens.size(), num_tokens * 4);
  }
  if (static_cast<int64_t>(labels.size()) != num_tokens * 4) {
    return size_error(base + ".labels", labels.size(), num_tokens * 4);
  }
  if (static_cast<int64_t>(offsets.size()) != (num_samples + 1) * 8) {
    return size_error(base + ".offsets", offsets.size(), (num_samples + 1) * 8);
  }
  std::vector<Sample> samples(static_cast<size_t>(num_samples));
  int64_t begin = LoadLe(offsets.bytes(), 8);
  if (begin != 0) return absl::DataLossError(absl::StrCat(base, ".offsets[0] = ", begin, " != 0"));
  for (int64_t i = 0; i < num_samples; ++i) {
    const int64_t end = LoadLe(offsets.bytes() + 8 * (i + 1), 8);
    if (end <= begin || end > num_tokens) {
      return absl::DataLossError(absl::StrCat(base, ".offsets[", i + 1, "] = ", end, ": not in (",
                                              begin, ", ", num_tokens, "]"));
    }
    Sample& s = samples[static_cast<size_t>(i)];
    s.input_ids.resize(static_cast<size_t>(end - begin));
    s.labels.resize(static_cast<size_t>(end - begin));
    for (int64_t t = begin; t < end; ++t) {
      s.input_ids[static_cast<size_t>(t - begin)] = LoadLe(tokens.bytes() + 4 * t, 4);
      s.labels[static_cast<size_t>(t - begin)] = LoadLe(labels.bytes() + 4 * t, 4);
    }
    begin = end;
  }
  if (begin != num_tokens) {
    return absl::DataLossError(
        absl::StrCat(base, ".offsets: last offset ", begin, " != tokens ", num_tokens));
  }
  return samples;
}

}  // namespace

std::string PreparedCacheKey(const nlohmann::json& key) {
  return HashToHex(HashBytes(key.dump(), static_cast<uint64_t>(kPreparedCacheVersion)));
}

CacheCheck CheckPreparedCache(const std::string& dir, const nlohmann::json& fingerprint) {
  std::error_code ec;
  if (!std::filesystem::exists(absl::StrCat(dir, "/", kManifest), ec)) {
    return {CacheState::kMissing, absl::StrCat("no ", kManifest, " in ", dir)};
  }
  absl::StatusOr<nlohmann::json> manifest = ReadManifest(dir);
  if (!manifest.ok()) return {CacheState::kStale, std::string(manifest.status().message())};
  if (manifest->value("version", int64_t{-1}) != kPreparedCacheVersion) {
    return {CacheState::kStale, absl::StrCat("format version ", manifest->value("version", -1),
                                             " != ", kPreparedCacheVersion)};
  }
  const nlohmann::json old = manifest->value("fingerprint", nlohmann::json());
  const std::string diff = FirstDifference(old, fingerprint, "fingerprint");
  if (!diff.empty()) return {CacheState::kStale, absl::StrCat(diff, " changed")};
  return {CacheState::kFresh, "manifest matches"};
}

absl::Status WritePreparedCache(const std::string& dir, const nlohmann::json& fingerprint,
                                const PreparedData& data, const nlohmann::json& info) {
  std::error_code ec;
  const std::filesystem::path parent = std::filesystem::absolute(dir).parent_path();
  std::filesystem::create_directories(parent, ec);
  if (ec)
    return absl::InternalError(absl::StrCat(parent.string(), ": cannot create: ", ec.message()));
  FULCRUM_ASSIGN_OR_RETURN(const std::string staged, MakeStagingDirectory(dir));
  nlohmann::json manifest = {{"version", kPreparedCacheVersion},
                             {"fingerprint", fingerprint},
                             {"info", info.is_null() ? nlohmann::json::object() : info}};
  for (const char* split : kSplits) {
    const std::vector<Sample>& samples =
        std::string(split) == "train" ? data.train : data.validation;
    const SplitFiles files = EncodeSplit(samples);
    const std::string base = absl::StrCat(staged, "/", split);
    FULCRUM_RETURN_IF_ERROR(WriteBinary(base + ".tokens", files.tokens));
    FULCRUM_RETURN_IF_ERROR(WriteBinary(base + ".labels", files.labels));
    FULCRUM_RETURN_IF_ERROR(WriteBinary(base + ".offsets", files.offsets));
    manifest["splits"][split] = {{"samples", samples.size()}, {"tokens", files.num_tokens}};
  }
  FULCRUM_RETURN_IF_ERROR(
      WriteFileAtomically(absl::StrCat(staged, "/", kManifest), manifest.dump(2) + "\n"));
  return PublishDirectory(staged, dir);
}

absl::StatusOr<PreparedData> LoadPreparedCache(const std::string& dir) {
  FULCRUM_ASSIGN_OR_RETURN(const nlohmann::json manifest, ReadManifest(dir));
  const nlohmann::json splits = manifest.value("splits", nlohmann::json::object());
  PreparedData data;
  for (const char* split : kSplits) {
    if (!splits.contains(split) || !splits[split].is_object()) {
      return absl::DataLossError(
          absl::StrCat(dir, "/", kManifest, ": splits.", split, " is missing"));
    }
    FULCRUM_ASSIGN_OR_RETURN(std::vector<Sample> samples, LoadSplit(dir, split, splits[split]));
    (std::string(split) == "train" ? data.train : data.validation) = std::move(samples);
  }
  return data;
}

}  // namespace fulcrum::data
