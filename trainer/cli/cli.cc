#include "trainer/cli/cli.h"

#include <cstdio>
#include <exception>
#include <functional>
#include <map>
#include <string>

#include "absl/strings/str_split.h"
#include "trainer/cli/commands.h"

namespace fulcrum::cli {
namespace {

constexpr char kUsage[] =
    "usage:\n"
    "  fulcrum train RECIPE.yaml [key.path=value ...]\n"
    "  fulcrum validate RECIPE.yaml [key.path=value ...]\n"
    "  fulcrum prepare RECIPE.yaml [key.path=value ...]   (tokenize text data into the cache)\n"
    "  fulcrum plan RECIPE.yaml [key.path=value ...] [--gpus N --gpus-per-node G "
    "--gpu-memory 80GiB --gpu-tflops 989 --intra-node-gbps 450 --inter-node-gbps 50 "
    "--efficiency 0.5 --memory-gbps 3350 --collective-latency-us 20 --moe-row-us 0] "
    "[--search [--top 10]]\n"
    "  fulcrum init --config config.json --out DIR [--seed N]\n"
    "  fulcrum score --model DIR [--adapter DIR] --batch IN.safetensors --out OUT.safetensors "
    "[--grads]\n"
    "  fulcrum export --checkpoint CKPT --format hf|merged|peft --out DIR [--adapter DIR] "
    "[--dtype auto|fp32|bf16] [--max-shard-size BYTES]\n"
    "  fulcrum tokenize --tokenizer PATH [--no-special]  (JSONL {\"text\": ...} on stdin)\n"
    "  fulcrum generate --model DIR [--adapter DIR] (--prompt TEXT | --chat FILE.json) "
    "[--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]\n";

using Command = std::function<absl::Status(const Args&, const parallel::World&)>;

const std::map<std::string, Command>& Commands() {
  static const std::map<std::string, Command> kCommands = {
      {"train", RunTrain},     {"validate", RunValidate}, {"init", RunInit},
      {"score", RunScore},     {"export", RunExport},     {"tokenize", RunTokenize},
      {"prepare", RunPrepare}, {"generate", RunGenerate}, {"plan", RunPlan}};
  return kCommands;
}

}  // namespace

int Main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string name = argv[1];
  auto command = Commands().find(name);
  if (command == Commands().end()) {
    std::fprintf(stderr, "fulcrum: unknown command '%s'\n%s", name.c_str(), kUsage);
    return 2;
  }
  auto world = parallel::World::Init(&argc, &argv);
  if (!world.ok()) {
    std::fprintf(stderr, "fulcrum: %s\n", std::string(world.status().message()).c_str());
    return 1;
  }
  torch::set_num_threads((*world)->CpuThreadsPerRank());
  const Args args(argv + 2, argv + argc);
  absl::Status status;
  try {
    status = command->second(args, **world);
  } catch (const std::exception& e) {
    // LibTorch reports some misuse (a shape a check missed) by exception: it
    // is still a message and an exit code, never a crash.
    status = absl::InternalError(std::string("unexpected error: ") + e.what());
  }
  status = (*world)->AgreeOn(status);
  if (!status.ok()) {
    if ((*world)->is_root()) {
      // Validation reports every problem, one per line; each line prefixed.
      for (absl::string_view line : absl::StrSplit(status.message(), '\n')) {
        std::fprintf(stderr, "[fulcrum r0] error: %s\n", std::string(line).c_str());
      }
      std::fflush(stderr);
    }
    return 1;
  }
  return 0;
}

}  // namespace fulcrum::cli
