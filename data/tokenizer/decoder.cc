#include "data/tokenizer/decoder.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "core/status.h"
#include "data/tokenizer/byte_level_alphabet.h"
#include "data/tokenizer/json_util.h"

namespace fulcrum::data {
namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

size_t CharLength(uint8_t lead) { return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4; }

// Splits valid UTF-8 into its chars (each a view of 1-4 bytes).
std::vector<std::string_view> Chars(std::string_view text) {
  std::vector<std::string_view> chars;
  for (size_t i = 0; i < text.size();) {
    const size_t length = std::min(CharLength(static_cast<uint8_t>(text[i])), text.size() - i);
    chars.push_back(text.substr(i, length));
    i += length;
  }
  return chars;
}

// Byte-level tokens back to bytes, then lossy UTF-8. A token with any char
// outside the alphabet is copied raw, whole (as the reference).
class ByteLevelDecoder final : public Decoder {
 public:
  ByteLevelDecoder() {
    const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::Get();
    for (int byte = 0; byte < 256; ++byte) {
      const std::string& mapped = alphabet.Encode(static_cast<uint8_t>(byte));
      uint32_t code_point = static_cast<uint8_t>(mapped[0]);
      if (mapped.size() == 2) {
        code_point = ((code_point & 0x1F) << 6) | (static_cast<uint8_t>(mapped[1]) & 0x3F);
      }
      code_point_to_byte_[code_point] = static_cast<int16_t>(byte);
    }
  }

  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::string bytes;
    for (const std::string& token : *tokens) {
      const size_t start = bytes.size();
      bool all_mapped = true;
      for (size_t i = 0; i < token.size() && all_mapped;) {
        const auto lead = static_cast<uint8_t>(token[i]);
        const size_t length = CharLength(lead);
        uint32_t code_point = 0x110000;
        if (length == 1) {
          code_point = lead;
        } else if (length == 2 && i + 1 < token.size()) {
          code_point = ((lead & 0x1F) << 6) | (static_cast<uint8_t>(token[i + 1]) & 0x3F);
        }
        if (code_point < code_point_to_byte_.size() && code_point_to_byte_[code_point] >= 0) {
          bytes.push_back(static_cast<char>(code_point_to_byte_[code_point]));
        } else {
          all_mapped = false;
        }
        i += length;
      }
      if (!all_mapped) {
        bytes.resize(start);
        bytes += token;
      }
    }
    std::string text;
    AppendUtf8Lossy(bytes, &text);
    tokens->assign(1, std::move(text));
  }

 private:
  std::array<int16_t, 324> code_point_to_byte_ = MakeUnmapped();
  static std::array<int16_t, 324> MakeUnmapped() {
    std::array<int16_t, 324> table;
    table.fill(-1);
    return table;
  }
};

// Each replacement char becomes a space, except in the first token when a
// prefix was prepended (the reference drops them there).
class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first)
      : replacement_(std::move(replacement)), strip_first_(strip_first) {}

  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (size_t t = 0; t < tokens->size(); ++t) {
      std::string out;
      for (const std::string_view c : Chars((*tokens)[t])) {
        if (c != replacement_) {
          out += c;
        } else if (!(t == 0 && strip_first_)) {
          out += ' ';
        }
      }
      (*tokens)[t] = std::move(out);
    }
  }

 private:
  std::string replacement_;  // one char
  bool strip_first_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(std::string pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}

  void DecodeChain(std::vector<std::string>* tokens) const override {
    if (pattern_.empty()) return;
    for (std::string& token : *tokens) token = absl::StrReplaceAll(token, {{pattern_, content_}});
  }

 private:
  std::string pattern_;
  std::string content_;
};

// Runs of "<0xAB>" tokens become their bytes when those form valid UTF-8;
// otherwise one U+FFFD per byte token.
class ByteFallbackDecoder final : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens->size());
    std::string pending;
    size_t pending_count = 0;
    const auto flush = [&] {
      if (pending_count == 0) return;
      std::string checked;
      AppendUtf8Lossy(pending, &checked);
      if (checked == pending) {
        out.push_back(std::move(pending));
      } else {
        for (size_t k = 0; k < pending_count; ++k) out.emplace_back(kReplacementChar);
      }
      pending.clear();
      pending_count = 0;
    };
    for (std::string& token : *tokens) {
      const int byte = ParseByteToken(token);
      if (byte >= 0) {
        pending.push_back(static_cast<char>(byte));
        ++pending_count;
        continue;
      }
      flush();
      out.push_back(std::move(token));
    }
    flush();
    *tokens = std::move(out);
  }

 private:
  static int HexValue(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }
  // "<0xAB>" -> 0xAB, else -1 (u8::from_str_radix also takes "+A").
  static int ParseByteToken(const std::string& token) {
    if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>') return -1;
    const int high = HexValue(token[3]);
    const int low = HexValue(token[4]);
    if (low < 0) return -1;
    if (high >= 0) return high * 16 + low;
    return token[3] == '+' ? low : -1;
  }
};

