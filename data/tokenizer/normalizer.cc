#include "data/tokenizer/normalizer.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>

#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "data/tokenizer/regex_split.h"
#include "data/tokenizer/unicode_util.h"

namespace fulcrum::data {
namespace {

bool IsAscii(const std::string& text) {
  for (char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

enum class UnicodeForm { kNfc, kNfd, kNfkc, kNfkd };

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(const icu::Normalizer2* icu) : icu_(icu) {}
  void Normalize(std::string* text) const override {
    // ASCII is invariant under all four forms.
    if (IsAscii(*text)) return;
    UErrorCode status = U_ZERO_ERROR;
    const icu::StringPiece source(text->data(), static_cast<int32_t>(text->size()));
    if (icu_->isNormalizedUTF8(source, status) && U_SUCCESS(status)) return;
    status = U_ZERO_ERROR;
    std::string out;
    out.reserve(text->size() + text->size() / 4);
    icu::StringByteSink<std::string> sink(&out);
    icu_->normalizeUTF8(0, source, sink, nullptr, status);
    if (U_SUCCESS(status)) text->swap(out);
  }

 private:
  const icu::Normalizer2* icu_;  // owned by ICU, process lifetime
};

// Rust's char::to_lowercase per character (no context, unlike ICU's
// u_strToLower which treats final sigma specially).
class LowercaseNormalizer : public Normalizer {
 public:
  void Normalize(std::string* text) const override {
    bool ascii = true;
    for (char& c : *text) {
      if (static_cast<unsigned char>(c) >= 0x80) {
        ascii = false;
      } else if (c >= 'A' && c <= 'Z') {
        c = static_cast<char>(c + ('a' - 'A'));
      }
    }
    if (ascii) return;
    std::string out;
    out.reserve(text->size());
    size_t pos = 0;
    while (pos < text->size()) {
      const char32_t c = internal::NextCodePoint(*text, &pos);
      if (c == 0x130) {  // the one unconditional multi-character mapping
        out += "i\xCC\x87";
        continue;
      }
      internal::AppendUtf8(static_cast<char32_t>(u_tolower(static_cast<UChar32>(c))), &out);
    }
    text->swap(out);
  }
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void Normalize(std::string* text) const override {
    size_t end = text->size();
    if (right_) {
      while (end > 0) {
        size_t pos = end;
        if (!internal::IsWhitespace(internal::PrevCodePoint(*text, &pos))) break;
        end = pos;
      }
    }
    size_t begin = 0;
    if (left_) {
      while (begin < end) {
        size_t pos = begin;
        if (!internal::IsWhitespace(internal::NextCodePoint(*text, &pos))) break;
        begin = pos;
      }
    }
    if (begin != 0 || end != text->size()) *text = text->substr(begin, end - begin);
  }

 private:
  bool left_;
  bool right_;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void Normalize(std::string* text) const override {
    if (!text->empty()) text->insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(std::unique_ptr<internal::SplitPattern> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void Normalize(std::string* text) const override {
    if (text->empty()) return;
    std::vector<internal::Span> spans;
    pattern_->FindMatches(*text, &spans);
    if (spans.size() == 1 && !spans[0].is_match) return;
    std::string out;
    out.reserve(text->size() + text->size() / 2);
    for (const internal::Span& span : spans) {
      if (span.is_match) {
        out += content_;
      } else {
        out.append(*text, span.start, span.end - span.start);
      }
    }
    text->swap(out);
  }

 private:
  std::unique_ptr<internal::SplitPattern> pattern_;
  std::string content_;
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  void Normalize(std::string* text) const override {
    for (const auto& step : steps_) step->Normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

absl::Status Error(const std::string& key_path, const std::string& message) {
  return absl::InvalidArgumentError(key_path + ": " + message);
}

absl::StatusOr<std::unique_ptr<Normalizer>> ParseUnicode(UnicodeForm form,
                                                         const std::string& key_path) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* icu = nullptr;
  switch (form) {
    case UnicodeForm::kNfc:
      icu = icu::Normalizer2::getNFCInstance(status);
      break;
    case UnicodeForm::kNfd:
      icu = icu::Normalizer2::getNFDInstance(status);
      break;
    case UnicodeForm::kNfkc:
      icu = icu::Normalizer2::getNFKCInstance(status);
      break;
    case UnicodeForm::kNfkd:
      icu = icu::Normalizer2::getNFKDInstance(status);
      break;
  }
  if (U_FAILURE(status) || icu == nullptr) {
    return Error(key_path, std::string("ICU normalizer unavailable: ") + u_errorName(status));
  }
  return std::unique_ptr<Normalizer>(new UnicodeNormalizer(icu));
}

absl::StatusOr<std::unique_ptr<Normalizer>> ParseReplace(const nlohmann::json& json,
                                                         const std::string& key_path) {
  if (!json.contains("content") || !json["content"].is_string()) {
    return Error(key_path + ".content", "expected a string");
  }
  const auto& pattern = json.contains("pattern") ? json["pattern"] : nlohmann::json();
  std::unique_ptr<internal::SplitPattern> compiled;
  if (pattern.is_object() && pattern.contains("String") && pattern["String"].is_string()) {
    compiled = internal::LiteralPattern(pattern["String"].get<std::string>());
  } else if (pattern.is_object() && pattern.contains("Regex") && pattern["Regex"].is_string()) {
    auto regex = internal::CompileRegexPattern(pattern["Regex"].get<std::string>());
    if (!regex.ok())
      return Error(key_path + ".pattern.Regex", std::string(regex.status().message()));
    compiled = std::move(*regex);
  } else {
    return Error(key_path + ".pattern", "expected {\"String\": ...} or {\"Regex\": ...}");
  }
  return std::unique_ptr<Normalizer>(
      new ReplaceNormalizer(std::move(compiled), json["content"].get<std::string>()));
}

absl::StatusOr<std::unique_ptr<Normalizer>> ParseStrip(const nlohmann::json& json,
                                                       const std::string& key_path) {
  bool flags[2] = {true, true};
  const char* keys[2] = {"strip_left", "strip_right"};
  for (int i = 0; i < 2; ++i) {
    if (!json.contains(keys[i]) || json[keys[i]].is_null()) continue;
    if (!json[keys[i]].is_boolean()) return Error(key_path + "." + keys[i], "expected a boolean");
    flags[i] = json[keys[i]].get<bool>();
  }
  return std::unique_ptr<Normalizer>(new StripNormalizer(flags[0], flags[1]));
}

absl::StatusOr<std::unique_ptr<Normalizer>> ParseSequence(const nlohmann::json& json,
                                                          const std::string& key_path) {
  if (!json.contains("normalizers") || !json["normalizers"].is_array()) {
    return Error(key_path + ".normalizers", "expected an array");
  }
  const auto& list = json["normalizers"];
  std::vector<std::unique_ptr<Normalizer>> steps;
  for (size_t i = 0; i < list.size(); ++i) {
    auto step = ParseNormalizer(list[i], key_path + ".normalizers[" + std::to_string(i) + "]");
    if (!step.ok()) return step.status();
    if (*step != nullptr) steps.push_back(std::move(*step));
  }
  return std::unique_ptr<Normalizer>(new SequenceNormalizer(std::move(steps)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const nlohmann::json& json,
                                                            const std::string& key_path) {
  if (json.is_null()) return std::unique_ptr<Normalizer>();
  if (!json.is_object() || !json.contains("type") || !json["type"].is_string()) {
    return Error(key_path, "expected an object with a string \"type\"");
  }
  const std::string type = json["type"].get<std::string>();
  try {
    if (type == "NFC") return ParseUnicode(UnicodeForm::kNfc, key_path);
    if (type == "NFD") return ParseUnicode(UnicodeForm::kNfd, key_path);
    if (type == "NFKC") return ParseUnicode(UnicodeForm::kNfkc, key_path);
    if (type == "NFKD") return ParseUnicode(UnicodeForm::kNfkd, key_path);
    if (type == "Lowercase") return std::unique_ptr<Normalizer>(new LowercaseNormalizer());
    if (type == "Strip") return ParseStrip(json, key_path);
    if (type == "Replace") return ParseReplace(json, key_path);
    if (type == "Sequence") return ParseSequence(json, key_path);
    if (type == "Prepend") {
      if (!json.contains("prepend") || !json["prepend"].is_string()) {
        return Error(key_path + ".prepend", "expected a string");
      }
      return std::unique_ptr<Normalizer>(new PrependNormalizer(json["prepend"].get<std::string>()));
    }
  } catch (const nlohmann::json::exception& e) {
    return Error(key_path, e.what());
  }
  return Error(key_path, "not supported yet: normalizer type " + type);
}

}  // namespace fulcrum::data
