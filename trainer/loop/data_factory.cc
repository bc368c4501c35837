#include "trainer/loop/data_factory.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status.h"
#include "data/dataset/content_hash.h"
#include "data/dataset/prepared_cache.h"
#include "data/dataset/sampler.h"
#include "data/dataset/text_dataset.h"
#include "data/template/chat_template.h"
#include "data/tokenizer/tokenizer.h"
#include "data/tokenizer/tokenizer_config.h"

namespace fulcrum::loop {
namespace fs = std::filesystem;
namespace {

// Salts of the seed-deterministic choices, so that they differ from the
// training shuffle of the same seed.
constexpr int64_t kHoldOutEpochSalt = 1 << 20;
constexpr int64_t kWeightEpochSalt = 2 << 20;

std::string Source(const recipe::Recipe& r) { return r.source.empty() ? "recipe" : r.source; }

data::TextFormat ToTextFormat(const std::string& name) {
  if (name == "instruction") return data::TextFormat::kInstruction;
  if (name == "messages") return data::TextFormat::kMessages;
  if (name == "sharegpt") return data::TextFormat::kShareGpt;
  return data::TextFormat::kText;  // ValidateRecipe allows only these four here
}

// data.path or data.datasets, each with its effective format; weights kept.
std::vector<data::DatasetSource> TrainSources(const recipe::DataSection& d) {
  std::vector<data::DatasetSource> sources;
  if (d.datasets.empty()) {
    sources.push_back({d.path, ToTextFormat(d.format), {}, 1.0});
  }
  for (const recipe::DatasetEntry& e : d.datasets) {
    sources.push_back({e.path, ToTextFormat(e.format.empty() ? d.format : e.format),
                       data::FieldMap(e.fields.begin(), e.fields.end()), e.weight});
  }
  return sources;
}

std::optional<data::DatasetSource> ValidationSource(const recipe::DataSection& d) {
  if (d.validation.path.empty()) return std::nullopt;
  const std::string& format = d.validation.format.empty() ? d.format : d.validation.format;
  return data::DatasetSource{d.validation.path, ToTextFormat(format), {}, 1.0};
}

bool NeedsTemplate(const std::vector<data::DatasetSource>& sources,
                   const std::optional<data::DatasetSource>& validation) {
  for (const auto& s : sources) {
    if (s.format != data::TextFormat::kText) return true;
  }
  return validation && validation->format != data::TextFormat::kText;
}

struct Split {
  std::vector<data::Sample> kept;
  std::vector<data::Sample> held_out;
};

// Holds out round(n * fraction) samples (at least 1 and at most n - 1 when
// n >= 2), chosen by (seed, source index); both parts keep file order.
Split HoldOut(std::vector<data::Sample> samples, double fraction, uint64_t seed, int64_t index) {
  Split split;
  const int64_t n = static_cast<int64_t>(samples.size());
  int64_t k = fraction > 0 ? std::llround(static_cast<double>(n) * fraction) : 0;
  if (fraction > 0 && n >= 2) k = std::clamp<int64_t>(k, 1, n - 1);
  if (n < 2) k = 0;
  std::vector<bool> held(static_cast<size_t>(n), false);
  const std::vector<int64_t> order = data::ShuffledOrder(n, seed, kHoldOutEpochSalt + index);
  for (int64_t i = 0; i < k; ++i) held[static_cast<size_t>(order[static_cast<size_t>(i)])] = true;
  for (int64_t i = 0; i < n; ++i) {
    (held[static_cast<size_t>(i)] ? split.held_out : split.kept)
        .push_back(std::move(samples[static_cast<size_t>(i)]));
  }
  return split;
}

// floor(weight) copies of every sample, then round(frac(weight) * n) of them once more
// (chosen by seed and source index, in file order).
void AppendWeighted(const std::vector<data::Sample>& samples, double weight, uint64_t seed,
                    int64_t index, std::vector<data::Sample>& out) {
  const int64_t n = static_cast<int64_t>(samples.size());
  const int64_t whole = static_cast<int64_t>(std::floor(weight));
  for (int64_t c = 0; c < whole; ++c) out.insert(out.end(), samples.begin(), samples.end());
  const int64_t extra =
      std::llround((weight - static_cast<double>(whole)) * static_cast<double>(n));
  if (extra <= 0) return;
  std::vector<int64_t> chosen = data::ShuffledOrder(n, seed, kWeightEpochSalt + index);
  chosen.resize(static_cast<size_t>(std::min(extra, n)));
  std::sort(chosen.begin(), chosen.end());
  for (int64_t i : chosen) out.push_back(samples[static_cast<size_t>(i)]);
}

data::TokenizeOptions TokenizeOptionsFrom(const recipe::Recipe& r) {
  data::TokenizeOptions options;
  options.seq_len = r.batch.seq_len;
  options.overflow =
      r.data.truncation == "drop" ? data::OverflowPolicy::kDrop : data::OverflowPolicy::kTruncate;
  options.on_error =
      r.data.on_error == "skip" ? data::ErrorPolicy::kSkip : data::ErrorPolicy::kFail;
  options.render.train_on_prompt = r.data.train_on_prompt;
  options.render.mask_history = r.data.mask_history;
  options.seed = static_cast<uint64_t>(r.seed);
  options.num_threads = static_cast<int>(r.data.num_workers);
  return options;
}

absl::StatusOr<data::TokenizerConfig> ConfigNextTo(const std::string& tokenizer_path) {
  const fs::path config = fs::path(tokenizer_path).parent_path() / "tokenizer_config.json";
  std::error_code ec;
  if (!fs::exists(config, ec)) return data::TokenizerConfig{};
  return data::LoadTokenizerConfig(config.string());
}

// The template's name, or "none" when no source is a conversation.
absl::StatusOr<std::unique_ptr<data::ChatTemplate>> MakeTemplate(
    const recipe::Recipe& r, const data::TokenizerConfig& config) {
  auto chat_template = data::CreateChatTemplate(r.data.chat_template, config);
  if (!chat_template.ok()) {
    return Annotate(chat_template.status(), absl::StrCat(Source(r), ": data.chat_template"));
  }
  return std::move(*chat_template);
}

struct Fingerprint {
  nlohmann::json key;   // names the cache directory
  nlohmann::json full;  // key + content hashes + template: decides freshness
};

absl::StatusOr<std::string> HashHex(const std::string& path, const std::string& key_path,
                                    const recipe::Recipe& r) {
  auto hash = data::HashFile(path);
  if (!hash.ok()) return Annotate(hash.status(), absl::StrCat(Source(r), ": ", key_path));
  return data::HashToHex(*hash);
}

absl::StatusOr<Fingerprint> MakeFingerprint(const recipe::Recipe& r,
                                            const std::vector<data::DatasetSource>& sources,
                                            const std::string& tokenizer_path,
                                            const std::string& template_name) {
  const recipe::DataSection& d = r.data;
  Fingerprint fp;
  nlohmann::json inputs = nlohmann::json::array();
  nlohmann::json files = nlohmann::json::object();
  for (size_t i = 0; i < sources.size(); ++i) {
    const data::DatasetSource& s = sources[i];
    inputs.push_back({{"path", s.path},
                      {"format", static_cast<int>(s.format)},
                      {"weight", s.weight},
                      {"fields", s.fields}});
    const std::string key_path =
        d.datasets.empty() ? "data.path" : absl::StrCat("data.datasets[", i, "].path");
    FULCRUM_ASSIGN_OR_RETURN(files[s.path], HashHex(s.path, key_path, r));
  }
  if (!d.validation.path.empty()) {
    FULCRUM_ASSIGN_OR_RETURN(files[d.validation.path],
                             HashHex(d.validation.path, "data.validation.path", r));
  }
  FULCRUM_ASSIGN_OR_RETURN(files[tokenizer_path], HashHex(tokenizer_path, "data.tokenizer", r));
  const std::string config =
      (fs::path(tokenizer_path).parent_path() / "tokenizer_config.json").string();
  std::error_code ec;
  files[config] = fs::exists(config, ec) ? HashHex(config, "data.tokenizer", r).value_or("?")
                                         : std::string("absent");
  fp.key = {{"inputs", inputs},
            {"validation",
             {{"fraction", d.validation.fraction},
              {"path", d.validation.path},
              {"format", d.validation.format}}},
            {"tokenizer", tokenizer_path},
            {"options",
             {{"seq_len", r.batch.seq_len},
              {"truncation", d.truncation},
              {"on_error", d.on_error},
              {"train_on_prompt", d.train_on_prompt},
              {"mask_history", d.mask_history},
              {"chat_template", d.chat_template},
              {"seed", r.seed}}}};
  fp.full = fp.key;
  fp.full["files"] = files;
  fp.full["template"] = template_name;
  return fp;
}

void AddStats(const data::SampleStats& s, data::SampleStats& total) {
  total.records += s.records;
  total.skipped += s.skipped;
  total.truncated += s.truncated;
  total.dropped += s.dropped;
  total.tokens += s.tokens;
}

// Tokenizes one source (weight 1); logs its counts and speed.
absl::StatusOr<std::vector<data::Sample>> TokenizeSource(data::DatasetSource source,
                                                         const data::Tokenizer& tokenizer,
                                                         const data::ChatTemplate* chat_template,
                                                         const data::TokenizeOptions& options,
                                                         const parallel::Logger& logger,
                                                         data::SampleStats& total) {
  source.weight = 1.0;
  const auto start = std::chrono::steady_clock::now();
  // Large files: a progress line at most every 5 seconds.
  auto last_report = start;
  const data::ProgressCallback progress = [&](const data::SampleStats& so_far) {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_report < std::chrono::seconds(5)) return;
    last_report = now;
    const std::chrono::duration<double> elapsed = now - start;
    logger.Info(absl::StrFormat("prepare: %s: %d records, %d tokens so far (%.0f records/s)",
                                source.path, so_far.records, so_far.tokens,
                                static_cast<double>(so_far.records) / elapsed.count()));
  };
  FULCRUM_ASSIGN_OR_RETURN(
      data::LoadedSamples loaded,
      data::LoadTextDataset({source}, tokenizer, chat_template, options, progress));
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
  const data::SampleStats& s = loaded.stats;
  logger.Info(absl::StrFormat(
      "prepare: %s: %d records -> %d samples, %d tokens (skipped %d, truncated %d, dropped %d) "
      "in %.2f s, %.0f records/s",
      source.path, s.records, loaded.samples.size(), s.tokens, s.skipped, s.truncated, s.dropped,
      took.count(), static_cast<double>(s.records) / std::max(took.count(), 1e-9)));
  AddStats(s, total);
  return std::move(loaded.samples);
}

absl::StatusOr<data::PreparedData> TokenizeAll(const recipe::Recipe& r,
                                               const std::vector<data::DatasetSource>& sources,
                                               const data::Tokenizer& tokenizer,
                                               const data::ChatTemplate* chat_template,
                                               const parallel::Logger& logger,
                                               data::SampleStats& stats) {
  const data::TokenizeOptions options = TokenizeOptionsFrom(r);
  const uint64_t seed = static_cast<uint64_t>(r.seed);
  data::PreparedData out;
  for (size_t i = 0; i < sources.size(); ++i) {
    FULCRUM_ASSIGN_OR_RETURN(
        std::vector<data::Sample> samples,
        TokenizeSource(sources[i], tokenizer, chat_template, options, logger, stats));
    Split split =
        HoldOut(std::move(samples), r.data.validation.fraction, seed, static_cast<int64_t>(i));
    for (auto& s : split.held_out) out.validation.push_back(std::move(s));
    AppendWeighted(split.kept, sources[i].weight, seed, static_cast<int64_t>(i), out.train);
  }
  if (const auto validation = ValidationSource(r.data)) {
    FULCRUM_ASSIGN_OR_RETURN(out.validation, TokenizeSource(*validation, tokenizer, chat_template,
                                                            options, logger, stats));
  }
  if (out.train.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        Source(r), ": data: no training samples left (", stats.records, " records, ", stats.skipped,
        " skipped, ", stats.dropped, " dropped; weights and validation applied)"));
  }
  return out;
}

