// Builds the data a recipe describes, for one data-parallel rank.
//
// Pretokenized JSONL (data.format: pretokenized, through data.path) is read
// directly. Text formats are tokenized once into the prepared cache
// (data/dataset/prepared_cache.h) under <cache root>/<key>/ and read back from
// it: EnsurePreparedData builds or reuses it; BuildTrainingData loads it.
//
// The validation split (data.validation) is either a file, or a fraction of
// each training source held out before weighting (seed-deterministic), so
// that no validation sample is also trained on.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/dataset/loader.h"
#include "data/dataset/pretokenized_dataset.h"
#include "parallel/runtime/logger.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::loop {

// The tokenizer.json a text recipe uses: data.tokenizer (a file or a dir
// holding one), else model.path/tokenizer.json. The error names
// data.tokenizer and says what was looked for.
absl::StatusOr<std::string> ResolveTokenizerPath(const recipe::Recipe& recipe);

// data.cache_dir, else <checkpoint.dir>/data_cache, else ./fulcrum_data_cache.
std::string CacheRoot(const recipe::Recipe& recipe);

struct PreparedInfo {
  std::string dir;            // the cache directory of this recipe's data
  bool rebuilt = false;       // tokenized now (else reused)
  std::string reason;         // why rebuilt / reused, for the log
  int64_t train_samples = 0;  // after tokenization (only when rebuilt)
  int64_t validation_samples = 0;
  double seconds = 0.0;  // tokenization time (only when rebuilt)
};

// For a text recipe: checks the cache against the inputs' fingerprint and
// tokenizes into it when missing or stale (only when `allow_build`; else a
// stale cache is an error). Logs which happened, and records/s when it
// tokenizes. Errors: the tokenizer or chat template (naming data.tokenizer /
// data.chat_template), the data (file:line), the cache.
absl::StatusOr<PreparedInfo> EnsurePreparedData(const recipe::Recipe& recipe,
                                                const parallel::Logger& logger, bool allow_build);

struct TrainingData {
  data::DataLoader loader;
  std::vector<data::Sample> validation;  // empty when data.validation is not set
  std::string description;               // "prepared cache DIR" or the JSONL path
};

// The loader of this dp rank and the whole validation set. Text recipes read
// the prepared cache (built first when `allow_build`). Every id must be below
// the model's vocab_size.
absl::StatusOr<TrainingData> BuildTrainingData(const recipe::Recipe& recipe, int64_t vocab_size,
                                               int64_t dp_rank, int64_t dp_size,
                                               const parallel::Logger& logger, bool allow_build);

// The training loader alone (fulcrum validate); builds the prepared cache when needed.
absl::StatusOr<data::DataLoader> BuildDataLoader(const recipe::Recipe& recipe, int64_t vocab_size,
                                                 int64_t dp_rank, int64_t dp_size);

}  // namespace fulcrum::loop
