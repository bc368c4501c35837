#include "data/tokenizer/pre_tokenizer.h"

#include <utility>

#include "absl/status/status.h"
#include "data/tokenizer/byte_level_alphabet.h"
#include "data/tokenizer/regex_split.h"
#include "data/tokenizer/unicode_util.h"

namespace fulcrum::data {
namespace {

using internal::ApplyBehavior;
using internal::Span;
using internal::SplitBehavior;
using internal::SplitPattern;

// GPT-2's pre-split regex (the reference's ByteLevel use_regex).
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
// The reference's Whitespace pre-tokenizer is `\w+|[^\w\s]+` in Oniguruma,
// whose Unicode \w is Letter | Mark | Decimal_Number | Connector_Punctuation
// (PCRE2's UCP \w lacks marks), so the class is spelled out.
constexpr char kWhitespacePattern[] = R"([\p{L}\p{M}\p{Nd}\p{Pc}]+|[^\p{L}\p{M}\p{Nd}\p{Pc}\s]+)";

// Splits each piece of *pieces with `pattern` + `behavior`, dropping empties.
void SplitPieces(const SplitPattern& pattern, SplitBehavior behavior, bool invert, Pieces* pieces) {
  Pieces out;
  out.reserve(pieces->size() * 2);
  std::vector<Span> spans;
  for (std::string& piece : *pieces) {
    if (piece.empty()) continue;
    pattern.FindMatches(piece, &spans);
    ApplyBehavior(behavior, invert, &spans);
    if (spans.size() == 1 && spans[0].start == 0 && spans[0].end == piece.size()) {
      out.push_back(std::move(piece));
      continue;
    }
    for (const Span& span : spans) out.emplace_back(piece, span.start, span.end - span.start);
  }
  *pieces = std::move(out);
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<SplitPattern> pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void Split(Pieces* pieces, bool /*segment_at_text_start*/) const override {
    SplitPieces(*pattern_, behavior_, invert_, pieces);
  }

 private:
  std::unique_ptr<SplitPattern> pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<SplitPattern> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}

