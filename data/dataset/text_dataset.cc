#include "data/dataset/text_dataset.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/check.h"
#include "core/status.h"
#include "data/dataset/jsonl_reader.h"
#include "data/dataset/mixture.h"
#include "data/dataset/record_formats.h"

namespace fulcrum::data {
namespace {

// Records parsed and rendered before a batch goes to the tokenizer's thread
// pool: large enough to keep the threads busy, small enough that only the
// chunk's text (never the whole file) is held.
constexpr size_t kChunkRecords = 2048;

// Token ids of the tokenizer's special tokens as the training path uses them.
struct SpecialIds {
  // Text format: what goes before the text. The post-processor's own prefix
  // (e.g. Llama-3's <|begin_of_text|>) when it adds one; else BOS when
  // tokenizer_config says add_bos_token (transformers' slow tokenizers do
  // this although tokenizer.json does not, e.g. DeepSeek-V3).
  std::vector<int32_t> text_prefix;
  // Conversations: prepended (as a non-target) when add_bos_token is set and
  // the rendered text does not already start with the BOS string (most
  // templates write it themselves).
  std::optional<int32_t> chat_bos;
  std::string bos_text;
  std::optional<int32_t> eos;  // appended to text samples (a target)
};

SpecialIds FindSpecialIds(const Tokenizer& tokenizer) {
  const TokenizerConfig& config = tokenizer.config();
  SpecialIds ids;
  std::optional<int32_t> bos;
  if (config.bos_token.has_value()) bos = tokenizer.TokenToId(*config.bos_token);
  if (config.eos_token.has_value()) ids.eos = tokenizer.TokenToId(*config.eos_token);
  // What the post-processor puts in front: the ids of Encode(probe, true)
  // before those of Encode(probe, false).
  const std::string probe = "a";
  const std::vector<int32_t> with = tokenizer.Encode(probe, /*add_special_tokens=*/true);
  const std::vector<int32_t> without = tokenizer.Encode(probe, /*add_special_tokens=*/false);
  const auto at = std::search(with.begin(), with.end(), without.begin(), without.end());
  if (!without.empty() && at != with.end()) ids.text_prefix.assign(with.begin(), at);
  if (ids.text_prefix.empty() && config.add_bos_token && bos.has_value()) {
    ids.text_prefix = {*bos};
  }
  if (config.add_bos_token && bos.has_value()) {
    ids.chat_bos = bos;
    ids.bos_text = *config.bos_token;
  }
  return ids;
}

// One record ready for the tokenizer: special ids around text segments.
struct PlannedSample {
  int64_t line = 0;
  std::vector<int32_t> prefix;  // ids before the segments
  bool prefix_is_target = false;
  std::vector<RenderedSegment> segments;
  std::vector<int32_t> suffix;  // ids after the segments (always targets)
};

struct LoadContext {
  const Tokenizer& tokenizer;
  const ChatTemplate* chat_template;
  const TokenizeOptions& options;
  SpecialIds special;
  SampleStats stats;  // tokens: of the samples kept so far (before weighting)
  ProgressCallback on_progress;
};

absl::StatusOr<PlannedSample> PlanRecord(const JsonlLine& line, const DatasetSource& source,
                                         const LoadContext& context) {
  FULCRUM_ASSIGN_OR_RETURN(const nlohmann::json object, ParseJsonObjectLine(line.text));
  FULCRUM_ASSIGN_OR_RETURN(TextRecord record,
                           ParseTextRecord(object, source.format, source.fields));
  PlannedSample plan;
  plan.line = line.number;
  if (!record.is_conversation) {
    plan.prefix = context.special.text_prefix;
    plan.prefix_is_target = true;
    plan.segments.push_back(RenderedSegment{std::move(record.text), /*is_target=*/true});
    if (context.special.eos.has_value()) plan.suffix = {*context.special.eos};
    return plan;
  }
  RenderOptions render = context.options.render;
  render.add_generation_prompt = false;  // training samples hold the answer
  FULCRUM_CHECK(context.chat_template != nullptr, "checked before reading");
  FULCRUM_ASSIGN_OR_RETURN(RenderedChat chat,
                           context.chat_template->Render(record.conversation, render));
  plan.segments = std::move(chat.segments);
  const bool starts_with_bos =
      !plan.segments.empty() && plan.segments.front().text.rfind(context.special.bos_text, 0) == 0;
  if (context.special.chat_bos.has_value() && !starts_with_bos) {
    plan.prefix = {*context.special.chat_bos};
  }
  return plan;
}

// Builds the sample of `plan` from its segments' ids (`segment_ids`, in
// order); false when it is dropped for length.
bool AssembleSample(const PlannedSample& plan,
                    std::vector<std::vector<int32_t>>::const_iterator segment_ids,
                    LoadContext* context, Sample* sample) {
  sample->line = plan.line;
  const auto append = [sample](const std::vector<int32_t>& ids, bool target) {
    for (const int32_t id : ids) {
      sample->input_ids.push_back(id);
      sample->labels.push_back(target ? id : kIgnoreIndex);
    }
  };
  append(plan.prefix, plan.prefix_is_target);
  for (const RenderedSegment& segment : plan.segments) append(*segment_ids++, segment.is_target);
  append(plan.suffix, /*target=*/true);
  const auto seq_len = static_cast<size_t>(context->options.seq_len);
  if (sample->input_ids.size() <= seq_len) return true;
  if (context->options.overflow == OverflowPolicy::kDrop) {
    ++context->stats.dropped;
    return false;
  }
  ++context->stats.truncated;
  sample->input_ids.resize(seq_len);
  sample->labels.resize(seq_len);
  return true;
}

// `status` at PATH:LINE: returned under on_error: fail, counted under skip.
absl::Status RecordError(const absl::Status& status, const std::string& path, int64_t line,
                         LoadContext* context) {
  if (context->options.on_error == ErrorPolicy::kSkip) {
    ++context->stats.skipped;
    return absl::OkStatus();
  }
  return Annotate(status, absl::StrCat(path, ":", line));
}

// The ids of each segment of `plan` such that their concatenation is the
// tokenization of the WHOLE rendered text (what transformers'
// apply_chat_template(tokenize=True) gives). `separate` holds each segment
// encoded alone and `whole` the whole text. Usually the two agree (segment
// boundaries sit after special tokens or newlines); where a tokenizer joins
// across a boundary, e.g. the Prepend("▁") normalizer of Llama-2/Mistral
// starting every stretch between special tokens, the boundaries are found by
// encoding growing prefixes of the text: a segment ends where the prefix's
// ids stop agreeing with the whole text's, so a token that straddles a
// boundary belongs to the later segment.
std::vector<std::vector<int32_t>> SegmentIds(const PlannedSample& plan,
                                             std::vector<std::vector<int32_t>> separate,
                                             const std::vector<int32_t>& whole,
                                             const Tokenizer& tokenizer) {
  size_t total = 0;
  for (const auto& ids : separate) total += ids.size();
  if (total == whole.size()) {
    size_t at = 0;
    bool same = true;
    for (const auto& ids : separate) {
      same = same && std::equal(ids.begin(), ids.end(), whole.begin() + at);
      at += ids.size();
    }
    if (same) return separate;
  }
  std::vector<std::vector<int32_t>> result(plan.segments.size());
  std::string prefix;
  size_t begin = 0;
  for (size_t i = 0; i < plan.segments.size(); ++i) {
    prefix += plan.segments[i].text;
    size_t end = whole.size();
    if (i + 1 < plan.segments.size()) {
      const std::vector<int32_t> ids = tokenizer.Encode(prefix, /*add_special_tokens=*/false);
      end = static_cast<size_t>(
          std::mismatch(ids.begin(), ids.end(), whole.begin(), whole.end()).first - ids.begin());
      end = std::max(end, begin);
    }
    result[i].assign(whole.begin() + begin, whole.begin() + end);
    begin = end;
  }
  return result;
}

// Tokenizes the planned records' segments on the thread pool, appending
// their samples to *out in record order.
absl::Status TokenizeChunk(const std::vector<PlannedSample>& plans, const std::string& path,
                           LoadContext* context, std::vector<Sample>* out) {
  // Per plan: its segments, then (with several segments) the whole text.
  std::vector<std::string> texts;
  for (const PlannedSample& plan : plans) {
    for (const RenderedSegment& segment : plan.segments) texts.push_back(segment.text);
    if (plan.segments.size() > 1) texts.push_back(RenderedChat{plan.segments}.Text());
  }
  std::vector<std::vector<int32_t>> ids = context->tokenizer.EncodeBatch(
      texts, /*add_special_tokens=*/false, context->options.num_threads);
  FULCRUM_CHECK(ids.size() == texts.size(), "EncodeBatch gave ", ids.size(), " for ", texts.size());
  auto next = ids.begin();
  for (const PlannedSample& plan : plans) {
    const auto count = static_cast<std::ptrdiff_t>(plan.segments.size());
    std::vector<std::vector<int32_t>> segment_ids(std::make_move_iterator(next),
                                                  std::make_move_iterator(next + count));
    next += count;
    if (count > 1) {
      segment_ids = SegmentIds(plan, std::move(segment_ids), *next, context->tokenizer);
      ++next;
    }
    Sample sample;
    const bool kept = AssembleSample(plan, segment_ids.cbegin(), context, &sample);
    if (!kept) continue;
    if (sample.input_ids.empty()) {
      FULCRUM_RETURN_IF_ERROR(RecordError(absl::InvalidArgumentError("the record gives no tokens"),
                                          path, plan.line, context));
      continue;
    }
    context->stats.tokens += static_cast<int64_t>(sample.input_ids.size());
    out->push_back(std::move(sample));
  }
  return absl::OkStatus();
}

// Reads one source, streaming, into its samples (before weighting).
absl::StatusOr<std::vector<Sample>> LoadSource(const DatasetSource& source, LoadContext* context) {
  FULCRUM_ASSIGN_OR_RETURN(JsonlReader reader, JsonlReader::Open(source.path));
  std::vector<Sample> samples;
  std::vector<PlannedSample> chunk;
  JsonlLine line;
  while (reader.Next(&line)) {
    ++context->stats.records;
    auto plan = PlanRecord(line, source, *context);
    if (!plan.ok()) {
      FULCRUM_RETURN_IF_ERROR(RecordError(plan.status(), source.path, line.number, context));
      continue;
    }
    chunk.push_back(*std::move(plan));
    if (chunk.size() >= kChunkRecords) {
      FULCRUM_RETURN_IF_ERROR(TokenizeChunk(chunk, source.path, context, &samples));
      chunk.clear();
      if (context->on_progress) context->on_progress(context->stats);
    }
  }
  FULCRUM_RETURN_IF_ERROR(reader.status());
  FULCRUM_RETURN_IF_ERROR(TokenizeChunk(chunk, source.path, context, &samples));
  return samples;
}

absl::Status ValidateInputs(const std::vector<DatasetSource>& sources,
                            const ChatTemplate* chat_template, const TokenizeOptions& options) {
  if (sources.empty()) return absl::InvalidArgumentError("no dataset sources given");
  if (options.seq_len <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("seq_len = ", options.seq_len, " must be > 0"));
  }
  for (const DatasetSource& source : sources) {
    if (!std::isfinite(source.weight) || source.weight <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(source.path, ": weight = ", source.weight, " must be > 0"));
    }
    FULCRUM_RETURN_IF_ERROR(CheckFieldMap(source.fields, source.format, source.path));
    if (source.format != TextFormat::kText && chat_template == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat(source.path, ": a conversation format needs a chat template"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TextFormat> ParseTextFormat(const std::string& name) {
  if (name == "text") return TextFormat::kText;
  if (name == "instruction") return TextFormat::kInstruction;
  if (name == "messages") return TextFormat::kMessages;
  if (name == "sharegpt") return TextFormat::kShareGpt;
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown dataset format \"", name, "\" (expected text, instruction, messages, sharegpt)"));
}

absl::StatusOr<LoadedSamples> LoadTextDataset(const std::vector<DatasetSource>& sources,
                                              const Tokenizer& tokenizer,
                                              const ChatTemplate* chat_template,
                                              const TokenizeOptions& options,
                                              const ProgressCallback& on_progress) {
  FULCRUM_RETURN_IF_ERROR(ValidateInputs(sources, chat_template, options));
  LoadContext context{tokenizer, chat_template, options, FindSpecialIds(tokenizer),
                      {},        on_progress};
  LoadedSamples loaded;
  std::vector<std::string> paths;
  for (size_t i = 0; i < sources.size(); ++i) {
    paths.push_back(sources[i].path);
    FULCRUM_ASSIGN_OR_RETURN(std::vector<Sample> samples, LoadSource(sources[i], &context));
    WeightedRepeat(samples, sources[i].weight, options.seed, static_cast<int64_t>(i),
                   &loaded.samples);
  }
  loaded.stats = context.stats;
  loaded.stats.tokens = 0;  // of the returned (weighted) samples
  for (const Sample& sample : loaded.samples) {
    loaded.stats.tokens += static_cast<int64_t>(sample.input_ids.size());
  }
  if (loaded.samples.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("no usable samples in ", absl::StrJoin(paths, ", "), ": ",
                     loaded.stats.records, " records, ", loaded.stats.skipped, " skipped, ",
                     loaded.stats.dropped, " dropped (longer than seq_len ", options.seq_len, ")"));
  }
  return loaded;
}

}  // namespace fulcrum::data
