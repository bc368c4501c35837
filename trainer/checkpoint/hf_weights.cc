#include "trainer/checkpoint/hf_weights.h"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/file_util.h"
#include "core/status.h"

namespace fulcrum::checkpoint {
namespace {

namespace fs = std::filesystem;

std::string JoinPath(const std::string& dir, const std::string& file) {
  return (fs::path(dir) / file).string();
}

// name -> shard file, from "<prefix>.safetensors.index.json".
absl::StatusOr<std::map<std::string, std::string>> ReadWeightMap(const std::string& index_path) {
  FULCRUM_ASSIGN_OR_RETURN(std::string text, ReadFileToString(index_path));
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": not valid JSON: ", e.what()));
  }
  if (!json.is_object() || !json.contains("weight_map") || !json["weight_map"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": missing object \"weight_map\""));
  }
  std::map<std::string, std::string> weight_map;
  for (auto it = json["weight_map"].begin(); it != json["weight_map"].end(); ++it) {
    const std::string file = it.value().is_string() ? it.value().get<std::string>() : "";
    if (file.empty() || file.find('/') != std::string::npos || file == "..") {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map[\"", it.key(),
                                                     "\"] is not a file name in the directory"));
    }
    weight_map[it.key()] = file;
  }
  return weight_map;
}

// Groups tensor indices into shards of at most max_shard_bytes, in order.
std::vector<std::vector<size_t>> PlanShards(const std::vector<NamedTensor>& tensors,
                                            int64_t max_shard_bytes) {
  std::vector<std::vector<size_t>> shards;
  int64_t current = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t size = tensors[i].tensor.numel() * tensors[i].tensor.element_size();
    if (shards.empty() || (current + size > max_shard_bytes && !shards.back().empty())) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(i);
    current += size;
  }
  return shards;
}

// Removes "<prefix>.safetensors", "<prefix>.safetensors.index.json" and
// "<prefix>-NNNNN-of-NNNNN.safetensors" files of `dir` not in `keep`.
absl::Status RemoveStaleFiles(const std::string& dir, const std::string& prefix,
                              const std::set<std::string>& keep) {
  const std::regex shard_pattern(
      std::regex_replace(prefix, std::regex(R"([.^$|()\[\]{}*+?\\])"), R"(\$&)") +
      R"(-\d{5}-of-\d{5}\.safetensors)");
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const std::string file = e.path().filename().string();
    const bool ours = file == prefix + ".safetensors" ||
                      file == prefix + ".safetensors.index.json" ||
                      std::regex_match(file, shard_pattern);
    if (ours && keep.count(file) == 0) {
      fs::remove(e.path(), ec);
      if (ec)
        return absl::InternalError(
            absl::StrCat(e.path().string(), ": remove stale file: ", ec.message()));
    }
  }
  if (ec) return absl::InternalError(absl::StrCat(dir, ": list: ", ec.message()));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<HfWeights> HfWeights::Open(const std::string& dir) { return Open(dir, "model"); }

absl::StatusOr<HfWeights> HfWeights::Open(const std::string& dir, const std::string& prefix) {
  HfWeights weights;
  weights.dir_ = dir;
  const std::string single = JoinPath(dir, prefix + ".safetensors");
  const std::string index = JoinPath(dir, prefix + ".safetensors.index.json");
  std::error_code ec;
  if (fs::is_regular_file(single, ec)) {
    FULCRUM_ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsReader> reader,
                             SafetensorsReader::Open(single));
    for (const std::string& name : reader->Names()) weights.readers_[name] = reader;
    return weights;
  }
  if (!fs::is_regular_file(index, ec)) {
    return absl::NotFoundError(absl::StrCat(dir, ": no ", prefix, ".safetensors or ", prefix,
                                            ".safetensors.index.json in this directory"));
  }
  FULCRUM_ASSIGN_OR_RETURN(auto weight_map, ReadWeightMap(index));
  std::map<std::string, std::shared_ptr<SafetensorsReader>> shards;
  for (const auto& [name, file] : weight_map) {
    std::shared_ptr<SafetensorsReader>& reader = shards[file];
    if (reader == nullptr) {
      absl::StatusOr<std::shared_ptr<SafetensorsReader>> opened =
          SafetensorsReader::Open(JoinPath(dir, file));
      if (!opened.ok()) {
        return Annotate(opened.status(), absl::StrCat(index, ": shard \"", file, "\""));
      }
      reader = *std::move(opened);
    }
    if (!reader->Contains(name)) {
      return absl::NotFoundError(absl::StrCat(index, ": tensor \"", name, "\" is mapped to ", file,
                                              " but that shard does not contain it"));
    }
    weights.readers_[name] = reader;
  }
  return weights;
}

