#include "data/tokenizer/tokenizer.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/status.h"
#include "data/tokenizer/added_vocabulary.h"
#include "data/tokenizer/bpe_model.h"
#include "data/tokenizer/decoder.h"
#include "data/tokenizer/json_util.h"
#include "data/tokenizer/normalizer.h"
#include "data/tokenizer/post_processor.h"
#include "data/tokenizer/pre_tokenizer.h"

namespace fulcrum::data {

// The parsed components of one tokenizer.json, immutable after FromJson.
class TokenizerPipeline {
 public:
  std::unique_ptr<Normalizer> normalizer;       // may be null
  std::unique_ptr<PreTokenizer> pre_tokenizer;  // may be null
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<PostProcessor> post_processor;  // may be null
  std::unique_ptr<Decoder> decoder;               // may be null
  AddedVocabulary added;
  // Added tokens win over the model vocab for both directions (reference).
  std::unordered_map<std::string, int32_t> added_by_content;
  std::unordered_map<int32_t, std::string> added_by_id;
  std::unordered_set<std::string> special_contents;
  int64_t vocab_size = 0;

  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens) const {
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 4);
    for (TextSegment& segment : added.Split(text, normalizer.get())) {
      if (segment.token_id >= 0) {
        ids.push_back(segment.token_id);
        continue;
      }
      Pieces pieces{std::move(segment.text)};
      if (pre_tokenizer != nullptr) pre_tokenizer->Split(&pieces, segment.at_text_start);
      for (const std::string& piece : pieces) model->Tokenize(piece, &ids);
    }
    if (add_special_tokens && post_processor != nullptr) post_processor->AddSpecialTokens(&ids);
    return ids;
  }

  const std::string* IdToToken(int32_t id) const {
    const auto it = added_by_id.find(id);
    if (it != added_by_id.end()) return &it->second;
    return model->IdToToken(id);
  }
};

