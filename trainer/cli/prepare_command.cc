// fulcrum prepare RECIPE.yaml [key=value ...]: tokenizes the recipe's text
// data into the prepared cache (or says it is up to date), so that `train`
// starts without tokenizing. Under mpirun only rank 0 works.
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "parallel/runtime/logger.h"
#include "trainer/cli/commands.h"
#include "trainer/loop/data_factory.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::cli {

absl::Status RunPrepare(const Args& args, const parallel::World& world) {
  std::string path;
  std::vector<std::string> overrides;
  for (const std::string& arg : args) {
    if (absl::StartsWith(arg, "--")) {
      return absl::InvalidArgumentError(absl::StrCat(
          "fulcrum prepare: unknown flag ", arg,
          " (options are recipe keys: fulcrum prepare RECIPE.yaml key.path=value ...)"));
    }
    if (path.empty()) {
      path = arg;
    } else {
      overrides.push_back(arg);
    }
  }
  if (path.empty()) return absl::InvalidArgumentError("fulcrum prepare: missing RECIPE.yaml");
  FULCRUM_ASSIGN_OR_RETURN(recipe::Recipe recipe, recipe::LoadRecipe(path, overrides));
  recipe::MakePathsAbsolute(recipe);
  // The layout the recipe asks for: prepare runs without mpirun.
  const int64_t world_size = recipe.parallel.dp * recipe.parallel.tp * recipe.parallel.pp;
  FULCRUM_RETURN_IF_ERROR(recipe::ValidateRecipe(recipe, static_cast<int>(world_size)));
  if (!recipe::UsesTextData(recipe.data)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": data.format: pretokenized data needs no prepare (it is read as is)"));
  }
  if (!world.is_root()) return absl::OkStatus();
  const parallel::Logger logger(world.rank(), false);
  FULCRUM_ASSIGN_OR_RETURN(const loop::PreparedInfo info,
                           loop::EnsurePreparedData(recipe, logger, /*allow_build=*/true));
  logger.Info(info.rebuilt ? "prepared: " : "up to date: ", info.dir);
  return absl::OkStatus();
}

}  // namespace fulcrum::cli
