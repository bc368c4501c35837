// Text datasets: JSONL records of several formats turned into training
// samples (ids + labels) with a tokenizer and, for conversations, a chat
// template.
//
// Defines: TextFormat, FieldMap, DatasetSource, TokenizeOptions, SampleStats,
// LoadedSamples, ParseTextFormat, LoadTextDataset.
//
// Formats (one JSON object per line):
//   text:        {"text": "..."}                        continued pre-training, every token a
//   target instruction: {"instruction": "...", "input": "...", "output": "..."}   (alpaca; "input"
//   optional,
//                "system" optional) -> user = instruction [+ "\n\n" + input], assistant = output
//   messages:    {"messages": [{"role": "user", "content": "..."}, ...]}   (OpenAI style)
//   sharegpt:    {"conversations": [{"from": "human", "value": "..."}, ...]} (from: system,
//   human/user,
//                gpt/assistant)
// Field names are remappable per dataset (FieldMap).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/dataset/pretokenized_dataset.h"
#include "data/template/chat_template.h"
#include "data/tokenizer/tokenizer.h"

namespace fulcrum::data {

enum class TextFormat { kText, kInstruction, kMessages, kShareGpt };

// "text" | "instruction" | "messages" | "sharegpt"; error lists the options.
absl::StatusOr<TextFormat> ParseTextFormat(const std::string& name);

// Record key names, by the logical name: for instruction {instruction, input, output, system},
// for text {text}, for messages {messages, role, content}, for sharegpt {conversations, from,
// value}. Missing entries keep the default (the logical name itself).
using FieldMap = std::map<std::string, std::string>;

struct DatasetSource {
  std::string path;  // JSONL file
  TextFormat format = TextFormat::kText;
  FieldMap fields;
  double weight = 1.0;  // > 0: per epoch each sample appears floor(weight) times, plus a
                        // seed-deterministic fraction (weight - floor) of the samples once more
};

enum class ErrorPolicy { kFail, kSkip };         // data.on_error
enum class OverflowPolicy { kTruncate, kDrop };  // data.truncation: samples longer than seq_len

struct TokenizeOptions {
  int64_t seq_len = 512;
  OverflowPolicy overflow = OverflowPolicy::kTruncate;
  ErrorPolicy on_error = ErrorPolicy::kFail;
  RenderOptions render;  // train_on_prompt, mask_history (add_generation_prompt ignored)
  uint64_t seed = 1234;  // fractional weights' subsampling
  int num_threads = 0;   // tokenization threads, <= 0: all cores
};

struct SampleStats {
  int64_t records = 0;    // non-blank lines read
  int64_t skipped = 0;    // bad records skipped under on_error: skip
  int64_t truncated = 0;  // longer than seq_len, cut
  int64_t dropped = 0;    // longer than seq_len, dropped (overflow: drop)
  int64_t tokens = 0;     // tokens in the returned samples
};

// Called after every chunk of records a source has tokenized (for progress
// display of large files), with the counts so far; may be empty.
using ProgressCallback = std::function<void(const SampleStats& so_far)>;

struct LoadedSamples {
  std::vector<Sample> samples;
  SampleStats stats;
};

// Reads, tokenizes and mixes the sources, in source order then line order
// (weights repeat samples). Text samples are BOS (when the tokenizer's
// post-processor adds none and tokenizer_config says add_bos_token) + text
// + EOS (when an eos_token is known); conversation samples are the
// template's rendering tokenized segment by segment, labels -100 outside
// target segments. `chat_template` may be null when no source needs one.
// Errors ("PATH:LINE: what"): unreadable file, invalid JSON, not an object,
// invalid UTF-8 (byte offset), a missing or mistyped field (names it), a
// conversation the template rejects; under on_error: skip these are counted
// instead. "no usable samples" (with the counts) when nothing remains.
absl::StatusOr<LoadedSamples> LoadTextDataset(const std::vector<DatasetSource>& sources,
                                              const Tokenizer& tokenizer,
                                              const ChatTemplate* chat_template,
                                              const TokenizeOptions& options,
                                              const ProgressCallback& on_progress = {});

}  // namespace fulcrum::data
