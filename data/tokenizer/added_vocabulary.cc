#include "data/tokenizer/added_vocabulary.h"

#include <array>
#include <utility>

#include "absl/status/status.h"
#include "data/tokenizer/unicode_util.h"

namespace fulcrum::data {
namespace {

// A byte trie over token contents with a 256-entry root table: positions
// whose byte starts no token are skipped with one lookup, so text without
// added tokens costs a table probe per byte.
class TokenTrie {
 public:
  TokenTrie() { root_.fill(-1); }

  // Adds `pattern` (non-empty) for token index `token`; the first of
  // duplicate patterns wins (as aho-corasick's lowest pattern id).
  void Add(std::string_view pattern, int32_t token) {
    int32_t node = root_[static_cast<unsigned char>(pattern[0])];
    if (node < 0) {
      node = NewNode();
      root_[static_cast<unsigned char>(pattern[0])] = node;
    }
    for (size_t i = 1; i < pattern.size(); ++i) {
      const auto byte = static_cast<unsigned char>(pattern[i]);
      int32_t child = Child(node, byte);
      if (child < 0) {
        child = NewNode();
        nodes_[node].children.push_back({byte, child});
      }
      node = child;
    }
    if (nodes_[node].token < 0) nodes_[node].token = token;
    empty_ = false;
  }

  bool empty() const { return empty_; }

  struct Match {
    size_t start = 0;
    size_t end = 0;
    int32_t token = -1;
  };

  // Leftmost-longest match at or after `from`; token < 0 when none.
  Match FindFrom(std::string_view text, size_t from) const {
    const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
    for (size_t start = from; start < text.size(); ++start) {
      int32_t node = root_[bytes[start]];
      if (node < 0) continue;
      Match best;
      for (size_t i = start + 1;; ++i) {
        if (nodes_[node].token >= 0) best = {start, i, nodes_[node].token};
        if (i == text.size()) break;
        node = Child(node, bytes[i]);
        if (node < 0) break;
      }
      if (best.token >= 0) return best;
    }
    return {};
  }

 private:
  struct Node {
    int32_t token = -1;
    std::vector<std::pair<unsigned char, int32_t>> children;
  };

  int32_t NewNode() {
    nodes_.emplace_back();
    return static_cast<int32_t>(nodes_.size() - 1);
  }
  int32_t Child(int32_t node, unsigned char byte) const {
    for (const auto& [b, child] : nodes_[node].children) {
      if (b == byte) return child;
    }
    return -1;
  }

