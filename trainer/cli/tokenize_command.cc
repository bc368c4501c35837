// fulcrum tokenize --tokenizer PATH [--no-special]
//
// A co-process for outside checks: reads JSONL lines
//   {"text": "...", "add_special_tokens": true|false}
// on stdin ("add_special_tokens" optional: absent, --no-special decides, by
// default special tokens are added) and writes {"ids": [...]} per line on
// stdout, in order, flushing after each line so a caller can write one line
// and read its answer before writing the next. stdout carries only these
// lines; errors go to stderr (through the dispatcher) and end the process
// non-zero, naming the input line.
//
// Hidden benchmark mode (used by scripts/bench_tokenizer.sh, not in usage):
//   fulcrum tokenize --tokenizer PATH --bench CHUNKS.jsonl [--threads N] [--no-special]
// encodes every {"text"} chunk of the file, sequentially (threads 1) or with
// EncodeBatch (threads > 1), and prints one JSON line of throughput.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status.h"
#include "data/tokenizer/tokenizer.h"
#include "data/tokenizer/utf8.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/flags.h"

namespace fulcrum::cli {
namespace {

struct TokenizeRequest {
  std::string text;
  bool add_special_tokens = true;
};

// One input line -> request. `where` names the line in errors ("stdin line 3").
absl::StatusOr<TokenizeRequest> ParseRequest(const std::string& line, const std::string& where,
                                             bool default_add_special) {
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": not JSON: ", e.what()));
  }
  if (!json.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": expected a JSON object {\"text\": ...}, got ", json.type_name()));
  }
  TokenizeRequest request;
  request.add_special_tokens = default_add_special;
  const auto text = json.find("text");
  if (text == json.end()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": missing field \"text\""));
  }
  if (!text->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": field \"text\" must be a string, got ", text->type_name()));
  }
  request.text = text->get<std::string>();
  // nlohmann validates UTF-8 while parsing; this also guards \u escapes.
  if (const auto bad = data::FindInvalidUtf8(request.text)) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": field \"text\" is not valid UTF-8 at byte ", *bad));
  }
  const auto add_special = json.find("add_special_tokens");
  if (add_special != json.end()) {
    if (!add_special->is_boolean()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": field \"add_special_tokens\" must be true or false, got ",
                       add_special->dump()));
    }
    request.add_special_tokens = add_special->get<bool>();
  }
  return request;
}

std::string IdsLine(const std::vector<int32_t>& ids) {
  std::string out = "{\"ids\": [";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) out += ", ";
    absl::StrAppend(&out, ids[i]);
  }
  out += "]}\n";
  return out;
}

absl::Status ServeStdin(const data::Tokenizer& tokenizer, bool default_add_special) {
  std::string line;
  int64_t line_number = 0;
  while (std::getline(std::cin, line)) {
    ++line_number;
    FULCRUM_ASSIGN_OR_RETURN(
        const TokenizeRequest request,
        ParseRequest(line, absl::StrCat("stdin line ", line_number), default_add_special));
    const std::string out = IdsLine(tokenizer.Encode(request.text, request.add_special_tokens));
    if (std::fwrite(out.data(), 1, out.size(), stdout) != out.size() || std::fflush(stdout) != 0) {
      return absl::UnavailableError(
          absl::StrCat("fulcrum tokenize: writing the answer to stdin line ", line_number,
                       " failed (stdout closed?)"));
    }
  }
  if (std::cin.bad()) return absl::DataLossError("fulcrum tokenize: reading stdin failed");
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ReadChunks(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::vector<std::string> chunks;
  std::string line;
  int64_t line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    FULCRUM_ASSIGN_OR_RETURN(TokenizeRequest request,
                             ParseRequest(line, absl::StrCat(path, ":", line_number), false));
    chunks.push_back(std::move(request.text));
  }
  return chunks;
}

// Throughput of Encode over the chunks (MB = 1e6 bytes of UTF-8 input).
absl::Status RunBench(const data::Tokenizer& tokenizer, const std::string& path, int threads,
                      bool add_special) {
  FULCRUM_ASSIGN_OR_RETURN(const std::vector<std::string> chunks, ReadChunks(path));
  int64_t bytes = 0;
  for (const std::string& chunk : chunks) bytes += static_cast<int64_t>(chunk.size());
  // Warm-up, as the reference bench does (first-touch of the vocabulary).
  if (!chunks.empty()) tokenizer.Encode(chunks.front(), add_special);
  int64_t tokens = 0;
  const auto start = std::chrono::steady_clock::now();
  if (threads == 1) {
    for (const std::string& chunk : chunks) {
      tokens += static_cast<int64_t>(tokenizer.Encode(chunk, add_special).size());
    }
  } else {
    for (const auto& ids : tokenizer.EncodeBatch(chunks, add_special, threads)) {
      tokens += static_cast<int64_t>(ids.size());
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%s\n",
              absl::StrFormat("{\"chunks\": %d, \"bytes\": %d, \"tokens\": %d, "
                              "\"threads\": %d, \"seconds\": %.6f, \"mb_per_s\": %.3f}",
                              chunks.size(), bytes, tokens, threads, seconds, bytes / 1e6 / seconds)
                  .c_str());
  std::fflush(stdout);
  return absl::OkStatus();
}

}  // namespace

absl::Status RunTokenize(const Args& args, const parallel::World& world) {
  FlagSpec spec;
  spec.valued = {"tokenizer", "bench", "threads"};
  spec.switches = {"no-special"};
  spec.required = {"tokenizer"};
  FULCRUM_ASSIGN_OR_RETURN(const ParsedFlags flags, ParseFlags("tokenize", args, spec));
  if (!flags.positional.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "fulcrum tokenize: unexpected argument '", flags.positional.front(),
        "' (usage: fulcrum tokenize --tokenizer PATH [--no-special], JSONL on stdin)"));
  }
  if (world.size() > 1) {
    return absl::InvalidArgumentError(absl::StrCat("fulcrum tokenize runs on one rank, got ",
                                                   world.size(), ": start it without mpirun"));
  }
  int threads = 1;
  if (!flags.Get("threads").empty() &&
      (!absl::SimpleAtoi(flags.Get("threads"), &threads) || threads < 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("fulcrum tokenize: --threads: expected a positive integer, got '",
                     flags.Get("threads"), "'"));
  }
  auto tokenizer = data::Tokenizer::Load(flags.Get("tokenizer"));
  if (!tokenizer.ok()) {
    return Annotate(tokenizer.status(), "fulcrum tokenize: --tokenizer " + flags.Get("tokenizer"));
  }
  const bool default_add_special = !flags.Has("no-special");
  if (!flags.Get("bench").empty()) {
    return RunBench(**tokenizer, flags.Get("bench"), threads, default_add_special);
  }
  return ServeStdin(**tokenizer, default_add_special);
}

}  // namespace fulcrum::cli