namespace {

// `root[key]`, or null when absent.
const nlohmann::json& MemberOrNull(const nlohmann::json& root, const std::string& key) {
  static const nlohmann::json* const kNull = new nlohmann::json();
  const auto it = root.find(key);
  return it == root.end() ? *kNull : *it;
}

absl::StatusOr<std::unique_ptr<BpeModel>> ParseModel(const nlohmann::json& root,
                                                     const std::string& source) {
  FULCRUM_ASSIGN_OR_RETURN(const nlohmann::json* model, JsonField(root, source + ":", "model"));
  const std::string key_path = absl::StrCat(source, ": model");
  // "type" may be absent in older files (serde tries each model in turn).
  if (const nlohmann::json* type = JsonOptionalField(*model, "type")) {
    FULCRUM_ASSIGN_OR_RETURN(std::string name, JsonString(*type, key_path + ".type"));
    if (name != "BPE") {
      return JsonError(key_path + ".type", absl::StrCat("not supported yet: model type ", name));
    }
  }
  return BpeModel::Parse(*model, key_path);
}

absl::Status BuildPipeline(const nlohmann::json& root, const std::string& source,
                           TokenizerPipeline* pipeline) {
  if (!root.is_object()) return JsonError(source, "expected a JSON object");
  FULCRUM_ASSIGN_OR_RETURN(pipeline->model, ParseModel(root, source));
  FULCRUM_ASSIGN_OR_RETURN(pipeline->normalizer, ParseNormalizer(MemberOrNull(root, "normalizer"),
                                                                 source + ": normalizer"));
  FULCRUM_ASSIGN_OR_RETURN(
      pipeline->pre_tokenizer,
      ParsePreTokenizer(MemberOrNull(root, "pre_tokenizer"), source + ": pre_tokenizer"));
  FULCRUM_ASSIGN_OR_RETURN(
      pipeline->post_processor,
      ParsePostProcessor(MemberOrNull(root, "post_processor"), source + ": post_processor"));
  FULCRUM_ASSIGN_OR_RETURN(pipeline->decoder,
                           ParseDecoder(MemberOrNull(root, "decoder"), source + ": decoder"));
  FULCRUM_ASSIGN_OR_RETURN(
      pipeline->added,
      AddedVocabulary::Parse(MemberOrNull(root, "added_tokens"), source + ": added_tokens"));
  pipeline->vocab_size = pipeline->model->vocab_size();
  for (const AddedToken& token : pipeline->added.tokens()) {
    pipeline->added_by_content[token.content] = token.id;
    pipeline->added_by_id[token.id] = token.content;
    if (token.special) pipeline->special_contents.insert(token.content);
    pipeline->vocab_size = std::max<int64_t>(pipeline->vocab_size, int64_t{token.id} + 1);
  }
  return absl::OkStatus();
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<TokenizerPipeline> pipeline, TokenizerConfig config,
                     std::string source)
    : pipeline_(std::move(pipeline)), config_(std::move(config)), source_(std::move(source)) {}

Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::shared_ptr<const Tokenizer>> Tokenizer::Load(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code error;
  fs::path file(path);
  if (fs::is_directory(file, error)) {
    file /= "tokenizer.json";
    if (!fs::exists(file, error)) {
      return absl::NotFoundError(absl::StrCat(path, ": no tokenizer.json in this directory"));
    }
  }
  FULCRUM_ASSIGN_OR_RETURN(std::string json, ReadFileToString(file.string()));
  TokenizerConfig config;
  const fs::path config_path = file.parent_path() / "tokenizer_config.json";
  if (fs::exists(config_path, error)) {
    FULCRUM_ASSIGN_OR_RETURN(config, LoadTokenizerConfig(config_path.string()));
  }
  return FromJson(json, file.string(), std::move(config));
}

absl::StatusOr<std::shared_ptr<const Tokenizer>> Tokenizer::FromJson(std::string_view json,
                                                                     const std::string& source,
                                                                     TokenizerConfig config) {
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(json.begin(), json.end());
  } catch (const nlohmann::json::exception& e) {
    const auto* parse_error = dynamic_cast<const nlohmann::json::parse_error*>(&e);
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": invalid JSON", parse_error ? absl::StrCat(" at byte ", parse_error->byte) : "",
        ": ", e.what()));
  }
  auto pipeline = std::make_unique<TokenizerPipeline>();
  try {
    FULCRUM_RETURN_IF_ERROR(BuildPipeline(root, source, pipeline.get()));
  } catch (const nlohmann::json::exception& e) {
    // A wrong JSON type that a component did not check first.
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", e.what()));
  }
  return std::shared_ptr<const Tokenizer>(
      new Tokenizer(std::move(pipeline), std::move(config), source));
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  return pipeline_->Encode(text, add_special_tokens);
}

std::vector<std::vector<int32_t>> Tokenizer::EncodeBatch(const std::vector<std::string>& texts,
                                                         bool add_special_tokens,
                                                         int num_threads) const {
  std::vector<std::vector<int32_t>> results(texts.size());
  if (num_threads <= 0)
    num_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  num_threads = static_cast<int>(std::min<size_t>(num_threads, texts.size()));
  // Texts are claimed one at a time so that long documents balance out.
  std::atomic<size_t> next{0};
  const auto work = [&] {
    for (size_t i = next++; i < texts.size(); i = next++) {
      results[i] = pipeline_->Encode(texts[i], add_special_tokens);
    }
  };
  std::vector<std::thread> threads;
  for (int t = 1; t < num_threads; ++t) threads.emplace_back(work);
  work();
  for (std::thread& thread : threads) thread.join();
  return results;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    const std::string* token = pipeline_->IdToToken(id);
    if (token == nullptr) continue;
    if (skip_special_tokens && pipeline_->special_contents.count(*token) > 0) continue;
    tokens.push_back(*token);
  }
  return DecodeTokens(pipeline_->decoder.get(), std::move(tokens));
}

int64_t Tokenizer::vocab_size() const { return pipeline_->vocab_size; }

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  const auto it = pipeline_->added_by_content.find(std::string(token));
  if (it != pipeline_->added_by_content.end()) return it->second;
  return pipeline_->model->TokenToId(token);
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  const std::string* token = pipeline_->IdToToken(id);
  if (token == nullptr) return std::nullopt;
  return *token;
}

bool Tokenizer::IsSpecial(int32_t id) const {
  const auto it = pipeline_->added_by_id.find(id);
  return it != pipeline_->added_by_id.end() && pipeline_->special_contents.count(it->second) > 0;
}

}  // namespace fulcrum::data
