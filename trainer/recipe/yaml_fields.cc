#include "trainer/recipe/yaml_fields.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "core/check.h"
#include "core/status.h"
#include "trainer/recipe/did_you_mean.h"

namespace fulcrum::recipe {
namespace {

bool IsPrefixPath(const std::string& prefix, const std::string& path) {
  return path == prefix ||
         (path.size() > prefix.size() && path.compare(0, prefix.size(), prefix) == 0 &&
          path[prefix.size()] == '.');
}

// A quoted scalar ("3e-4", 'true') is a string in YAML, whatever it spells.
bool IsPlainScalar(const YAML::Node& node) { return node.IsScalar() && node.Tag() != "!"; }

bool ParseFiniteDouble(const std::string& text, double* out) {
  return absl::SimpleAtod(text, out) && std::isfinite(*out);
}

}  // namespace

void YamlOrigin::RecordOverride(const std::string& key_path, const std::string& override_text) {
  for (auto it = overrides_.begin(); it != overrides_.end();) {
    it = IsPrefixPath(key_path, it->first) ? overrides_.erase(it) : std::next(it);
  }
  overrides_[key_path] = override_text;
}

const std::string* YamlOrigin::OverrideFor(const std::string& key_path) const {
  const std::string* best = nullptr;
  size_t best_length = 0;
  for (const auto& [path, text] : overrides_) {
    if (IsPrefixPath(path, key_path) && (best == nullptr || path.size() > best_length)) {
      best = &text;
      best_length = path.size();
    }
  }
  return best;
}

std::string YamlOrigin::Where(const std::string& key_path, const YAML::Mark& mark) const {
  if (const std::string* text = OverrideFor(key_path)) return absl::StrCat("override ", *text);
  if (mark.is_null() || mark.line < 0) return source_;
  return absl::StrCat(source_, ":", mark.line + 1, ":", mark.column + 1);
}

absl::Status ApplyOverride(const std::string& override_text, YAML::Node& root, YamlOrigin& origin) {
  const std::string where = absl::StrCat("override ", override_text);
  const size_t eq = override_text.find('=');
  if (eq == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": expected key=value (e.g. optim.lr=3e-4)"));
  }
  const std::string key_path(absl::StripAsciiWhitespace(override_text.substr(0, eq)));
  const std::vector<std::string> keys = absl::StrSplit(key_path, '.');
  for (const std::string& key : keys) {
    if (key.empty() || absl::StrContains(key, ' ')) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": bad key path \"", key_path,
                                                     "\" (expected section.key, e.g. optim.lr)"));
    }
  }
  YAML::Node value;
  try {
    value = YAML::Load(override_text.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": value is not valid YAML: ", e.msg));
  }
  YAML::Node section = root;
  std::string path;
  for (size_t i = 0; i + 1 < keys.size(); ++i) {
    path = path.empty() ? keys[i] : absl::StrCat(path, ".", keys[i]);
    YAML::Node next = section[keys[i]];
    if (!next.IsDefined() || next.IsNull()) {
      // A key this override created: its errors (unknown key, wrong type) are the override's.
      if (!next.IsDefined()) origin.RecordOverride(path, override_text);
      section[keys[i]] = YAML::Node(YAML::NodeType::Map);
      next.reset(section[keys[i]]);
    } else if (!next.IsMap()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": ", path, " is not a section (it is ", DescribeNode(next), ")"));
    }
    section.reset(next);
  }
  section[keys.back()] = value;
  origin.RecordOverride(key_path, override_text);
  return absl::OkStatus();
}

std::string DescribeNode(const YAML::Node& node) {
  if (!node.IsDefined() || node.IsNull()) return "nothing";
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a map";
  const std::string& text = node.Scalar();
  double unused;
  if (IsPlainScalar(node) &&
      (ParseFiniteDouble(text, &unused) || text == "true" || text == "false")) {
    return text;
  }
  return absl::StrCat("\"", text, "\"");
}

absl::StatusOr<MapReader> MapReader::Open(const YamlOrigin* origin, const YAML::Node& node,
                                          const std::string& path) {
  MapReader reader(origin, path);
  if (!node.IsDefined() || node.IsNull()) return reader;
  if (!node.IsMap()) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin->Where(path, node.Mark()), ": ", path,
                     ": expected a section (a map of key: value), got ", DescribeNode(node)));
  }
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node key_node = it->first;
    if (!key_node.IsScalar()) {
      return absl::InvalidArgumentError(absl::StrCat(
          origin->Where(path, key_node.Mark()), ": ", path.empty() ? "top level" : path,
          ": keys must be names, got ", DescribeNode(key_node)));
    }
    for (const Entry& entry : reader.entries_) {
      if (entry.key == key_node.Scalar()) {
        return absl::InvalidArgumentError(
            absl::StrCat(origin->Where(reader.KeyPath(entry.key), key_node.Mark()),
                         ": duplicate key ", reader.KeyPath(entry.key)));
      }
    }
    reader.entries_.push_back(Entry{key_node.Scalar(), key_node, it->second});
  }
  return reader;
}

