#include "trainer/checkpoint/train_checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "core/file_util.h"
#include "core/status.h"
#include "trainer/checkpoint/safetensors_reader.h"

namespace fulcrum::checkpoint {
namespace fs = std::filesystem;
namespace {

constexpr char kStatePrefix[] = "step-";

std::string StepDirName(int64_t step) { return absl::StrFormat("%s%08d", kStatePrefix, step); }

absl::StatusOr<std::map<std::string, torch::Tensor>> ReadAll(const std::string& path) {
  FULCRUM_ASSIGN_OR_RETURN(auto reader, SafetensorsReader::Open(path));
  std::map<std::string, torch::Tensor> out;
  for (const std::string& name : reader->Names()) {
    FULCRUM_ASSIGN_OR_RETURN(torch::Tensor view, reader->View(name));
    out[name] = view.clone();  // detach from the mapping
  }
  return out;
}

std::vector<std::string> StepDirs(const std::string& root) {
  std::vector<std::string> dirs;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && absl::StartsWith(name, kStatePrefix) &&
        name.find('.') == std::string::npos) {
      dirs.push_back(name);
    }
  }
  std::sort(dirs.begin(), dirs.end());  // zero-padded: lexical order = step order
  return dirs;
}

}  // namespace

absl::StatusOr<std::string> SaveTrainCheckpoint(const std::string& root,
                                                const TrainCheckpoint& checkpoint,
                                                int64_t keep_last) {
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec)
    return absl::InternalError(
        absl::StrCat("checkpoint.dir: cannot create ", root, ": ", ec.message()));
  const std::string name = StepDirName(checkpoint.step);
  const fs::path final_dir = fs::path(root) / name;
  const fs::path tmp_dir = fs::path(root) / absl::StrCat(name, ".tmp");
  fs::remove_all(tmp_dir, ec);
  fs::create_directories(tmp_dir, ec);
  if (ec)
    return absl::InternalError(
        absl::StrCat("cannot create ", tmp_dir.string(), ": ", ec.message()));

  FULCRUM_RETURN_IF_ERROR(
      WriteSafetensors((tmp_dir / "model.safetensors").string(), checkpoint.model));
  FULCRUM_RETURN_IF_ERROR(
      WriteSafetensors((tmp_dir / "optimizer.safetensors").string(), checkpoint.optimizer));
  FULCRUM_RETURN_IF_ERROR(WriteSafetensors((tmp_dir / "rng.safetensors").string(), checkpoint.rng));
  const nlohmann::json state = {{"step", checkpoint.step},
                                {"data_step", checkpoint.data_step},
                                {"world_size", checkpoint.world_size},
                                {"format", "fulcrum-train-checkpoint-v1"}};
  FULCRUM_RETURN_IF_ERROR(
      WriteFileAtomically((tmp_dir / "trainer_state.json").string(), state.dump(2) + "\n"));
  FULCRUM_RETURN_IF_ERROR(
      WriteFileAtomically((tmp_dir / "recipe.yaml").string(), checkpoint.recipe_yaml));
  FULCRUM_RETURN_IF_ERROR(SyncDirectory(tmp_dir.string()));

  fs::remove_all(final_dir, ec);
  fs::rename(tmp_dir, final_dir, ec);
  if (ec)
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp_dir.string(), ": ", ec.message()));
  FULCRUM_RETURN_IF_ERROR(SyncDirectory(root));
  FULCRUM_RETURN_IF_ERROR(WriteFileAtomically((fs::path(root) / "latest").string(), name + "\n"));

  if (keep_last > 0) {
    std::vector<std::string> dirs = StepDirs(root);
    const int64_t excess = static_cast<int64_t>(dirs.size()) - keep_last;
    for (int64_t i = 0; i < excess; ++i) {
      if (dirs[i] != name) fs::remove_all(fs::path(root) / dirs[i], ec);
    }
  }
  return final_dir.string();
}

bool IsTrainCheckpoint(const std::string& dir) {
  std::error_code ec;
  return fs::is_regular_file(fs::path(dir) / "trainer_state.json", ec);
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
                                            ": no training checkpoint in ", base,
                                            " (no trainer_state.json, no latest)"));
  }
  const std::string dir =
      (fs::path(base) / std::string(absl::StripAsciiWhitespace(*text))).string();
  if (!IsTrainCheckpoint(dir)) {
    return absl::NotFoundError(absl::StrCat("checkpoint.resume: ", pointer, " names ", dir,
                                            ", which is not a checkpoint"));
  }
  return dir;
}

absl::StatusOr<LoadedTrainCheckpoint> LoadTrainCheckpoint(const std::string& dir) {
  LoadedTrainCheckpoint loaded;
  loaded.dir = dir;
  const std::string state_path = (fs::path(dir) / "trainer_state.json").string();
  FULCRUM_ASSIGN_OR_RETURN(const std::string state_text, ReadFileToString(state_path));
  try {
    const nlohmann::json state = nlohmann::json::parse(state_text);
    loaded.step = state.at("step").get<int64_t>();
    loaded.data_step = state.at("data_step").get<int64_t>();
    loaded.world_size = state.at("world_size").get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    return absl::DataLossError(absl::StrCat(state_path, ": ", e.what()));
  }
  FULCRUM_ASSIGN_OR_RETURN(loaded.recipe_yaml,
                           ReadFileToString((fs::path(dir) / "recipe.yaml").string()));
  FULCRUM_ASSIGN_OR_RETURN(loaded.model, ReadAll((fs::path(dir) / "model.safetensors").string()));
  FULCRUM_ASSIGN_OR_RETURN(loaded.optimizer,
                           ReadAll((fs::path(dir) / "optimizer.safetensors").string()));
  FULCRUM_ASSIGN_OR_RETURN(loaded.rng, ReadAll((fs::path(dir) / "rng.safetensors").string()));
  return loaded;
}

}  // namespace fulcrum::checkpoint
