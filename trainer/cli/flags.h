// Command-line flags of the subcommands: `--name value` and `--switch`.
// Each subcommand declares its flags; anything else is an error that names
// the flag and lists the known ones.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace fulcrum::cli {

struct FlagSpec {
  std::set<std::string> valued;    // --name VALUE
  std::set<std::string> switches;  // --name
  std::set<std::string> required;  // among valued
};

struct ParsedFlags {
  std::map<std::string, std::string> values;
  std::set<std::string> switches;
  std::vector<std::string> positional;

  std::string Get(const std::string& name, const std::string& fallback = "") const;
  bool Has(const std::string& name) const { return switches.count(name) > 0; }
};

// args: the words after the subcommand.
absl::StatusOr<ParsedFlags> ParseFlags(const std::string& command,
                                       const std::vector<std::string>& args, const FlagSpec& spec);

}  // namespace fulcrum::cli