const MapReader::Entry* MapReader::Find(const std::string& key) {
  known_.push_back(key);
  for (const Entry& entry : entries_) {
    if (entry.key == key) return &entry;
  }
  return nullptr;
}

std::string MapReader::KeyPath(const std::string& key) const {
  return path_.empty() ? key : absl::StrCat(path_, ".", key);
}

absl::Status MapReader::TypeError(const Entry& entry, const std::string& what) const {
  const std::string key_path = KeyPath(entry.key);
  return absl::InvalidArgumentError(absl::StrCat(origin_->Where(key_path, entry.value.Mark()), ": ",
                                                 key_path, ": expected ", what, ", got ",
                                                 DescribeNode(entry.value)));
}

absl::Status MapReader::Read(const std::string& key, std::string* out) {
  const Entry* entry = Find(key);
  if (entry == nullptr) return absl::OkStatus();
  if (entry->value.IsNull()) {
    out->clear();  // "dir:" with nothing after it: the empty string.
  } else if (entry->value.IsScalar()) {
    *out = entry->value.Scalar();
  } else {
    return TypeError(*entry, "a string");
  }
  return absl::OkStatus();
}

absl::Status MapReader::Read(const std::string& key, int64_t* out) {
  const Entry* entry = Find(key);
  if (entry == nullptr) return absl::OkStatus();
  if (!IsPlainScalar(entry->value) || !absl::SimpleAtoi(entry->value.Scalar(), out)) {
    return TypeError(*entry, "an integer");
  }
  return absl::OkStatus();
}

absl::Status MapReader::Read(const std::string& key, double* out) {
  const Entry* entry = Find(key);
  if (entry == nullptr) return absl::OkStatus();
  if (!IsPlainScalar(entry->value) || !ParseFiniteDouble(entry->value.Scalar(), out)) {
    return TypeError(*entry, "a number");
  }
  return absl::OkStatus();
}

absl::Status MapReader::Read(const std::string& key, bool* out) {
  const Entry* entry = Find(key);
  if (entry == nullptr) return absl::OkStatus();
  const std::string text = IsPlainScalar(entry->value) ? entry->value.Scalar() : "";
  if (text != "true" && text != "false") return TypeError(*entry, "true or false");
  *out = text == "true";
  return absl::OkStatus();
}

absl::Status MapReader::Read(const std::string& key, std::vector<std::string>* out) {
  const Entry* entry = Find(key);
  if (entry == nullptr) return absl::OkStatus();
  if (!entry->value.IsSequence()) return TypeError(*entry, "a list (e.g. [q_proj, v_proj])");
  std::vector<std::string> items;
  for (const YAML::Node& item : entry->value) {
    if (!item.IsScalar()) {
      const std::string key_path = KeyPath(key);
      return absl::InvalidArgumentError(absl::StrCat(origin_->Where(key_path, item.Mark()), ": ",
                                                     key_path, ": expected a list of names, got ",
                                                     DescribeNode(item), " in the list"));
    }
    items.push_back(item.Scalar());
  }
  *out = std::move(items);
  return absl::OkStatus();
}

absl::Status MapReader::Read(const std::string& key, std::vector<int64_t>* out) {
  const Entry* entry = Find(key);
  if (entry == nullptr) return absl::OkStatus();
  const char* what = "a list of integers (e.g. [7, 8, 8, 9])";
  if (!entry->value.IsSequence()) return TypeError(*entry, what);
  std::vector<int64_t> items;
  for (const YAML::Node& item : entry->value) {
    int64_t number = 0;
    if (!IsPlainScalar(item) || !absl::SimpleAtoi(item.Scalar(), &number)) {
      const std::string key_path = KeyPath(key);
      return absl::InvalidArgumentError(absl::StrCat(origin_->Where(key_path, item.Mark()), ": ",
                                                     key_path, ": expected ", what, ", got ",
                                                     DescribeNode(item), " in the list"));
    }
    items.push_back(number);
  }
  *out = std::move(items);
  return absl::OkStatus();
}