nlohmann::json StatsJson(const data::SampleStats& s, double seconds) {
  return {{"records", s.records}, {"skipped", s.skipped}, {"truncated", s.truncated},
          {"dropped", s.dropped}, {"tokens", s.tokens},   {"seconds", seconds}};
}

absl::Status Build(const recipe::Recipe& r, const std::vector<data::DatasetSource>& sources,
                   const std::string& tokenizer_path, bool needs_template, const Fingerprint& fp,
                   const parallel::Logger& logger, PreparedInfo& info) {
  const auto start = std::chrono::steady_clock::now();
  auto tokenizer = data::Tokenizer::Load(tokenizer_path);
  if (!tokenizer.ok()) return Annotate(tokenizer.status(), Source(r) + ": data.tokenizer");
  std::unique_ptr<data::ChatTemplate> chat_template;
  if (needs_template) {
    FULCRUM_ASSIGN_OR_RETURN(chat_template, MakeTemplate(r, (*tokenizer)->config()));
  }
  data::SampleStats stats;
  FULCRUM_ASSIGN_OR_RETURN(
      const data::PreparedData prepared,
      TokenizeAll(r, sources, **tokenizer, chat_template.get(), logger, stats));
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
  FULCRUM_RETURN_IF_ERROR(
      data::WritePreparedCache(info.dir, fp.full, prepared, StatsJson(stats, took.count())));
  info.rebuilt = true;
  info.train_samples = static_cast<int64_t>(prepared.train.size());
  info.validation_samples = static_cast<int64_t>(prepared.validation.size());
  info.seconds = took.count();
  logger.Info(absl::StrFormat(
      "prepare: wrote %s: %d train samples, %d validation samples, %d tokens; %d records in "
      "%.2f s (%.0f records/s)",
      info.dir, info.train_samples, info.validation_samples, stats.tokens, stats.records,
      took.count(), static_cast<double>(stats.records) / std::max(took.count(), 1e-9)));
  return absl::OkStatus();
}

