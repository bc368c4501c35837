// The prepared data cache: tokenized samples written once (`fulcrum prepare`)
// as flat little-endian shards and memory-mapped by `train`.
//
// Defines: kPreparedCacheVersion, PreparedData, CacheState, CacheCheck,
// PreparedCacheKey, CheckPreparedCache, WritePreparedCache, LoadPreparedCache.
//
// Layout of one cache directory (CACHE_DIR/<key>/):
//   manifest.json          {"version", "fingerprint": {...}, "splits": {"train": {"samples",
//                          "tokens"}, "validation": {...}}, "info": {...}}; written last
//   train.tokens           int32 LE [tokens]   input ids of all samples, concatenated
//   train.labels           int32 LE [tokens]   the labels, -100 = not a target
//   train.offsets          int64 LE [samples + 1] sample i is tokens[offsets[i], offsets[i+1])
//   validation.{tokens,labels,offsets}   the same for the held-out split (may be empty)
// The directory is staged and renamed into place, so a reader sees a whole
// cache or none.
//
// The caller builds two JSON objects: the `key` (what names the cache: input
// paths and the options that change tokens) and the `fingerprint` (the key plus
// the content hashes of every input file, the tokenizer files and the
// template). The key picks the directory; the fingerprint decides whether
// the cache there is fresh, and when not, CheckPreparedCache says which entry
// changed.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "data/dataset/pretokenized_dataset.h"

namespace fulcrum::data {

// Bumped whenever the layout or the tokenization path changes meaning.
inline constexpr int64_t kPreparedCacheVersion = 1;

struct PreparedData {
  std::vector<Sample> train;       // Sample.line is 0 for samples read back from a cache
  std::vector<Sample> validation;  // empty when no validation split is configured
};

enum class CacheState { kMissing, kStale, kFresh };

struct CacheCheck {
  CacheState state = CacheState::kMissing;
  std::string reason;  // for the log: "no manifest", "fingerprint.inputs[0].hash changed", ...
};

// "<16 hex digits>": the directory name under data.cache_dir for this key.
std::string PreparedCacheKey(const nlohmann::json& key);

// Fresh when DIR/manifest.json exists, has this format version and exactly
// this fingerprint. Never fails: an unreadable manifest is stale (rebuilt).
CacheCheck CheckPreparedCache(const std::string& dir, const nlohmann::json& fingerprint);

// Writes the shards and the manifest (with `info`, free-form: counts, timing)
// into a staging directory, then publishes it as `dir` (replacing a stale one).
// Errors name the file. Every id and label must fit in int32 (checked).
absl::Status WritePreparedCache(const std::string& dir, const nlohmann::json& fingerprint,
                                const PreparedData& data, const nlohmann::json& info = {});

// Maps the shards and copies the samples out. Errors name the file: missing
// or truncated shards, offsets that are not increasing or exceed the tokens,
// sizes that disagree with the manifest.
absl::StatusOr<PreparedData> LoadPreparedCache(const std::string& dir);

}  // namespace fulcrum::data
