// One function per `fulcrum` subcommand. Each receives the words after the
// subcommand and the World; returns the process exit code. User errors come
// back as absl::Status and are reported once, by rank 0, by the dispatcher.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "parallel/runtime/world.h"

namespace fulcrum::cli {

using Args = std::vector<std::string>;

absl::Status RunTrain(const Args& args, const parallel::World& world);
absl::Status RunValidate(const Args& args, const parallel::World& world);
absl::Status RunInit(const Args& args, const parallel::World& world);
absl::Status RunScore(const Args& args, const parallel::World& world);
absl::Status RunExport(const Args& args, const parallel::World& world);
absl::Status RunTokenize(const Args& args, const parallel::World& world);
absl::Status RunPrepare(const Args& args, const parallel::World& world);
absl::Status RunGenerate(const Args& args, const parallel::World& world);
absl::Status RunPlan(const Args& args, const parallel::World& world);

}  // namespace fulcrum::cli