class FuseDecoder final : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens) const override {
    std::string joined = absl::StrJoin(*tokens, "");
    tokens->assign(1, std::move(joined));
  }
};

// Removes up to `start` leading and `stop` trailing `content` chars per token.
class StripDecoder final : public Decoder {
 public:
  StripDecoder(std::string content, size_t start, size_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}

  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (std::string& token : *tokens) {
      const std::vector<std::string_view> chars = Chars(token);
      size_t begin = 0;
      while (begin < std::min(start_, chars.size()) && chars[begin] == content_) ++begin;
      size_t end = chars.size();
      for (size_t k = 0; k < stop_ && end > begin && chars[end - 1] == content_; ++k) --end;
      std::string out;
      for (size_t k = begin; k < end; ++k) out += chars[k];
      token = std::move(out);
    }
  }

 private:
  std::string content_;
  size_t start_;
  size_t stop_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> decoders)
      : decoders_(std::move(decoders)) {}

  void DecodeChain(std::vector<std::string>* tokens) const override {
    for (const auto& decoder : decoders_) decoder->DecodeChain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> decoders_;
};

absl::StatusOr<std::unique_ptr<Decoder>> ParseMetaspace(const nlohmann::json& json,
                                                        const std::string& key_path) {
  FULCRUM_ASSIGN_OR_RETURN(std::optional<std::string> replacement,
                           JsonOptionalString(json, key_path, "replacement"));
  if (!replacement.has_value() || Chars(*replacement).size() != 1) {
    return JsonError(absl::StrCat(key_path, ".replacement"), "expected a single char");
  }
  FULCRUM_ASSIGN_OR_RETURN(std::optional<std::string> scheme,
                           JsonOptionalString(json, key_path, "prepend_scheme"));
  bool strip_first = true;
  if (scheme.has_value()) {
    if (*scheme != "always" && *scheme != "first" && *scheme != "never") {
      return JsonError(absl::StrCat(key_path, ".prepend_scheme"),
                       absl::StrCat("expected always|first|never, got ", *scheme));
    }
    strip_first = *scheme != "never";
  } else {
    // Older files: add_prefix_space (default true) stands for always/never.
    FULCRUM_ASSIGN_OR_RETURN(strip_first, JsonBool(json, key_path, "add_prefix_space", true));
  }
  return std::unique_ptr<Decoder>(new MetaspaceDecoder(*replacement, strip_first));
}

absl::StatusOr<std::unique_ptr<Decoder>> ParseReplace(const nlohmann::json& json,
                                                      const std::string& key_path) {
  const std::string pattern_path = absl::StrCat(key_path, ".pattern");
  FULCRUM_ASSIGN_OR_RETURN(const nlohmann::json* pattern, JsonField(json, key_path, "pattern"));
  if (JsonOptionalField(*pattern, "Regex") != nullptr) {
    return JsonError(pattern_path, "not supported yet: Replace decoder with a Regex pattern");
  }
  FULCRUM_ASSIGN_OR_RETURN(const nlohmann::json* text, JsonField(*pattern, pattern_path, "String"));
  FULCRUM_ASSIGN_OR_RETURN(std::string from,
                           JsonString(*text, absl::StrCat(pattern_path, ".String")));
  FULCRUM_ASSIGN_OR_RETURN(const nlohmann::json* content, JsonField(json, key_path, "content"));
  FULCRUM_ASSIGN_OR_RETURN(std::string to,
                           JsonString(*content, absl::StrCat(key_path, ".content")));
  return std::unique_ptr<Decoder>(new ReplaceDecoder(std::move(from), std::move(to)));
}