std::vector<std::string> HfWeights::Names() const {
  std::vector<std::string> names;
  names.reserve(readers_.size());
  for (const auto& [name, reader] : readers_) names.push_back(name);
  return names;
}

bool HfWeights::Contains(const std::string& name) const { return readers_.count(name) != 0; }

absl::StatusOr<std::shared_ptr<SafetensorsReader>> HfWeights::ReaderOf(
    const std::string& name) const {
  auto it = readers_.find(name);
  if (it == readers_.end()) {
    return absl::NotFoundError(absl::StrCat(dir_, ": no tensor \"", name, "\" in the weights"));
  }
  return it->second;
}

absl::StatusOr<TensorEntry> HfWeights::Entry(const std::string& name) const {
  FULCRUM_ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsReader> reader, ReaderOf(name));
  return reader->Entry(name);
}

absl::StatusOr<torch::Tensor> HfWeights::View(const std::string& name) const {
  FULCRUM_ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsReader> reader, ReaderOf(name));
  return reader->View(name);
}

absl::StatusOr<torch::Tensor> HfWeights::ViewBytes(const std::string& name) const {
  FULCRUM_ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsReader> reader, ReaderOf(name));
  return reader->ViewBytes(name);
}

absl::StatusOr<torch::Tensor> HfWeights::ReadSlice(const std::string& name, int64_t dim,
                                                   int64_t start, int64_t length) const {
  FULCRUM_ASSIGN_OR_RETURN(std::shared_ptr<SafetensorsReader> reader, ReaderOf(name));
  return reader->ReadSlice(name, dim, start, length);
}

void HfWeights::DropResidentPages() const {
  std::set<const SafetensorsReader*> dropped;
  for (const auto& [name, reader] : readers_) {
    if (dropped.insert(reader.get()).second) reader->DropResidentPages();
  }
}

absl::Status WriteHfWeights(const std::string& dir, const std::vector<NamedTensor>& tensors,
                            int64_t max_shard_bytes, const std::string& prefix) {
  return WriteHfWeightsStreamed(
      dir, tensors, [&](size_t i) -> absl::StatusOr<torch::Tensor> { return tensors[i].tensor; },
      max_shard_bytes, prefix);
}

absl::Status WriteHfWeightsStreamed(const std::string& dir, const std::vector<NamedTensor>& specs,
                                    const TensorProducer& produce, int64_t max_shard_bytes,
                                    const std::string& prefix) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat(dir, ": output directory does not exist"));
  }
  if (max_shard_bytes <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": max_shard_bytes must be positive, got ", max_shard_bytes));
  }
  // Validate everything (names, dtypes) before writing any file.
  FULCRUM_RETURN_IF_ERROR(Annotate(SafetensorsHeader(specs, {}).status(), dir));
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  std::vector<std::vector<size_t>> shards = PlanShards(specs, max_shard_bytes);
  if (shards.empty()) shards.emplace_back();  // no tensors: one empty file
  std::set<std::string> written;
  nlohmann::json weight_map = nlohmann::json::object();
  int64_t total_size = 0;
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file = shards.size() == 1 ? prefix + ".safetensors"
                                                : absl::StrFormat("%s-%05d-of-%05d.safetensors",
                                                                  prefix, s + 1, shards.size());
    std::vector<NamedTensor> shard;
    for (size_t i : shards[s]) {
      shard.push_back(specs[i]);
      weight_map[specs[i].name] = file;
      total_size += specs[i].tensor.numel() * specs[i].tensor.element_size();
    }
    FULCRUM_RETURN_IF_ERROR(WriteSafetensorsStreamed(
        JoinPath(dir, file), shard, [&](size_t j) { return produce(shards[s][j]); }, metadata));
    written.insert(file);
  }
  if (shards.size() > 1) {
    const nlohmann::json index = {{"metadata", {{"total_size", total_size}}},
                                  {"weight_map", weight_map}};
    const std::string index_file = prefix + ".safetensors.index.json";
    FULCRUM_RETURN_IF_ERROR(WriteFileAtomically(JoinPath(dir, index_file), index.dump(2) + "\n"));
    written.insert(index_file);
  }
  return RemoveStaleFiles(dir, prefix, written);
}

}  // namespace fulcrum::checkpoint
