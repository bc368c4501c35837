#include "data/tokenizer/post_processor.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status.h"
#include "data/tokenizer/json_util.h"

namespace fulcrum::data {
namespace {

// The "single" template flattened: ids before and after the sequence.
class TemplateProcessor final : public PostProcessor {
 public:
  TemplateProcessor(std::vector<int32_t> before, std::vector<int32_t> after)
      : before_(std::move(before)), after_(std::move(after)) {}

  void AddSpecialTokens(std::vector<int32_t>* ids) const override {
    ids->insert(ids->begin(), before_.begin(), before_.end());
    ids->insert(ids->end(), after_.begin(), after_.end());
  }

 private:
  std::vector<int32_t> before_;
  std::vector<int32_t> after_;
};

// ByteLevel (offsets only) and a Sequence without id changes.
class NoOpProcessor final : public PostProcessor {
 public:
  void AddSpecialTokens(std::vector<int32_t>*) const override {}
};

class SequenceProcessor final : public PostProcessor {
 public:
  explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> processors)
      : processors_(std::move(processors)) {}

  void AddSpecialTokens(std::vector<int32_t>* ids) const override {
    for (const auto& processor : processors_) processor->AddSpecialTokens(ids);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> processors_;
};

absl::StatusOr<std::unique_ptr<PostProcessor>> ParseTemplate(const nlohmann::json& json,
                                                             const std::string& key_path) {
  const std::string tokens_path = absl::StrCat(key_path, ".special_tokens");
  const nlohmann::json* special_tokens = JsonOptionalField(json, "special_tokens");
  if (special_tokens != nullptr && !special_tokens->is_object()) {
    return JsonError(tokens_path, "expected an object");
  }
  const std::string single_path = absl::StrCat(key_path, ".single");
  FULCRUM_ASSIGN_OR_RETURN(const nlohmann::json* single, JsonField(json, key_path, "single"));
  if (!single->is_array()) return JsonError(single_path, "expected an array of pieces");
  std::vector<int32_t> before, after;
  bool seen_sequence = false;
  for (size_t i = 0; i < single->size(); ++i) {
    const std::string piece_path = absl::StrCat(single_path, "[", i, "]");
    const nlohmann::json& piece = (*single)[i];
    if (const nlohmann::json* sequence = JsonOptionalField(piece, "Sequence")) {
      // "A" is the input; "B" has nothing to place in a single encoding.
      if (sequence->value("id", std::string("A")) == "A") seen_sequence = true;
      continue;
    }
    const nlohmann::json* special = JsonOptionalField(piece, "SpecialToken");
    if (special == nullptr)
      return JsonError(piece_path, "expected {\"SpecialToken\"|\"Sequence\": ...}");
    FULCRUM_ASSIGN_OR_RETURN(const nlohmann::json* id_json,
                             JsonField(*special, absl::StrCat(piece_path, ".SpecialToken"), "id"));
    FULCRUM_ASSIGN_OR_RETURN(std::string name,
                             JsonString(*id_json, absl::StrCat(piece_path, ".SpecialToken.id")));
    const nlohmann::json* token =
        special_tokens == nullptr ? nullptr : JsonOptionalField(*special_tokens, name);
    if (token == nullptr) {
      return JsonError(tokens_path,
                       absl::StrCat("missing special token \"", name, "\" used by ", piece_path));
    }
    const std::string ids_path = absl::StrCat(tokens_path, "[\"", name, "\"].ids");
    FULCRUM_ASSIGN_OR_RETURN(
        const nlohmann::json* ids,
        JsonField(*token, absl::StrCat(tokens_path, "[\"", name, "\"]"), "ids"));
    if (!ids->is_array()) return JsonError(ids_path, "expected an array of ids");
    for (size_t k = 0; k < ids->size(); ++k) {
      FULCRUM_ASSIGN_OR_RETURN(int32_t id, JsonId((*ids)[k], absl::StrCat(ids_path, "[", k, "]")));
      (seen_sequence ? after : before).push_back(id);
    }
  }
  return std::unique_ptr<PostProcessor>(new TemplateProcessor(std::move(before), std::move(after)));
}

// RobertaProcessing / BertProcessing: cls A sep, with "cls": ["<s>", 0].
absl::StatusOr<std::unique_ptr<PostProcessor>> ParseClsSep(const nlohmann::json& json,
                                                           const std::string& key_path) {
  std::vector<int32_t> ids;
  for (const std::string key : {"cls", "sep"}) {
    const std::string path = absl::StrCat(key_path, ".", key);
    FULCRUM_ASSIGN_OR_RETURN(const nlohmann::json* pair, JsonField(json, key_path, key));
    if (!pair->is_array() || pair->size() != 2) return JsonError(path, "expected [token, id]");
    FULCRUM_ASSIGN_OR_RETURN(int32_t id, JsonId((*pair)[1], absl::StrCat(path, "[1]")));
    ids.push_back(id);
  }
  return std::unique_ptr<PostProcessor>(new TemplateProcessor({ids[0]}, {ids[1]}));
}

}  // namespace

absl::StatusOr<std::unique_ptr<PostProcessor>> ParsePostProcessor(const nlohmann::json& json,
                                                                  const std::string& key_path) {
  if (json.is_null()) return std::unique_ptr<PostProcessor>();
  FULCRUM_ASSIGN_OR_RETURN(const nlohmann::json* type_json, JsonField(json, key_path, "type"));
  FULCRUM_ASSIGN_OR_RETURN(std::string type,
                           JsonString(*type_json, absl::StrCat(key_path, ".type")));
  if (type == "TemplateProcessing") return ParseTemplate(json, key_path);
  if (type == "ByteLevel") return std::unique_ptr<PostProcessor>(new NoOpProcessor());
  if (type == "RobertaProcessing" || type == "BertProcessing") return ParseClsSep(json, key_path);
  if (type == "Sequence") {
    const std::string list_path = absl::StrCat(key_path, ".processors");
    FULCRUM_ASSIGN_OR_RETURN(const nlohmann::json* list, JsonField(json, key_path, "processors"));
    if (!list->is_array()) return JsonError(list_path, "expected an array");
    std::vector<std::unique_ptr<PostProcessor>> processors;
    for (size_t i = 0; i < list->size(); ++i) {
      FULCRUM_ASSIGN_OR_RETURN(
          std::unique_ptr<PostProcessor> processor,
          ParsePostProcessor((*list)[i], absl::StrCat(list_path, "[", i, "]")));
      if (processor != nullptr) processors.push_back(std::move(processor));
    }
    return std::unique_ptr<PostProcessor>(new SequenceProcessor(std::move(processors)));
  }
  return JsonError(absl::StrCat(key_path, ".type"),
                   absl::StrCat("not supported yet: post_processor type ", type));
}

}  // namespace fulcrum::data
