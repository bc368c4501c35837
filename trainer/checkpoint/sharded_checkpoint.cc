#include "trainer/checkpoint/sharded_checkpoint.h"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "core/check.h"
#include "core/file_util.h"
#include "core/status.h"
#include "trainer/checkpoint/dtype.h"
#include "trainer/checkpoint/host_buffer.h"

namespace fulcrum::checkpoint {
namespace fs = std::filesystem;
namespace {

constexpr char kStepPrefix[] = "step-";
constexpr char kFormat[] = "fulcrum-sharded-checkpoint-v2";
constexpr char kMetadataFile[] = "metadata.json";

std::string StepDirName(int64_t step) { return absl::StrFormat("%s%08d", kStepPrefix, step); }

std::string RankFileName(int rank) { return absl::StrFormat("rank-%05d.safetensors", rank); }

nlohmann::json RegionJson(const ShardRegion& r) {
  return {{"offsets", r.offsets}, {"lengths", r.lengths}, {"flat", {r.flat_begin, r.flat_end}}};
}

ShardRegion RegionFromJson(const nlohmann::json& j) {
  ShardRegion r;
  r.offsets = j.at("offsets").get<std::vector<int64_t>>();
  r.lengths = j.at("lengths").get<std::vector<int64_t>>();
  r.flat_begin = j.at("flat").at(0).get<int64_t>();
  r.flat_end = j.at("flat").at(1).get<int64_t>();
  return r;
}

nlohmann::json MetadataJson(const CheckpointMetadata& m) {
  nlohmann::json tensors = nlohmann::json::object();
  for (const auto& [name, t] : m.tensors) {
    nlohmann::json pieces = nlohmann::json::array();
    for (const SavedPiece& p : t.pieces) {
      nlohmann::json piece = RegionJson(p.region);
      piece["file"] = p.file;
      piece["offset"] = p.offset;
      pieces.push_back(piece);
    }
    tensors[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"pieces", pieces}};
  }
  nlohmann::json files = nlohmann::json::object();
  for (const auto& [name, f] : m.files) {
    files[name] = {{"bytes", f.bytes},
                   {"checksums", f.checksums},
                   {"checksums_crc32c", f.checksums_crc32c},
                   {"checksum_block_bytes", kChecksumBlockBytes}};
  }
  return {{"format", kFormat},
          {"step", m.header.step},
          {"data_step", m.header.data_step},
          {"optimizer_step", m.header.optimizer_step},
          {"world_size", m.header.world_size},
          {"mesh", m.header.mesh},
          {"files", files},
          {"tensors", tensors}};
}

absl::StatusOr<CheckpointMetadata> MetadataFromJson(const std::string& text,
                                                    const std::string& path) {
  CheckpointMetadata m;
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    if (j.value("format", "") != kFormat) {
      return absl::DataLossError(
          absl::StrCat(path, ": format is '", j.value("format", ""), "', not ", kFormat));
    }
    m.header.step = j.at("step").get<int64_t>();
    m.header.data_step = j.at("data_step").get<int64_t>();
    m.header.optimizer_step = j.at("optimizer_step").get<int64_t>();
    m.header.world_size = j.at("world_size").get<int64_t>();
    m.header.mesh = j.at("mesh").get<std::map<std::string, int64_t>>();
    for (const auto& [name, f] : j.at("files").items()) {
      if (f.at("checksum_block_bytes").get<uint64_t>() != kChecksumBlockBytes) {
        return absl::DataLossError(
            absl::StrCat(path, ": files.", name, ": unsupported checksum block size"));
      }
      ShardFileInfo info;
      info.name = name;
      info.bytes = f.at("bytes").get<uint64_t>();
      info.checksums = f.at("checksums").get<std::string>();
      info.checksums_crc32c = f.at("checksums_crc32c").get<uint32_t>();
      m.files[name] = info;
    }
    for (const auto& [name, t] : j.at("tensors").items()) {
      SavedTensor saved;
      saved.dtype = t.at("dtype").get<std::string>();
      saved.shape = t.at("shape").get<std::vector<int64_t>>();
      for (const nlohmann::json& p : t.at("pieces")) {
        SavedPiece piece{p.at("file").get<std::string>(), p.at("offset").get<uint64_t>(),
                         RegionFromJson(p)};
        const std::string invalid = piece.region.Invalid(saved.shape);
        if (!invalid.empty() || m.files.count(piece.file) == 0) {
          return absl::DataLossError(absl::StrCat(path, ": tensors.", name, ": a piece in ",
                                                  piece.file, ": ",
                                                  invalid.empty() ? "unlisted file" : invalid));
        }
        saved.pieces.push_back(piece);
      }
      m.tensors[name] = saved;
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat(path, ": ", e.what()));
  }
  return m;
}

