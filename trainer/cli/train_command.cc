// fulcrum train / fulcrum validate.
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "core/status.h"
#include "parallel/runtime/logger.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/recipe_checks.h"
#include "trainer/loop/trainer.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::cli {
namespace {

struct RecipeArgs {
  std::string path;
  std::vector<std::string> overrides;
};

absl::StatusOr<RecipeArgs> SplitRecipeArgs(const std::string& command, const Args& args) {
  RecipeArgs out;
  for (const std::string& arg : args) {
    if (absl::StartsWith(arg, "--")) {
      return absl::InvalidArgumentError(absl::StrCat("fulcrum ", command, ": unknown flag ", arg,
                                                     " (options are recipe keys: fulcrum ", command,
                                                     " RECIPE.yaml key.path=value ...)"));
    }
    if (out.path.empty()) {
      out.path = arg;
    } else {
      out.overrides.push_back(arg);
    }
  }
  if (out.path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("fulcrum ", command, ": missing RECIPE.yaml"));
  }
  return out;
}

}  // namespace

absl::Status RunTrain(const Args& args, const parallel::World& world) {
  FULCRUM_ASSIGN_OR_RETURN(const RecipeArgs recipe_args, SplitRecipeArgs("train", args));
  FULCRUM_ASSIGN_OR_RETURN(recipe::Recipe recipe,
                           recipe::LoadRecipe(recipe_args.path, recipe_args.overrides));
  recipe::MakePathsAbsolute(recipe);
  FULCRUM_RETURN_IF_ERROR(recipe::ValidateRecipe(recipe, world.size()));
  const parallel::Logger logger(world.rank(), recipe.logging.all_ranks);
  FULCRUM_ASSIGN_OR_RETURN(auto trainer, loop::Trainer::Create(recipe, world, logger));
  FULCRUM_ASSIGN_OR_RETURN(const loop::TrainingSummary summary, trainer->Run());
  if (!summary.losses.empty()) {
    logger.Info("done: steps ", summary.first_step + 1, "..", summary.last_step, ", loss ",
                summary.losses.front(), " -> ", summary.losses.back());
  }
  return absl::OkStatus();
}

absl::Status RunValidate(const Args& args, const parallel::World& world) {
  FULCRUM_ASSIGN_OR_RETURN(const RecipeArgs recipe_args, SplitRecipeArgs("validate", args));
  FULCRUM_ASSIGN_OR_RETURN(recipe::Recipe recipe,
                           recipe::LoadRecipe(recipe_args.path, recipe_args.overrides));
  // Without mpirun, validate the layout the recipe asks for.
  const int64_t world_size = world.size() > 1
                                 ? world.size()
                                 : recipe.parallel.dp * recipe.parallel.tp * recipe.parallel.pp;
  FULCRUM_RETURN_IF_ERROR(recipe::ValidateRecipe(recipe, static_cast<int>(world_size)));
  const parallel::Logger logger(world.rank(), false);
  if (world.is_root()) {
    for (const std::string& warning : recipe::RecipeWarnings(recipe)) logger.Warn(warning);
  }
  FULCRUM_ASSIGN_OR_RETURN(const RecipeReport report, CheckRecipeResources(recipe));
  logger.Info(recipe_args.path, ": OK\n", absl::StripTrailingAsciiWhitespace(report.summary));
  return absl::OkStatus();
}

}  // namespace fulcrum::cli
