#include "tests/test_support.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>

#include "core/check.h"
#include "parallel/runtime/mpirun.h"
#include "parallel/runtime/world.h"

namespace fulcrum::testing {

std::string FixturesDir() { return FULCRUM_FIXTURES_DIR; }
std::string SourceDir() { return FULCRUM_SOURCE_DIR; }
std::string FulcrumBinary() { return FULCRUM_BINARY; }

std::string ScratchDirPath() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info ? std::string(info->test_suite_name()) + "." + info->name() : "global";
  for (char& c : name) {
    if (c == '/') c = '_';
  }
  return (std::filesystem::path(FULCRUM_TEST_TMP) / name).string();
}

std::string ScratchDir() {
  const std::string dir = ScratchDirPath();
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

const parallel::World& MpiTestWorld() {
  static const parallel::World* const world = [] {
    absl::StatusOr<std::unique_ptr<parallel::World>> created =
        parallel::World::Init(nullptr, nullptr);
    FULCRUM_CHECK(created.ok(), "World::Init: ", created.status().ToString());
    return created->release();
  }();
  return *world;
}

CommandResult RunCommand(const std::string& command) {
  CommandResult result;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return result;
  std::array<char, 4096> buffer;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) {
    result.output.append(buffer.data(), n);
  }
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

CommandResult RunFulcrum(const std::string& args, int ranks) {
  std::string command = FulcrumBinary() + " " + args;
  if (ranks > 1) command = parallel::MpirunCommand(ranks) + " " + command;
  return RunCommand("OMP_NUM_THREADS=1 " + command);
}

std::string NpmDir() { return FULCRUM_NPM_DIR; }

std::string NpmUnavailableReason() {
  const std::filesystem::path dir(NpmDir());
  if (std::filesystem::exists(dir / "UNAVAILABLE")) {
    const std::string reason = ReadFile((dir / "UNAVAILABLE").string());
    return reason.empty() ? "unknown reason" : reason;
  }
  if (std::filesystem::exists(dir / "READY")) return "";
  // Run outside ctest (which installs them first, as test npm_test_deps).
  const CommandResult install =
      RunCommand(SourceDir() + "/scripts/npm_test_deps.sh " + dir.string());
  if (std::filesystem::exists(dir / "READY")) return "";
  if (std::filesystem::exists(dir / "UNAVAILABLE")) return NpmUnavailableReason();
  ADD_FAILURE() << "scripts/npm_test_deps.sh failed:\n" << install.output;
  return "installation failed";
}

CommandResult RunNode(const std::string& script_and_args) {
  return RunCommand("NODE_PATH=" + NpmDir() + "/node_modules node " + script_and_args);
}

void WriteFile(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream out(path, std::ios::binary);
  out << text;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace fulcrum::testing
