#include "data/tokenizer/bpe_model.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status.h"
#include "data/tokenizer/json_util.h"

namespace fulcrum::data {
namespace {

size_t Utf8CharLength(uint8_t lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

struct MergePair {
  std::string left;
  std::string right;
};

// One merge: "a b" (split at the first space) or ["a", "b"].
absl::StatusOr<MergePair> ParseMerge(const nlohmann::json& merge, const std::string& key_path) {
  if (merge.is_string()) {
    const std::string text = merge.get<std::string>();
    const size_t space = text.find(' ');
    if (space == std::string::npos) {
      return JsonError(key_path, absl::StrCat("merge \"", text, "\" has no space"));
    }
    return MergePair{text.substr(0, space), text.substr(space + 1)};
  }
  if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
    return MergePair{merge[0].get<std::string>(), merge[1].get<std::string>()};
  }
  return JsonError(key_path, "expected \"a b\" or [\"a\", \"b\"]");
}

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::Parse(const nlohmann::json& json,
                                                          const std::string& key_path) {
  if (!json.is_object()) return JsonError(key_path, "expected an object");
  std::unique_ptr<BpeModel> model(new BpeModel());
  if (const nlohmann::json* dropout = JsonOptionalField(json, "dropout")) {
    if (!dropout->is_number() || dropout->get<double>() != 0.0) {
      return JsonError(absl::StrCat(key_path, ".dropout"),
                       absl::StrCat("not supported yet: BPE dropout ", dropout->dump()));
    }
  }
  FULCRUM_ASSIGN_OR_RETURN(model->fuse_unk_, JsonBool(json, key_path, "fuse_unk", false));
  FULCRUM_ASSIGN_OR_RETURN(model->byte_fallback_, JsonBool(json, key_path, "byte_fallback", false));
  FULCRUM_ASSIGN_OR_RETURN(model->ignore_merges_, JsonBool(json, key_path, "ignore_merges", false));
  FULCRUM_ASSIGN_OR_RETURN(std::optional<std::string> prefix,
                           JsonOptionalString(json, key_path, "continuing_subword_prefix"));
  FULCRUM_ASSIGN_OR_RETURN(std::optional<std::string> suffix,
                           JsonOptionalString(json, key_path, "end_of_word_suffix"));
  FULCRUM_ASSIGN_OR_RETURN(std::optional<std::string> unk_token,
                           JsonOptionalString(json, key_path, "unk_token"));
  model->continuing_subword_prefix_ = prefix.value_or("");
  model->end_of_word_suffix_ = suffix.value_or("");

  // vocab: {"token": id, ...}
  const std::string vocab_path = absl::StrCat(key_path, ".vocab");
  FULCRUM_ASSIGN_OR_RETURN(const nlohmann::json* vocab, JsonField(json, key_path, "vocab"));
  if (!vocab->is_object()) return JsonError(vocab_path, "expected an object {token: id}");
  model->vocab_.Reserve(vocab->size());
  int64_t max_id = -1;
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    FULCRUM_ASSIGN_OR_RETURN(int32_t id,
                             JsonId(it.value(), absl::StrCat(vocab_path, "[\"", it.key(), "\"]")));
    model->vocab_.Insert(it.key(), id);
    max_id = std::max<int64_t>(max_id, id);
  }
  model->id_to_token_.assign(max_id + 1, std::string());
  model->id_present_.assign(max_id + 1, false);
  model->vocab_.ForEach([&](const std::string& token, int32_t id) {
    model->id_to_token_[id] = token;
    model->id_present_[id] = true;
  });

  if (unk_token.has_value()) {
    // The reference fails only when an unknown char meets a missing unk
    // token; keeping it optional here gives the same ids otherwise.
    if (const int32_t* id = model->vocab_.Find(*unk_token)) model->unk_id_ = *id;
  }
  for (int byte = 0; byte < 256; ++byte) {
    const int32_t* id = model->vocab_.Find(absl::StrFormat("<0x%02X>", byte));
    model->byte_fallback_ids_[byte] = id == nullptr ? -1 : *id;
  }

  // merges: rank = index; the merged token is left + right minus the
  // continuing_subword_prefix's length in bytes (as the reference slices).
  const std::string merges_path = absl::StrCat(key_path, ".merges");
  const nlohmann::json* merges = JsonOptionalField(json, "merges");
  if (merges != nullptr && !merges->is_array()) return JsonError(merges_path, "expected an array");
  const size_t prefix_len = model->continuing_subword_prefix_.size();
  if (merges != nullptr) {
    model->merges_.Reserve(merges->size());
    for (size_t i = 0; i < merges->size(); ++i) {
      const std::string path = absl::StrCat(merges_path, "[", i, "]");
      FULCRUM_ASSIGN_OR_RETURN(MergePair pair, ParseMerge((*merges)[i], path));
      const int32_t* left = model->vocab_.Find(pair.left);
      const int32_t* right = model->vocab_.Find(pair.right);
      const std::string merged =
          pair.left + (pair.right.size() >= prefix_len ? pair.right.substr(prefix_len) : "");
      const int32_t* merged_id = model->vocab_.Find(merged);
      const std::string* missing = left == nullptr        ? &pair.left
                                   : right == nullptr     ? &pair.right
                                   : merged_id == nullptr ? &merged
                                                          : nullptr;
      if (missing != nullptr) {
        return JsonError(path, absl::StrCat("token \"", *missing, "\" is not in model.vocab"));
      }
      model->merges_.Insert(*left, *right, {static_cast<int32_t>(i), *merged_id});
    }
  }
  return model;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  const int32_t* id = vocab_.Find(token);
  if (id == nullptr) return std::nullopt;
  return *id;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || !id_present_[id]) return nullptr;
  return &id_to_token_[id];
}

