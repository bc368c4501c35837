// fulcrum init --config config.json --out DIR [--seed N]
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/flags.h"
#include "trainer/models/hf_loading.h"

namespace fulcrum::cli {

absl::Status RunInit(const Args& args, const parallel::World& world) {
  FlagSpec spec;
  spec.valued = {"config", "out", "seed"};
  spec.required = {"config", "out"};
  FULCRUM_ASSIGN_OR_RETURN(const ParsedFlags flags, ParseFlags("init", args, spec));
  uint64_t seed = 1234;
  if (!flags.Get("seed").empty() && !absl::SimpleAtoi(flags.Get("seed"), &seed)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "fulcrum init: --seed: expected a non-negative integer, got '", flags.Get("seed"), "'"));
  }
  if (!world.is_root()) return absl::OkStatus();
  return models::WriteRandomModel(flags.Get("config"), flags.Get("out"), seed);
}

}  // namespace fulcrum::cli
