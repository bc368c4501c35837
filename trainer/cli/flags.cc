#include "trainer/cli/flags.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace fulcrum::cli {

std::string ParsedFlags::Get(const std::string& name, const std::string& fallback) const {
  auto it = values.find(name);
  return it == values.end() ? fallback : it->second;
}

absl::StatusOr<ParsedFlags> ParseFlags(const std::string& command,
                                       const std::vector<std::string>& args, const FlagSpec& spec) {
  ParsedFlags parsed;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (!absl::StartsWith(arg, "--")) {
      parsed.positional.push_back(arg);
      continue;
    }
    std::string name = arg.substr(2);
    std::string value;
    bool has_inline_value = false;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_inline_value = true;
    }
    if (spec.switches.count(name)) {
      parsed.switches.insert(name);
      continue;
    }
    if (!spec.valued.count(name)) {
      std::vector<std::string> known;
      for (const auto& v : spec.valued) known.push_back("--" + v);
      for (const auto& s : spec.switches) known.push_back("--" + s);
      return absl::InvalidArgumentError(absl::StrCat("fulcrum ", command, ": unknown flag --", name,
                                                     " (known: ", absl::StrJoin(known, ", "), ")"));
    }
    if (!has_inline_value) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("fulcrum ", command, ": --", name, " needs a value"));
      }
      value = args[++i];
    }
    parsed.values[name] = value;
  }
  for (const auto& name : spec.required) {
    if (!parsed.values.count(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("fulcrum ", command, ": missing required flag --", name));
    }
  }
  return parsed;
}

}  // namespace fulcrum::cli