  void Split(Pieces* pieces, bool /*segment_at_text_start*/) const override {
    // As the reference: every piece not starting with ' ' gets one.
    if (add_prefix_space_) {
      for (std::string& piece : *pieces) {
        if (!piece.empty() && piece[0] != ' ') piece.insert(piece.begin(), ' ');
      }
    }
    if (regex_ != nullptr) SplitPieces(*regex_, SplitBehavior::kIsolated, false, pieces);
    const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::Get();
    std::string mapped;
    for (std::string& piece : *pieces) {
      mapped.clear();
      alphabet.EncodeBytes(piece, &mapped);
      piece.swap(mapped);
    }
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<SplitPattern> regex_;  // null: use_regex = false
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(char32_t replacement, PrependScheme scheme, bool split)
      : scheme_(scheme), split_(split) {
    internal::AppendUtf8(replacement, &replacement_);
    pattern_ = internal::LiteralPattern(replacement_);
  }

  void Split(Pieces* pieces, bool segment_at_text_start) const override {
    std::string rewritten;
    for (size_t i = 0; i < pieces->size(); ++i) {
      std::string& piece = (*pieces)[i];
      rewritten.clear();
      for (char c : piece) {
        if (c == ' ') {
          rewritten += replacement_;
        } else {
          rewritten.push_back(c);
        }
      }
      // "first": only the piece at offset 0 of the original text (the first
      // piece of a segment that starts the text).
      const bool prepend = scheme_ == PrependScheme::kAlways ||
                           (scheme_ == PrependScheme::kFirst && i == 0 && segment_at_text_start);
      if (prepend && rewritten.compare(0, replacement_.size(), replacement_) != 0) {
        rewritten.insert(0, replacement_);
      }
      piece.swap(rewritten);
    }
    // Each replacement character is its own match (the reference splits on a
    // char), merged into the text after it.
    if (split_) SplitPieces(*pattern_, SplitBehavior::kMergedWithNext, false, pieces);
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
  std::unique_ptr<SplitPattern> pattern_;
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void Split(Pieces* pieces, bool segment_at_text_start) const override {
    for (const auto& step : steps_) step->Split(pieces, segment_at_text_start);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

absl::Status Error(const std::string& key_path, const std::string& message) {
  return absl::InvalidArgumentError(key_path + ": " + message);
}

// Reads an optional boolean `key` of `json` (default when absent or null).
absl::StatusOr<bool> GetBool(const nlohmann::json& json, const char* key, bool default_value,
                             const std::string& key_path) {
  const auto it = json.find(key);
  if (it == json.end() || it->is_null()) return default_value;
  if (!it->is_boolean()) return Error(key_path + "." + key, "expected a boolean");
  return it->get<bool>();
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParseSplit(const nlohmann::json& json,
                                                         const std::string& key_path) {
  const auto pattern_it = json.find("pattern");
  if (pattern_it == json.end() || !pattern_it->is_object()) {
    return Error(key_path + ".pattern", "expected {\"String\": ...} or {\"Regex\": ...}");
  }
  std::unique_ptr<SplitPattern> pattern;
  if (pattern_it->contains("String") && (*pattern_it)["String"].is_string()) {
    pattern = internal::LiteralPattern((*pattern_it)["String"].get<std::string>());
  } else if (pattern_it->contains("Regex") && (*pattern_it)["Regex"].is_string()) {
    auto compiled = internal::CompileRegexPattern((*pattern_it)["Regex"].get<std::string>());
    if (!compiled.ok())
      return Error(key_path + ".pattern.Regex", std::string(compiled.status().message()));
    pattern = std::move(*compiled);
  } else {
    return Error(key_path + ".pattern", "expected {\"String\": ...} or {\"Regex\": ...}");
  }
  const auto behavior_it = json.find("behavior");
  if (behavior_it == json.end() || !behavior_it->is_string()) {
    return Error(key_path + ".behavior", "expected a string");
  }
  auto behavior = internal::ParseSplitBehavior(behavior_it->get<std::string>());
  if (!behavior.ok())
    return Error(key_path + ".behavior", std::string(behavior.status().message()));
  auto invert = GetBool(json, "invert", false, key_path);
  if (!invert.ok()) return invert.status();
  return std::unique_ptr<PreTokenizer>(
      new SplitPreTokenizer(std::move(pattern), *behavior, *invert));
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParseByteLevel(const nlohmann::json& json,
                                                             const std::string& key_path) {
  auto add_prefix_space = GetBool(json, "add_prefix_space", true, key_path);
  if (!add_prefix_space.ok()) return add_prefix_space.status();
  auto use_regex = GetBool(json, "use_regex", true, key_path);
  if (!use_regex.ok()) return use_regex.status();
  std::unique_ptr<SplitPattern> regex;
  if (*use_regex) {
    auto compiled = internal::CompileRegexPattern(kGpt2Pattern);
    if (!compiled.ok()) return Error(key_path, std::string(compiled.status().message()));
    regex = std::move(*compiled);
  }
  return std::unique_ptr<PreTokenizer>(
      new ByteLevelPreTokenizer(*add_prefix_space, std::move(regex)));
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParseMetaspace(const nlohmann::json& json,
                                                             const std::string& key_path) {
  char32_t replacement = 0x2581;  // '▁'
  if (json.contains("replacement")) {
    const auto& value = json["replacement"];
    std::string text = value.is_string() ? value.get<std::string>() : std::string();
    size_t pos = 0;
    if (text.empty() || (replacement = internal::NextCodePoint(text, &pos), pos != text.size())) {
      return Error(key_path + ".replacement", "expected a single character");
    }
  }
  // Older files have add_prefix_space instead of prepend_scheme.
  auto add_prefix_space = GetBool(json, "add_prefix_space", true, key_path);
  if (!add_prefix_space.ok()) return add_prefix_space.status();
  PrependScheme scheme = *add_prefix_space ? PrependScheme::kAlways : PrependScheme::kNever;
  const auto scheme_it = json.find("prepend_scheme");
  if (scheme_it != json.end() && !scheme_it->is_null()) {
    const std::string name = scheme_it->is_string() ? scheme_it->get<std::string>() : "";
    if (name == "always") {
      scheme = PrependScheme::kAlways;
    } else if (name == "first") {
      scheme = PrependScheme::kFirst;
    } else if (name == "never") {
      scheme = PrependScheme::kNever;
    } else {
      return Error(key_path + ".prepend_scheme", "expected \"always\", \"first\" or \"never\"");
    }
  }
  auto split = GetBool(json, "split", true, key_path);
  if (!split.ok()) return split.status();
  return std::unique_ptr<PreTokenizer>(new MetaspacePreTokenizer(replacement, scheme, *split));
}

std::unique_ptr<PreTokenizer> PredicateSplit(bool (*predicate)(char32_t), SplitBehavior behavior) {
  return std::make_unique<SplitPreTokenizer>(internal::CharPredicatePattern(predicate), behavior,
                                             false);
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParseSequence(const nlohmann::json& json,
                                                            const std::string& key_path) {
  const auto it = json.find("pretokenizers");
  if (it == json.end() || !it->is_array()) {
    return Error(key_path + ".pretokenizers", "expected an array");
  }
  std::vector<std::unique_ptr<PreTokenizer>> steps;
  for (size_t i = 0; i < it->size(); ++i) {
    auto step = ParsePreTokenizer((*it)[i], key_path + ".pretokenizers[" + std::to_string(i) + "]");
    if (!step.ok()) return step.status();
    if (*step != nullptr) steps.push_back(std::move(*step));
  }
  return std::unique_ptr<PreTokenizer>(new SequencePreTokenizer(std::move(steps)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const nlohmann::json& json,
                                                                const std::string& key_path) {
  if (json.is_null()) return std::unique_ptr<PreTokenizer>();
  if (!json.is_object() || !json.contains("type") || !json["type"].is_string()) {
    return Error(key_path, "expected an object with a string \"type\"");
  }
  const std::string type = json["type"].get<std::string>();
  try {
    if (type == "Split") return ParseSplit(json, key_path);
    if (type == "ByteLevel") return ParseByteLevel(json, key_path);
    if (type == "Metaspace") return ParseMetaspace(json, key_path);
    if (type == "Sequence") return ParseSequence(json, key_path);
    if (type == "Whitespace") {
      auto regex = internal::CompileRegexPattern(kWhitespacePattern);
      if (!regex.ok()) return Error(key_path, std::string(regex.status().message()));
      // The reference splits on Invert(regex) with Removed: keeps the matches.
      return std::unique_ptr<PreTokenizer>(
          new SplitPreTokenizer(std::move(*regex), SplitBehavior::kRemoved, true));
    }
    if (type == "WhitespaceSplit") {
      return PredicateSplit(&internal::IsWhitespace, SplitBehavior::kRemoved);
    }
    if (type == "Digits") {
      auto individual = GetBool(json, "individual_digits", false, key_path);
      if (!individual.ok()) return individual.status();
      return PredicateSplit(&internal::IsNumeric,
                            *individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous);
    }
    if (type == "Punctuation") {
      SplitBehavior behavior = SplitBehavior::kIsolated;
      if (json.contains("behavior") && json["behavior"].is_string()) {
        auto parsed = internal::ParseSplitBehavior(json["behavior"].get<std::string>());
        if (!parsed.ok())
          return Error(key_path + ".behavior", std::string(parsed.status().message()));
        behavior = *parsed;
      }
      return PredicateSplit(&internal::IsPunctuation, behavior);
    }
  } catch (const nlohmann::json::exception& e) {
    return Error(key_path, e.what());
  }
  return Error(key_path, "not supported yet: pre_tokenizer type " + type);
}

}  // namespace fulcrum::data