std::vector<std::string> StepDirs(const std::string& root) {
  std::vector<std::string> dirs;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && absl::StartsWith(name, kStepPrefix) &&
        name.find('.') == std::string::npos) {
      dirs.push_back(name);
    }
  }
  std::sort(dirs.begin(), dirs.end());  // zero-padded: lexical order = step order
  return dirs;
}

std::string KeysJson(const std::vector<LocalPiece>& pieces) {
  nlohmann::json all = nlohmann::json::array();
  for (const LocalPiece& p : pieces) {
    FULCRUM_CHECK(p.values.numel() == p.region.numel() && p.region.Invalid(p.shape).empty(),
                  "checkpoint piece of ", p.tensor, " does not fit its region");
    nlohmann::json j = RegionJson(p.region);
    j["tensor"] = p.tensor;
    j["shape"] = p.shape;
    j["dtype"] = SafetensorsDtypeName(p.values.scalar_type());
    j["bytes"] = p.values.numel() * p.values.element_size();
    all.push_back(j);
  }
  return all.dump();
}

// The files this rank wrote: {"file", "bytes", ..., "pieces": [...]}.
nlohmann::json FileJson(const ShardFileInfo& info, const std::vector<const LocalPiece*>& written) {
  nlohmann::json pieces = nlohmann::json::array();
  for (size_t i = 0; i < written.size(); ++i) {
    nlohmann::json p = RegionJson(written[i]->region);
    p["tensor"] = written[i]->tensor;
    p["shape"] = written[i]->shape;
    p["dtype"] = SafetensorsDtypeName(written[i]->values.scalar_type());
    p["offset"] = info.offsets.at(absl::StrCat(written[i]->tensor, "@", i));
    pieces.push_back(p);
  }
  return {{"file", info.name},
          {"bytes", info.bytes},
          {"checksums", info.checksums},
          {"checksums_crc32c", info.checksums_crc32c},
          {"pieces", pieces}};
}

// Rank 0: the metadata from every rank's FileJson; checks that each
// tensor's pieces add up to it.
CheckpointMetadata AssembleMetadata(const CheckpointHeader& header,
                                    const std::vector<std::string>& files) {
  CheckpointMetadata m;
  m.header = header;
  for (const std::string& text : files) {
    const nlohmann::json f = nlohmann::json::parse(text);
    ShardFileInfo info;
    info.name = f.at("file").get<std::string>();
    info.bytes = f.at("bytes").get<uint64_t>();
    info.checksums = f.at("checksums").get<std::string>();
    info.checksums_crc32c = f.at("checksums_crc32c").get<uint32_t>();
    m.files[info.name] = info;
    for (const nlohmann::json& p : f.at("pieces")) {
      SavedTensor& t = m.tensors[p.at("tensor").get<std::string>()];
      t.dtype = p.at("dtype").get<std::string>();
      t.shape = p.at("shape").get<std::vector<int64_t>>();
      t.pieces.push_back({info.name, p.at("offset").get<uint64_t>(), RegionFromJson(p)});
    }
  }
  for (const auto& [name, t] : m.tensors) {
    int64_t covered = 0, numel = 1;
    for (const SavedPiece& p : t.pieces) covered += p.region.numel();
    for (int64_t d : t.shape) numel *= d;
    FULCRUM_CHECK(covered == numel, "checkpoint tensor ", name, ": the saved pieces hold ", covered,
                  " of its ", numel, " elements");
  }
  return m;
}

