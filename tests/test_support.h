// Helpers shared by tests: paths to the fixtures and the binary, a scratch
// directory per test, running the fulcrum binary (optionally under mpirun).
#pragma once

#include <string>

namespace fulcrum::testing {

// ../shared/fixtures (read-only).
std::string FixturesDir();
// Absolute path of the repository root.
std::string SourceDir();
// Path of the built `fulcrum` binary.
std::string FulcrumBinary();
// A fresh, empty directory under the build tree named after the current test.
std::string ScratchDir();

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};
// Runs a shell command, capturing its output.
CommandResult RunCommand(const std::string& command);
// Runs `fulcrum ARGS` on `ranks` ranks (1: without mpirun).
CommandResult RunFulcrum(const std::string& args, int ranks = 1);

void WriteFile(const std::string& path, const std::string& text);
std::string ReadFile(const std::string& path);

}  // namespace fulcrum::testing
