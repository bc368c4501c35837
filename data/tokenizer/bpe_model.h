// The BPE model of tokenizer.json ("model": {"type": "BPE", ...}), as the
// reference's models/bpe/{model.rs, word.rs}.
//
// Defines: BpeModel.
//
// A word (one pre-tokenized piece) is split into chars, each mapped to its id
// (with continuing_subword_prefix / end_of_word_suffix, byte_fallback
// "<0xAB>" tokens, or the unknown token, fused when fuse_unk); then the
// lowest-rank merge among adjacent pairs is applied repeatedly, ties going to
// the leftmost pair. With ignore_merges a piece that is itself in the vocab is
// emitted directly (Llama-3).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "data/tokenizer/flat_map.h"
#include "nlohmann/json.hpp"

namespace fulcrum::data {

class BpeModel {
 public:
  // `json` is the value of the "model" key; errors are prefixed with
  // `key_path` ("tokenizer.json: model") and name the sub-key. A dropout
  // other than null/0 is "not supported yet".
  static absl::StatusOr<std::unique_ptr<BpeModel>> Parse(const nlohmann::json& json,
                                                         const std::string& key_path);

  // Appends the ids of `piece` to `ids`. Thread-safe (the cache is sharded
  // behind mutexes).
  void Tokenize(std::string_view piece, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // nullptr when `id` is not in the vocab.
  const std::string* IdToToken(int32_t id) const;
  // Largest id in the vocab + 1 (0 for an empty vocab).
  int64_t vocab_size() const { return static_cast<int64_t>(id_to_token_.size()); }

 private:
  BpeModel() = default;
  // Chars -> ids -> merges, without the cache.
  void MergeWord(std::string_view word, std::vector<int32_t>* ids) const;
  void MergeAll(std::vector<int32_t>* symbol_ids, std::vector<int32_t>* out) const;

  StringIdMap vocab_;
  std::vector<std::string> id_to_token_;  // "" for ids the vocab skips
  std::vector<bool> id_present_;
  PairMap merges_;
  std::optional<int32_t> unk_id_;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::array<int32_t, 256> byte_fallback_ids_{};  // id of "<0xAB>", -1 when absent

  // Word -> ids cache: words shorter than kMaxCachedWord bytes, at most
  // kCacheShardCapacity per shard (a full shard is cleared).
  static constexpr size_t kCacheShards = 16;
  static constexpr size_t kCacheShardCapacity = 8192;
  static constexpr size_t kMaxCachedWord = 256;
  struct CacheShard {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<int32_t>> words;
  };
  mutable std::array<CacheShard, kCacheShards> cache_;
};

}  // namespace fulcrum::data