// Rank 0, once every rank's file is written: metadata.json and recipe.yaml
// into the staging directory, then the directory renamed into place, then
// `latest` replaced, then old directories (and the staging directories of
// killed saves) pruned; each step durable before
// the next, so a crash at any moment leaves `latest` naming a complete one.
absl::Status Publish(const std::string& root, const std::string& name,
                     const CheckpointHeader& header, const std::vector<std::string>& files,
                     const SaveOptions& options, const std::function<void(const char*)>& moment) {
  const fs::path staging = fs::path(root) / absl::StrCat(name, ".tmp");
  const fs::path final_dir = fs::path(root) / name;
  moment("files-agreed");
  const CheckpointMetadata metadata = AssembleMetadata(header, files);
  const std::string metadata_path = (staging / kMetadataFile).string();
  FULCRUM_RETURN_IF_ERROR(WriteFileDurably(metadata_path, ""));
  moment("metadata-created");
  const std::string text = MetadataJson(metadata).dump(1) + "\n";
  {
    std::ofstream out(metadata_path, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out.flush()) return absl::InternalError(absl::StrCat(metadata_path, ": cannot write"));
  }
  moment("metadata-written");
  FULCRUM_RETURN_IF_ERROR(WriteFileDurably(metadata_path, text));
  moment("metadata-synced");
  FULCRUM_RETURN_IF_ERROR(WriteFileDurably((staging / "recipe.yaml").string(), header.recipe_yaml));
  moment("recipe-written");
  FULCRUM_RETURN_IF_ERROR(SyncDirectory(staging.string()));
  moment("staging-synced");
  std::error_code ec;
  // A directory of this step from an earlier run (one resumed from an older
  // checkpoint) is replaced.
  fs::remove_all(final_dir, ec);
  fs::rename(staging, final_dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat(staging.string(), ": cannot rename to ",
                                            final_dir.string(), ": ", ec.message()));
  }
  moment("renamed");
  FULCRUM_RETURN_IF_ERROR(SyncDirectory(root));
  moment("published");
  const std::string latest = (fs::path(root) / "latest").string();
  FULCRUM_RETURN_IF_ERROR(WriteFileDurably(latest + ".tmp", name + "\n"));
  moment("latest-staged");
  if (std::rename((latest + ".tmp").c_str(), latest.c_str()) != 0) {
    return absl::InternalError(absl::StrCat(latest, ": cannot replace: ", std::strerror(errno)));
  }
  moment("latest-renamed");
  FULCRUM_RETURN_IF_ERROR(SyncDirectory(root));
  moment("latest-synced");
  // Staging directories of saves that were killed (one save runs at a time).
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string other = entry.path().filename().string();
    if (entry.is_directory() && absl::StartsWith(other, kStepPrefix) &&
        absl::EndsWith(other, ".tmp")) {
      fs::remove_all(entry.path(), ec);
    }
  }
  if (options.keep_last > 0) {
    const std::vector<std::string> dirs = StepDirs(root);
    const int64_t excess = static_cast<int64_t>(dirs.size()) - options.keep_last;
    for (int64_t i = 0; i < excess; ++i) {
      if (dirs[i] == name) continue;
      fs::remove_all(fs::path(root) / dirs[i], ec);
      if (i == 0) moment("pruned-one");
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::vector<bool> PlanWrites(const std::vector<std::vector<PieceKey>>& all, int rank) {
  // (tensor, region) -> holders in rank order, with the piece's bytes.
  std::map<std::pair<std::string, ShardRegion>, std::pair<std::vector<int>, int64_t>> holders;
  for (size_t r = 0; r < all.size(); ++r) {
    for (const PieceKey& key : all[r]) {
      auto& entry = holders[{key.tensor, key.region}];
      entry.first.push_back(static_cast<int>(r));
      entry.second = key.bytes;
    }
  }
  std::vector<int64_t> assigned(all.size(), 0);
  std::set<std::pair<std::string, ShardRegion>> mine;
  for (const auto& [key, entry] : holders) {
    int best = entry.first.front();
    for (int r : entry.first) {
      if (assigned[r] < assigned[best]) best = r;
    }
    assigned[best] += entry.second;
    if (best == rank) mine.insert(key);
  }
  std::vector<bool> writes;
  for (const PieceKey& key : all[rank]) writes.push_back(mine.erase({key.tensor, key.region}) > 0);
  return writes;
}

void ShardedSave::Moment(const char* name) const {
  if (options_.crash_at != name) return;
  std::fprintf(stderr, "[fulcrum r%d] crash test: SIGKILL at checkpoint moment '%s'\n",
               world_->rank(), name);
  std::fflush(stderr);
  std::raise(SIGKILL);
}

std::vector<bool> PlanOwnWrites(const parallel::World& world,
                                const std::vector<LocalPiece>& pieces) {
  std::vector<std::vector<PieceKey>> all;
  for (const std::string& text : world.AllGatherStrings(KeysJson(pieces))) {
    std::vector<PieceKey>& keys = all.emplace_back();
    for (const nlohmann::json& j : nlohmann::json::parse(text)) {
      keys.push_back(
          {j.at("tensor").get<std::string>(), RegionFromJson(j), j.at("bytes").get<int64_t>()});
    }
  }
  return PlanWrites(all, world.rank());
}

absl::StatusOr<std::unique_ptr<ShardedSave>> ShardedSave::Begin(
    const parallel::World& world, const std::string& root, const CheckpointHeader& header,
    const std::vector<LocalPiece>& pieces, const SaveOptions& options,
    std::vector<torch::Tensor>* snapshot) {
  std::unique_ptr<ShardedSave> save(new ShardedSave());
  save->world_ = &world;
  save->root_ = root;
  save->header_ = header;
  save->options_ = options;
  save->name_ = StepDirName(header.step);
  save->Moment("begin");
  // 1. Who writes what.
  const std::vector<bool> writes = PlanOwnWrites(world, pieces);
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (!writes[i]) continue;
    LocalPiece piece = pieces[i];
    // A host copy the training cannot touch (the background write reads it).
    if (snapshot != nullptr) {
      const size_t k = save->written_.size();
      if (snapshot->size() <= k) snapshot->resize(k + 1);
      torch::Tensor& copy = (*snapshot)[k];
      const torch::Tensor values = piece.values.detach().reshape({-1});
      if (!copy.defined() || copy.numel() != values.numel() || copy.dtype() != values.dtype()) {
        copy = NewHostBuffer(values.numel(), values.scalar_type());
      }
      copy.copy_(values);
      piece.values = copy;
    }
    save->written_.push_back(std::move(piece));
  }

  // 2. The staging directory, made by rank 0.
  const fs::path staging = fs::path(root) / absl::StrCat(save->name_, ".tmp");
  absl::Status status;
  if (world.is_root()) {
    std::error_code ec;
    fs::create_directories(root, ec);
    if (!ec) fs::remove_all(staging, ec);
    if (!ec) fs::create_directories(staging, ec);
    if (ec) {
      status = absl::InternalError(
          absl::StrCat("checkpoint.dir: cannot create ", staging.string(), ": ", ec.message()));
    }
    save->Moment("staging-created");
  }
  FULCRUM_RETURN_IF_ERROR(world.AgreeOn(status));
  return save;
}

void ShardedSave::Write() {
  std::vector<NamedTensor> tensors;
  for (size_t i = 0; i < written_.size(); ++i) {
    tensors.push_back({absl::StrCat(written_[i].tensor, "@", i), written_[i].values});
  }
  const std::string staging = (fs::path(root_) / absl::StrCat(name_, ".tmp")).string();
  info_ = WriteShardFile(staging, RankFileName(world_->rank()), tensors,
                         [this](const char* moment) { Moment(moment); });
  Moment("file-done");
}

absl::StatusOr<SavedCheckpoint> ShardedSave::Finish() {
  const parallel::World& world = *world_;
  std::vector<const LocalPiece*> written;
  for (const LocalPiece& piece : written_) written.push_back(&piece);
  const std::vector<std::string> files =
      world.AllGatherStrings(info_.ok() ? FileJson(*info_, written).dump() : "");
  absl::Status status = world.AgreeOn(info_.status());
  // Rank 0 publishes: metadata, rename, `latest`, pruning.
  if (status.ok() && world.is_root()) {
    status = Publish(root_, name_, header_, files, options_,
                     [this](const char* moment) { Moment(moment); });
  }
  if (!status.ok() && world.is_root()) {
    std::error_code ec;
    fs::remove_all(fs::path(root_) / absl::StrCat(name_, ".tmp"), ec);
  }
  FULCRUM_RETURN_IF_ERROR(world.AgreeOn(status));
  Moment("saved");
  SavedCheckpoint saved{(fs::path(root_) / name_).string(), 0};
  for (const std::string& text : files) {
    saved.bytes += nlohmann::json::parse(text).at("bytes").get<uint64_t>();
  }
  return saved;
}

absl::StatusOr<SavedCheckpoint> SaveShardedCheckpoint(const parallel::World& world,
                                                      const std::string& root,
                                                      const CheckpointHeader& header,
                                                      const std::vector<LocalPiece>& pieces,
                                                      const SaveOptions& options) {
  FULCRUM_ASSIGN_OR_RETURN(std::unique_ptr<ShardedSave> save,
                           ShardedSave::Begin(world, root, header, pieces, options, nullptr));
  save->Write();
  return save->Finish();
}

bool IsTrainCheckpoint(const std::string& dir) {
  std::error_code ec;
  return fs::is_regular_file(fs::path(dir) / kMetadataFile, ec);
}

absl::StatusOr<std::string> ResolveCheckpoint(const std::string& root, const std::string& resume) {
  std::string base = resume == "latest" ? root : resume;
  if (base.empty())
    return absl::InvalidArgumentError("checkpoint.resume: latest needs checkpoint.dir");
  if (IsTrainCheckpoint(base)) return base;
  const std::string pointer = (fs::path(base) / "latest").string();
  auto text = ReadFileToString(pointer);
  if (!text.ok()) {
    return absl::NotFoundError(absl::StrCat("checkpoint.resume: ", resume,
                                            ": no training checkpoint in ", base, " (no ",
                                            kMetadataFile, ", no latest)"));
  }
  const std::string dir =
      (fs::path(base) / std::string(absl::StripAsciiWhitespace(*text))).string();
  if (!IsTrainCheckpoint(dir)) {
    return absl::NotFoundError(absl::StrCat("checkpoint.resume: ", pointer, " names ", dir,
                                            ", which is not a checkpoint"));
  }
  return dir;
}

absl::StatusOr<std::unique_ptr<ShardedCheckpointReader>> ShardedCheckpointReader::Open(
    const std::string& dir) {
  std::unique_ptr<ShardedCheckpointReader> reader(new ShardedCheckpointReader());
  reader->dir_ = dir;
  const std::string path = (fs::path(dir) / kMetadataFile).string();
  FULCRUM_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  FULCRUM_ASSIGN_OR_RETURN(reader->metadata_, MetadataFromJson(text, path));
  FULCRUM_ASSIGN_OR_RETURN(reader->metadata_.header.recipe_yaml,
                           ReadFileToString((fs::path(dir) / "recipe.yaml").string()));
  return reader;
}

absl::StatusOr<ShardFileReader*> ShardedCheckpointReader::File(const std::string& name) {
  auto it = files_.find(name);
  if (it == files_.end()) {
    FULCRUM_ASSIGN_OR_RETURN(std::unique_ptr<ShardFileReader> file,
                             ShardFileReader::Open(dir_, metadata_.files.at(name)));
    it = files_.emplace(name, std::move(file)).first;
  }
  return it->second.get();
}

absl::Status ShardedCheckpointReader::Read(const std::string& tensor, const ShardRegion& region,
                                           torch::Tensor& out) {
  const std::string where = (fs::path(dir_) / kMetadataFile).string();
  auto it = metadata_.tensors.find(tensor);
  if (it == metadata_.tensors.end()) {
    return absl::NotFoundError(absl::StrCat(where, ": no tensor ", tensor));
  }
  const SavedTensor& saved = it->second;
  const std::string invalid = region.Invalid(saved.shape);
  if (!invalid.empty()) {
    return absl::DataLossError(absl::StrCat(where, ": ", tensor, " has shape [",
                                            absl::StrJoin(saved.shape, ", "),
                                            "], which does not hold the region wanted: ", invalid));
  }
  if (saved.dtype != SafetensorsDtypeName(out.scalar_type())) {
    return absl::DataLossError(absl::StrCat(where, ": ", tensor, " is ", saved.dtype, ", wanted ",
                                            SafetensorsDtypeName(out.scalar_type())));
  }
  FULCRUM_CHECK(out.is_contiguous() && out.numel() == region.numel() && out.device().is_cpu(),
                "Read into a tensor that does not fit the region of ", tensor);
  const uint64_t element = static_cast<uint64_t>(out.element_size());
  std::map<std::string, std::vector<ByteRun>> by_file;
  int64_t covered = 0;
  for (const SavedPiece& piece : saved.pieces) {
    for (const CopyRun& run : OverlapRuns(piece.region, region)) {
      by_file[piece.file].push_back({piece.offset + static_cast<uint64_t>(run.src) * element,
                                     static_cast<uint64_t>(run.dst) * element,
                                     static_cast<uint64_t>(run.count) * element});
      covered += run.count;
    }
  }
  if (covered != region.numel()) {
    return absl::DataLossError(absl::StrCat(where, ": the pieces of ", tensor, " hold ", covered,
                                            " of the ", region.numel(), " elements wanted"));
  }
  for (auto& [file, runs] : by_file) {
    FULCRUM_ASSIGN_OR_RETURN(ShardFileReader * reader, File(file));
    FULCRUM_RETURN_IF_ERROR(reader->Read(std::move(runs), static_cast<uint8_t*>(out.data_ptr())));
  }
  bytes_needed_ += static_cast<uint64_t>(region.numel()) * element;
  return absl::OkStatus();
}

absl::StatusOr<torch::Tensor> ShardedCheckpointReader::ReadWhole(const std::string& tensor) {
  auto it = metadata_.tensors.find(tensor);
  if (it == metadata_.tensors.end()) {
    return absl::NotFoundError(
        absl::StrCat((fs::path(dir_) / kMetadataFile).string(), ": no tensor ", tensor));
  }
  FULCRUM_ASSIGN_OR_RETURN(const torch::ScalarType type,
                           ScalarTypeFromSafetensors(it->second.dtype));
  torch::Tensor out = torch::empty(it->second.shape, torch::TensorOptions().dtype(type));
  FULCRUM_RETURN_IF_ERROR(Read(tensor, ShardRegion::Whole(it->second.shape), out));
  return out;
}

uint64_t ShardedCheckpointReader::bytes_read() const {
  uint64_t total = 0;
  for (const auto& [name, file] : files_) total += file->bytes_read();
  return total;
}

uint64_t ShardedCheckpointReader::bytes_needed() const { return bytes_needed_; }

}  // namespace fulcrum::checkpoint