  std::array<int32_t, 256> root_;
  std::vector<Node> nodes_;
  bool empty_ = true;
};

// Rust regex `\w` just before / at `pos`.
bool EndsWithWord(std::string_view text, size_t pos) {
  if (pos == 0) return false;
  return internal::IsWordChar(internal::PrevCodePoint(text, &pos));
}
bool StartsWithWord(std::string_view text, size_t pos) {
  if (pos >= text.size()) return false;
  return internal::IsWordChar(internal::NextCodePoint(text, &pos));
}

// Start of the whitespace run that ends at `pos`.
size_t WhitespaceRunStart(std::string_view text, size_t pos) {
  while (pos > 0) {
    size_t previous = pos;
    if (!internal::IsWhitespace(internal::PrevCodePoint(text, &previous))) break;
    pos = previous;
  }
  return pos;
}
// End of the whitespace run that starts at `pos`.
size_t WhitespaceRunEnd(std::string_view text, size_t pos) {
  while (pos < text.size()) {
    size_t next = pos;
    if (!internal::IsWhitespace(internal::NextCodePoint(text, &next))) break;
    pos = next;
  }
  return pos;
}

struct RawSplit {
  size_t start = 0;
  size_t end = 0;
  int32_t token = -1;  // index into tokens, -1: text
};

}  // namespace

struct AddedVocabulary::Matchers {
  TokenTrie raw;         // normalized = false tokens, on the raw text
  TokenTrie normalized;  // normalized = true tokens, on normalized text
};

namespace {

// The reference's AddedVocabulary::find_matches: token matches with
// single_word / lstrip / rstrip applied, and the text between them.
void FindSplits(std::string_view text, const TokenTrie& trie, const std::vector<AddedToken>& tokens,
                std::vector<RawSplit>* splits) {
  splits->clear();
  size_t start_offset = 0;
  size_t search = 0;
  while (!trie.empty()) {
    const TokenTrie::Match match = trie.FindFrom(text, search);
    if (match.token < 0) break;
    search = match.end;
    const AddedToken& token = tokens[match.token];
    size_t start = match.start;
    size_t stop = match.end;
    if (token.single_word && (EndsWithWord(text, start) || StartsWithWord(text, stop))) {
      continue;
    }
    if (token.lstrip) start = std::max(WhitespaceRunStart(text, start), start_offset);
    if (token.rstrip) stop = WhitespaceRunEnd(text, stop);
    if (start_offset < start) splits->push_back({start_offset, start, -1});
    splits->push_back({start, stop, match.token});
    start_offset = stop;
  }
  if (start_offset < text.size()) splits->push_back({start_offset, text.size(), -1});
}

}  // namespace

AddedVocabulary::AddedVocabulary() : matchers_(std::make_unique<Matchers>()) {}
AddedVocabulary::~AddedVocabulary() = default;
AddedVocabulary::AddedVocabulary(AddedVocabulary&&) noexcept = default;
AddedVocabulary& AddedVocabulary::operator=(AddedVocabulary&&) noexcept = default;

const std::vector<AddedToken>& AddedVocabulary::tokens() const { return tokens_; }

absl::StatusOr<AddedVocabulary> AddedVocabulary::Parse(const nlohmann::json& json,
                                                       const std::string& key_path,
                                                       const Normalizer* normalizer) {
  AddedVocabulary vocabulary;
  if (json.is_null()) return vocabulary;
  if (!json.is_array()) return absl::InvalidArgumentError(key_path + ": expected an array");
  for (size_t i = 0; i < json.size(); ++i) {
    const std::string path = key_path + "[" + std::to_string(i) + "]";
    const nlohmann::json& entry = json[i];
    if (!entry.is_object()) return absl::InvalidArgumentError(path + ": expected an object");
    AddedToken token;
    const auto id = entry.find("id");
    if (id == entry.end() || !id->is_number_integer() || id->get<int64_t>() < 0 ||
        id->get<int64_t>() > INT32_MAX) {
      return absl::InvalidArgumentError(path + ".id: expected a non-negative integer");
    }
    token.id = static_cast<int32_t>(id->get<int64_t>());
    const auto content = entry.find("content");
    if (content == entry.end() || !content->is_string()) {
      return absl::InvalidArgumentError(path + ".content: expected a string");
    }
    token.content = content->get<std::string>();
    struct Flag {
      const char* key;
      bool* value;
    };
    for (const Flag& flag :
         {Flag{"special", &token.special}, Flag{"single_word", &token.single_word},
          Flag{"lstrip", &token.lstrip}, Flag{"rstrip", &token.rstrip}}) {
      const auto it = entry.find(flag.key);
      if (it == entry.end() || it->is_null()) continue;
      if (!it->is_boolean()) {
        return absl::InvalidArgumentError(path + "." + flag.key + ": expected a boolean");
      }
      *flag.value = it->get<bool>();
    }
    // The reference's default: special tokens are not normalized.
    token.normalized = !token.special;
    const auto normalized = entry.find("normalized");
    if (normalized != entry.end() && !normalized->is_null()) {
      if (!normalized->is_boolean()) {
        return absl::InvalidArgumentError(path + ".normalized: expected a boolean");
      }
      token.normalized = normalized->get<bool>();
    }
    vocabulary.tokens_.push_back(std::move(token));
  }
  for (size_t i = 0; i < vocabulary.tokens_.size(); ++i) {
    const AddedToken& token = vocabulary.tokens_[i];
    std::string pattern = token.content;
    if (token.normalized && normalizer != nullptr) normalizer->Normalize(&pattern);
    if (pattern.empty()) continue;
    TokenTrie& trie =
        token.normalized ? vocabulary.matchers_->normalized : vocabulary.matchers_->raw;
    trie.Add(pattern, static_cast<int32_t>(i));
  }
  return vocabulary;
}

std::vector<TextSegment> AddedVocabulary::Split(std::string_view text,
                                                const Normalizer* normalizer) const {
  std::vector<TextSegment> segments;
  std::vector<RawSplit> raw_splits;
  std::vector<RawSplit> normalized_splits;
  FindSplits(text, matchers_->raw, tokens_, &raw_splits);
  for (const RawSplit& raw : raw_splits) {
    if (raw.token >= 0) {
      segments.push_back({std::string(), tokens_[raw.token].id, false});
      continue;
    }
    std::string normalized(text.substr(raw.start, raw.end - raw.start));
    if (normalizer != nullptr) normalizer->Normalize(&normalized);
    if (matchers_->normalized.empty()) {
      if (!normalized.empty()) segments.push_back({std::move(normalized), -1, raw.start == 0});
      continue;
    }
    FindSplits(normalized, matchers_->normalized, tokens_, &normalized_splits);
    for (const RawSplit& split : normalized_splits) {
      if (split.token >= 0) {
        segments.push_back({std::string(), tokens_[split.token].id, false});
      } else if (split.start < split.end) {
        segments.push_back({normalized.substr(split.start, split.end - split.start), -1,
                            raw.start == 0 && split.start == 0});
      }
    }
  }
  return segments;
}

}  // namespace fulcrum::data