absl::StatusOr<std::unique_ptr<Decoder>> ParseStrip(const nlohmann::json& json,
                                                    const std::string& key_path) {
  FULCRUM_ASSIGN_OR_RETURN(const nlohmann::json* content, JsonField(json, key_path, "content"));
  FULCRUM_ASSIGN_OR_RETURN(std::string text,
                           JsonString(*content, absl::StrCat(key_path, ".content")));
  if (Chars(text).size() != 1)
    return JsonError(absl::StrCat(key_path, ".content"), "expected a single char");
  size_t counts[2] = {0, 0};
  const char* keys[2] = {"start", "stop"};
  for (int k = 0; k < 2; ++k) {
    FULCRUM_ASSIGN_OR_RETURN(const nlohmann::json* value, JsonField(json, key_path, keys[k]));
    if (!value->is_number_unsigned()) {
      return JsonError(absl::StrCat(key_path, ".", keys[k]), "expected an integer >= 0");
    }
    counts[k] = value->get<size_t>();
  }
  return std::unique_ptr<Decoder>(new StripDecoder(std::move(text), counts[0], counts[1]));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Decoder>> ParseDecoder(const nlohmann::json& json,
                                                      const std::string& key_path) {
  if (json.is_null()) return std::unique_ptr<Decoder>();
  FULCRUM_ASSIGN_OR_RETURN(const nlohmann::json* type_json, JsonField(json, key_path, "type"));
  FULCRUM_ASSIGN_OR_RETURN(std::string type,
                           JsonString(*type_json, absl::StrCat(key_path, ".type")));
  if (type == "ByteLevel") return std::unique_ptr<Decoder>(new ByteLevelDecoder());
  if (type == "Metaspace") return ParseMetaspace(json, key_path);
  if (type == "Replace") return ParseReplace(json, key_path);
  if (type == "ByteFallback") return std::unique_ptr<Decoder>(new ByteFallbackDecoder());
  if (type == "Fuse") return std::unique_ptr<Decoder>(new FuseDecoder());
  if (type == "Strip") return ParseStrip(json, key_path);
  if (type == "Sequence") {
    const std::string list_path = absl::StrCat(key_path, ".decoders");
    FULCRUM_ASSIGN_OR_RETURN(const nlohmann::json* list, JsonField(json, key_path, "decoders"));
    if (!list->is_array()) return JsonError(list_path, "expected an array");
    std::vector<std::unique_ptr<Decoder>> decoders;
    for (size_t i = 0; i < list->size(); ++i) {
      FULCRUM_ASSIGN_OR_RETURN(std::unique_ptr<Decoder> decoder,
                               ParseDecoder((*list)[i], absl::StrCat(list_path, "[", i, "]")));
      if (decoder != nullptr) decoders.push_back(std::move(decoder));
    }
    return std::unique_ptr<Decoder>(new SequenceDecoder(std::move(decoders)));
  }
  return JsonError(absl::StrCat(key_path, ".type"),
                   absl::StrCat("not supported yet: decoder type ", type));
}

std::string DecodeTokens(const Decoder* decoder, std::vector<std::string> tokens) {
  if (decoder == nullptr) return absl::StrJoin(tokens, " ");
  decoder->DecodeChain(&tokens);
  return absl::StrJoin(tokens, "");
}

void AppendUtf8Lossy(std::string_view bytes, std::string* out) {
  size_t i = 0;
  while (i < bytes.size()) {
    const auto lead = static_cast<uint8_t>(bytes[i]);
    if (lead < 0x80) {
      out->push_back(static_cast<char>(lead));
      ++i;
      continue;
    }
    // Continuation bytes needed, and the allowed range of the first one.
    int need = 0;
    uint8_t low = 0x80, high = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) {
      need = 1;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      need = 2;
      if (lead == 0xE0) low = 0xA0;
      if (lead == 0xED) high = 0x9F;  // no surrogates
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      need = 3;
      if (lead == 0xF0) low = 0x90;
      if (lead == 0xF4) high = 0x8F;
    }
    size_t j = i + 1;
    int have = 0;
    while (have < need && j < bytes.size()) {
      const auto c = static_cast<uint8_t>(bytes[j]);
      const bool ok = have == 0 ? (c >= low && c <= high) : (c >= 0x80 && c <= 0xBF);
      if (!ok) break;
      ++j;
      ++have;
    }
    if (need > 0 && have == need) {
      out->append(bytes.substr(i, j - i));
    } else {
      out->append(kReplacementChar);  // the maximal invalid subpart [i, j)
    }
    i = j;
  }
}

}  // namespace fulcrum::data