void BpeModel::Tokenize(std::string_view piece, std::vector<int32_t>* ids) const {
  if (piece.empty()) return;
  if (ignore_merges_) {
    if (const int32_t* id = vocab_.Find(piece)) {
      ids->push_back(*id);
      return;
    }
  }
  if (piece.size() >= kMaxCachedWord) {
    MergeWord(piece, ids);
    return;
  }
  CacheShard& shard = cache_[HashBytes(piece) % kCacheShards];
  std::string key(piece);
  {
    std::lock_guard<std::mutex> lock(shard.mutex);
    const auto it = shard.words.find(key);
    if (it != shard.words.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t start = ids->size();
  MergeWord(piece, ids);
  std::vector<int32_t> word_ids(ids->begin() + start, ids->end());
  std::lock_guard<std::mutex> lock(shard.mutex);
  if (shard.words.size() >= kCacheShardCapacity) shard.words.clear();
  shard.words.emplace(std::move(key), std::move(word_ids));
}

void BpeModel::MergeWord(std::string_view word, std::vector<int32_t>* ids) const {
  // Symbols before merging; an unknown run is held back in `unk` (id, bytes)
  // so that consecutive unknowns fuse when fuse_unk.
  std::vector<int32_t> symbols;
  symbols.reserve(word.size());
  std::optional<int32_t> pending_unk;
  std::string scratch;
  size_t i = 0;
  while (i < word.size()) {
    const size_t length = std::min(Utf8CharLength(static_cast<uint8_t>(word[i])), word.size() - i);
    const bool is_first = i == 0;
    const bool is_last = i + length == word.size();
    std::string_view text = word.substr(i, length);
    i += length;
    if ((!is_first && !continuing_subword_prefix_.empty()) ||
        (is_last && !end_of_word_suffix_.empty())) {
      scratch.clear();
      if (!is_first) scratch += continuing_subword_prefix_;
      scratch += text;
      if (is_last) scratch += end_of_word_suffix_;
      text = scratch;
    }
    if (const int32_t* id = vocab_.Find(text)) {
      if (pending_unk.has_value()) symbols.push_back(*pending_unk);
      pending_unk.reset();
      symbols.push_back(*id);
      continue;
    }
    if (byte_fallback_) {
      // Every byte must have its <0xAB> token, else fall through to unk.
      // NOTE: as the reference, a pending unknown is not flushed first.
      const bool all_bytes = std::all_of(text.begin(), text.end(), [&](char c) {
        return byte_fallback_ids_[static_cast<uint8_t>(c)] >= 0;
      });
      if (all_bytes) {
        for (const char c : text) symbols.push_back(byte_fallback_ids_[static_cast<uint8_t>(c)]);
        continue;
      }
    }
    if (!unk_id_.has_value()) continue;  // no unknown token: the char is dropped
    if (pending_unk.has_value() && !fuse_unk_) symbols.push_back(*pending_unk);
    pending_unk = *unk_id_;
  }
  if (pending_unk.has_value()) symbols.push_back(*pending_unk);
  MergeAll(&symbols, ids);
}

void BpeModel::MergeAll(std::vector<int32_t>* symbol_ids, std::vector<int32_t>* out) const {
  const int n = static_cast<int>(symbol_ids->size());
  if (n <= 1 || merges_.size() == 0) {
    out->insert(out->end(), symbol_ids->begin(), symbol_ids->end());
    return;
  }
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;  // -1 at the end
    bool removed;
  };
  std::vector<Symbol> symbols(n);
  for (int k = 0; k < n; ++k)
    symbols[k] = Symbol{(*symbol_ids)[k], k - 1, k + 1 < n ? k + 1 : -1, false};

  // Min-heap on (rank, pos), as the reference's Merge ordering.
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
  };
  const auto later = [](const Candidate& a, const Candidate& b) {
    return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
  };
  std::vector<Candidate> heap;
  heap.reserve(n);
  for (int k = 0; k + 1 < n; ++k) {
    if (const PairMap::Merge* m = merges_.Find(symbols[k].id, symbols[k + 1].id)) {
      heap.push_back({m->rank, k, m->new_id});
    }
  }
  std::make_heap(heap.begin(), heap.end(), later);
  const auto push = [&](int32_t pos, int32_t a, int32_t b) {
    if (const PairMap::Merge* m = merges_.Find(a, b)) {
      heap.push_back({m->rank, pos, m->new_id});
      std::push_heap(heap.begin(), heap.end(), later);
    }
  };
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& current = symbols[top.pos];
    if (current.removed || current.next < 0) continue;
    const int32_t next_pos = current.next;
    const Symbol right = symbols[next_pos];
    // A stale entry: the pair at pos no longer merges into new_id.
    const PairMap::Merge* m = merges_.Find(current.id, right.id);
    if (m == nullptr || m->new_id != top.new_id) continue;
    current.id = top.new_id;
    current.next = right.next;
    symbols[next_pos].removed = true;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (current.prev >= 0) push(current.prev, symbols[current.prev].id, current.id);
    if (current.next >= 0) push(top.pos, current.id, symbols[current.next].id);
  }
  for (int k = 0; k >= 0; k = symbols[k].next) out->push_back(symbols[k].id);
}

}  // namespace fulcrum::data