absl::Status CheckAllVocabulary(const data::PreparedData& d, int64_t vocab_size,
                                const std::string& what) {
  FULCRUM_RETURN_IF_ERROR(data::CheckVocabulary(d.train, vocab_size, what));
  return data::CheckVocabulary(d.validation, vocab_size, what + " (validation)");
}

data::LoaderOptions LoaderOptionsFrom(const recipe::Recipe& r, int64_t dp_rank, int64_t dp_size) {
  data::LoaderOptions options;
  options.global_batch = r.batch.global_batch;
  options.micro_batch = r.batch.micro_batch;
  options.seq_len = r.batch.seq_len;
  options.shuffle = r.data.shuffle;
  options.pack = r.data.pack;
  options.seed = static_cast<uint64_t>(r.seed);
  options.dp_rank = dp_rank;
  options.dp_size = dp_size;
  return options;
}

// data.format: pretokenized, read directly; a validation split as configured.
absl::StatusOr<data::PreparedData> LoadPretokenized(const recipe::Recipe& r) {
  data::PreparedData out;
  FULCRUM_ASSIGN_OR_RETURN(std::vector<data::Sample> samples,
                           data::LoadPretokenizedJsonl(r.data.path));
  Split split =
      HoldOut(std::move(samples), r.data.validation.fraction, static_cast<uint64_t>(r.seed), 0);
  out.train = std::move(split.kept);
  out.validation = std::move(split.held_out);
  if (!r.data.validation.path.empty()) {
    if (!r.data.validation.format.empty() && r.data.validation.format != "pretokenized") {
      return absl::InvalidArgumentError(
          absl::StrCat(Source(r), ": data.validation.format: ", r.data.validation.format,
                       " with pretokenized training data: the validation file must be "
                       "pretokenized too (leave format unset)"));
    }
    FULCRUM_ASSIGN_OR_RETURN(out.validation, data::LoadPretokenizedJsonl(r.data.validation.path));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::string> ResolveTokenizerPath(const recipe::Recipe& r) {
  std::error_code ec;
  if (!r.data.tokenizer.empty()) {
    fs::path path = r.data.tokenizer;
    if (fs::is_directory(path, ec)) path /= "tokenizer.json";
    if (!fs::is_regular_file(path, ec)) {
      return absl::NotFoundError(
          absl::StrCat(Source(r), ": data.tokenizer: ", path.string(), ": no such file"));
    }
    return path.string();
  }
  if (!r.model.path.empty()) {
    const fs::path path = fs::path(r.model.path) / "tokenizer.json";
    if (fs::is_regular_file(path, ec)) return path.string();
    return absl::InvalidArgumentError(
        absl::StrCat(Source(r), ": data.tokenizer: must be set for data.format ", r.data.format,
                     ": model.path (", r.model.path, ") holds no tokenizer.json"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(Source(r), ": data.tokenizer: must be set for data.format ", r.data.format,
                   " (a tokenizer.json or its directory; model.config carries none)"));
}

std::string CacheRoot(const recipe::Recipe& r) {
  if (!r.data.cache_dir.empty()) return r.data.cache_dir;
  if (!r.checkpoint.dir.empty()) return (fs::path(r.checkpoint.dir) / "data_cache").string();
  return "fulcrum_data_cache";
}

absl::StatusOr<PreparedInfo> EnsurePreparedData(const recipe::Recipe& r,
                                                const parallel::Logger& logger, bool allow_build) {
  FULCRUM_ASSIGN_OR_RETURN(const std::string tokenizer_path, ResolveTokenizerPath(r));
  const std::vector<data::DatasetSource> sources = TrainSources(r.data);
  const bool needs_template = NeedsTemplate(sources, ValidationSource(r.data));
  std::string template_name = "none";
  if (needs_template) {
    auto config = ConfigNextTo(tokenizer_path);
    if (!config.ok()) return Annotate(config.status(), Source(r) + ": data.tokenizer");
    FULCRUM_ASSIGN_OR_RETURN(const auto chat_template, MakeTemplate(r, *config));
    template_name = chat_template->name();
  }
  FULCRUM_ASSIGN_OR_RETURN(const Fingerprint fp,
                           MakeFingerprint(r, sources, tokenizer_path, template_name));
  PreparedInfo info;
  info.dir = (fs::path(CacheRoot(r)) / data::PreparedCacheKey(fp.key)).string();
  const data::CacheCheck check = data::CheckPreparedCache(info.dir, fp.full);
  info.reason = check.reason;
  if (check.state == data::CacheState::kFresh) {
    logger.Info("data: reusing prepared cache ", info.dir, " (", check.reason, ")");
    return info;
  }
  if (!allow_build) {
    return absl::FailedPreconditionError(absl::StrCat(
        info.dir, ": prepared data is not up to date (", check.reason, "); run fulcrum prepare"));
  }
  logger.Info("data: preparing ", info.dir, " (",
              check.state == data::CacheState::kMissing ? "not prepared yet" : "stale: ",
              check.state == data::CacheState::kMissing ? "" : check.reason, ")");
  FULCRUM_RETURN_IF_ERROR(Build(r, sources, tokenizer_path, needs_template, fp, logger, info));
  return info;
}

absl::StatusOr<TrainingData> BuildTrainingData(const recipe::Recipe& r, int64_t vocab_size,
                                               int64_t dp_rank, int64_t dp_size,
                                               const parallel::Logger& logger, bool allow_build) {
  data::PreparedData prepared;
  std::string description;
  if (recipe::UsesTextData(r.data)) {
    FULCRUM_ASSIGN_OR_RETURN(const PreparedInfo info, EnsurePreparedData(r, logger, allow_build));
    FULCRUM_ASSIGN_OR_RETURN(prepared, data::LoadPreparedCache(info.dir));
    description = absl::StrCat("prepared cache ", info.dir);
    FULCRUM_RETURN_IF_ERROR(CheckAllVocabulary(
        prepared, vocab_size,
        absl::StrCat(info.dir, " (tokenized by ", ResolveTokenizerPath(r).value_or("?"), ")")));
  } else {
    FULCRUM_ASSIGN_OR_RETURN(prepared, LoadPretokenized(r));
    description = r.data.path;
    FULCRUM_RETURN_IF_ERROR(CheckAllVocabulary(prepared, vocab_size, r.data.path));
  }
  FULCRUM_ASSIGN_OR_RETURN(
      data::DataLoader loader,
      data::DataLoader::Create(std::move(prepared.train), LoaderOptionsFrom(r, dp_rank, dp_size)));
  return TrainingData{std::move(loader), std::move(prepared.validation), std::move(description)};
}

absl::StatusOr<data::DataLoader> BuildDataLoader(const recipe::Recipe& recipe, int64_t vocab_size,
                                                 int64_t dp_rank, int64_t dp_size) {
  const parallel::Logger logger(0, false);
  FULCRUM_ASSIGN_OR_RETURN(
      TrainingData data,
      BuildTrainingData(recipe, vocab_size, dp_rank, dp_size, logger, /*allow_build=*/true));
  return std::move(data.loader);
}

}  // namespace fulcrum::loop