absl::Status MapReader::ReadChecked(const std::string& key,
                                    const std::function<absl::Status(const std::string&)>& check,
                                    std::string* out) {
  std::string value = *out;
  FULCRUM_RETURN_IF_ERROR(Read(key, &value));
  const absl::Status status = check(value);
  if (!status.ok()) {
    const auto entry = std::find_if(entries_.begin(), entries_.end(),
                                    [&](const Entry& e) { return e.key == key; });
    FULCRUM_CHECK(entry != entries_.end(), "default of ", KeyPath(key), " is not allowed: ", value);
    const std::string key_path = KeyPath(key);
    return absl::Status(status.code(), absl::StrCat(origin_->Where(key_path, entry->value.Mark()),
                                                    ": ", key_path, ": ", status.message()));
  }
  *out = value;
  return absl::OkStatus();
}

absl::Status MapReader::ReadNumbers(const std::string& key, size_t count,
                                    std::vector<double>* out) {
  const Entry* entry = Find(key);
  if (entry == nullptr) return absl::OkStatus();
  const std::string what = absl::StrCat("a list of ", count, " numbers");
  if (!entry->value.IsSequence() || entry->value.size() != count) return TypeError(*entry, what);
  std::vector<double> numbers(count);
  for (size_t i = 0; i < count; ++i) {
    const YAML::Node item = entry->value[i];
    if (!IsPlainScalar(item) || !ParseFiniteDouble(item.Scalar(), &numbers[i])) {
      return TypeError(*entry, what);
    }
  }
  *out = std::move(numbers);
  return absl::OkStatus();
}

absl::Status MapReader::ReadEnum(const std::string& key, const std::vector<std::string>& allowed,
                                 std::string* out) {
  std::string value = *out;
  FULCRUM_RETURN_IF_ERROR(Read(key, &value));
  if (std::find(allowed.begin(), allowed.end(), value) == allowed.end()) {
    const auto entry = std::find_if(entries_.begin(), entries_.end(),
                                    [&](const Entry& e) { return e.key == key; });
    FULCRUM_CHECK(entry != entries_.end(), "default of ", KeyPath(key), " is not allowed: ", value);
    return TypeError(*entry, absl::StrCat("one of ", absl::StrJoin(allowed, " | ")));
  }
  *out = value;
  return absl::OkStatus();
}

absl::Status MapReader::Read(const std::string& key, std::map<std::string, std::string>* out) {
  const Entry* entry = Find(key);
  if (entry == nullptr || entry->value.IsNull()) return absl::OkStatus();
  if (!entry->value.IsMap()) return TypeError(*entry, "a map of names (e.g. {input: question})");
  std::map<std::string, std::string> items;
  for (auto it = entry->value.begin(); it != entry->value.end(); ++it) {
    if (!it->first.IsScalar() || !it->second.IsScalar()) {
      const std::string key_path = KeyPath(key);
      return absl::InvalidArgumentError(
          absl::StrCat(origin_->Where(key_path, it->first.Mark()), ": ", key_path,
                       ": expected name: name entries, got ", DescribeNode(it->second)));
    }
    items[it->first.Scalar()] = it->second.Scalar();
  }
  *out = std::move(items);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<MapReader>> MapReader::SectionList(const std::string& key) {
  const Entry* entry = Find(key);
  std::vector<MapReader> sections;
  if (entry == nullptr || entry->value.IsNull()) return sections;
  if (!entry->value.IsSequence()) {
    return TypeError(*entry, "a list of sections (e.g. [{path: a.jsonl, weight: 2}])");
  }
  for (size_t i = 0; i < entry->value.size(); ++i) {
    FULCRUM_ASSIGN_OR_RETURN(
        MapReader item, Open(origin_, entry->value[i], absl::StrCat(KeyPath(key), "[", i, "]")));
    sections.push_back(std::move(item));
  }
  return sections;
}

absl::StatusOr<MapReader> MapReader::Section(const std::string& key) {
  const Entry* entry = Find(key);
  return Open(origin_, entry == nullptr ? YAML::Node() : entry->value, KeyPath(key));
}

absl::Status MapReader::Finish() const {
  for (const Entry& entry : entries_) {
    if (std::find(known_.begin(), known_.end(), entry.key) != known_.end()) continue;
    const std::string key_path = KeyPath(entry.key);
    const std::string suggestion = DidYouMean(entry.key, known_);
    const std::string hint = suggestion.empty()
                                 ? absl::StrCat(" (known keys", path_.empty() ? "" : " of ", path_,
                                                ": ", absl::StrJoin(known_, ", "), ")")
                                 : absl::StrCat(" (did you mean ", KeyPath(suggestion), "?)");
    return absl::InvalidArgumentError(absl::StrCat(origin_->Where(key_path, entry.key_node.Mark()),
                                                   ": unknown key ", key_path, hint));
  }
  return absl::OkStatus();
}

}  // namespace fulcrum::recipe
