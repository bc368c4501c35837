// Typed, located reads from a yaml-cpp tree for the recipe parser:
//
//   YamlOrigin     where a key path's value came from (file:line:col or an override)
//   ApplyOverride  "a.b=value" -> sets the subtree at a.b
//   DescribeNode   a value as a message shows it ("fast" quoted, 8.5, a list, ...)
//   MapReader      reads the fields of one section, rejects unknown keys
//
// NOTE: internal to trainer/recipe; the public API is recipe.h.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fulcrum::recipe {

// Where the values of a recipe's YAML tree came from: the recipe file, or an
// override "a.b=v" that replaced the subtree at key path "a.b".
class YamlOrigin {
 public:
  explicit YamlOrigin(std::string source) : source_(std::move(source)) {}

  const std::string& source() const { return source_; }

  // Records that `override_text` set the subtree at `key_path`; records for
  // paths below it are dropped since their values were replaced.
  void RecordOverride(const std::string& key_path, const std::string& override_text);

  // The override that set `key_path` or a section above it; nullptr if none.
  const std::string* OverrideFor(const std::string& key_path) const;

  // "override a.b=v" for an overridden key path, else "file:line:col"
  // (1-based) from `mark`, else the file alone when the mark is unknown.
  std::string Where(const std::string& key_path, const YAML::Mark& mark) const;

 private:
  std::string source_;
  std::map<std::string, std::string> overrides_;  // key path -> "a.b=v"
};

// Applies one "a.b=value" override to `root` (a map): the value is parsed as
// YAML, missing sections on the way are created. Records it in `origin`.
absl::Status ApplyOverride(const std::string& override_text, YAML::Node& root, YamlOrigin& origin);

// A value as messages show it: "fast" (quoted), 8.5, true, a list, a map, nothing.
std::string DescribeNode(const YAML::Node& node);

// Reads the fields of one YAML map (a recipe section). Every Read* names a
// known key, present or not (absent keys keep the caller's default); Finish
// then rejects the keys nobody asked for, suggesting the closest known key.
class MapReader {
 public:
  // `node`: the section (a map; null or undefined reads as empty). `path`: its
  // key path ("" for the top level), used in messages.
  static absl::StatusOr<MapReader> Open(const YamlOrigin* origin, const YAML::Node& node,
                                        const std::string& path);

  absl::Status Read(const std::string& key, std::string* out);  // any scalar
  absl::Status Read(const std::string& key, int64_t* out);      // integer only
  absl::Status Read(const std::string& key, double* out);       // integer or float
  absl::Status Read(const std::string& key, bool* out);         // true | false
  absl::Status Read(const std::string& key, std::vector<std::string>* out);
  // A list of integers (e.g. pp_layers: [7, 8, 8, 9]; [] reads as empty).
  absl::Status Read(const std::string& key, std::vector<int64_t>* out);
  // A list of exactly `count` numbers (e.g. betas: [0.9, 0.95]).
  absl::Status ReadNumbers(const std::string& key, size_t count, std::vector<double>* out);
  // A string that must be one of `allowed`.
  absl::Status ReadEnum(const std::string& key, const std::vector<std::string>& allowed,
                        std::string* out);
  // A string accepted by `check` (e.g. a parser of the value); its message
  // is reported at the value's location: "<where>: <key path>: <message>".
  absl::Status ReadChecked(const std::string& key,
                           const std::function<absl::Status(const std::string&)>& check,
                           std::string* out);
  // A map of names to names (e.g. fields: {instruction: prompt}); absent keeps `out`.
  absl::Status Read(const std::string& key, std::map<std::string, std::string>* out);
  // A nested section (absent: empty).
  absl::StatusOr<MapReader> Section(const std::string& key);
  // A list of sections (absent: empty), each read as `key[i]`.
  absl::StatusOr<std::vector<MapReader>> SectionList(const std::string& key);

  // Unknown keys -> "file:l:c: unknown key optim.lrr (did you mean optim.lr?)".
  absl::Status Finish() const;

 private:
  struct Entry {
    std::string key;
    YAML::Node key_node;
    YAML::Node value;
  };

  MapReader(const YamlOrigin* origin, std::string path) : origin_(origin), path_(std::move(path)) {}
  // Marks `key` known; returns its entry or nullptr when absent.
  const Entry* Find(const std::string& key);
  std::string KeyPath(const std::string& key) const;
  // "<where>: <key path>: expected <what>, got <value>".
  absl::Status TypeError(const Entry& entry, const std::string& what) const;

  const YamlOrigin* origin_;
  std::string path_;
  std::vector<Entry> entries_;
  std::vector<std::string> known_;
};

}  // namespace fulcrum::recipe
