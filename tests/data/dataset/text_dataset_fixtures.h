// Shared by the text dataset tests: a tiny byte-level BPE tokenizer with
// ChatML's special tokens, a ChatML-shaped chat template written here, and
// helpers that load one JSONL source and check samples or errors.
#pragma once

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/dataset/text_dataset.h"
#include "data/tokenizer/byte_level_alphabet.h"
#include "tests/test_support.h"

namespace fulcrum::data::text_dataset_test {

using ::fulcrum::testing::ScratchDir;
using ::fulcrum::testing::WriteFile;
using nlohmann::json;

inline constexpr int32_t kEndOfText = 260, kImStart = 261, kImEnd = 262, kBos = 263;

// A tiny byte-level BPE: ids 0..255 are the bytes (ByteLevel alphabet), four
// merges build "hello" (256..259), then the added special tokens.
// `bos_post_processor`: a TemplateProcessing that puts <s> in front.
inline std::string TinyTokenizerJson(bool bos_post_processor) {
  json vocab = json::object();
  const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::Get();
  for (int b = 0; b < 256; ++b) vocab[alphabet.Encode(static_cast<uint8_t>(b))] = b;
  vocab["he"] = 256;
  vocab["ll"] = 257;
  vocab["hell"] = 258;
  vocab["hello"] = 259;
  json added = json::array();
  const std::vector<std::string> specials = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>"};
  for (size_t i = 0; i < specials.size(); ++i) {
    added.push_back({{"id", 260 + i},
                     {"content", specials[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  const json byte_level = {{"type", "ByteLevel"},
                           {"add_prefix_space", false},
                           {"trim_offsets", true},
                           {"use_regex", true}};
  json post = byte_level;
  if (bos_post_processor) {
    post = {{"type", "TemplateProcessing"},
            {"single",
             {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
            {"pair",
             {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
            {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {kBos}}, {"tokens", {"<s>"}}}}}}};
  }
  const json tokenizer = {{"version", "1.0"},
                          {"truncation", nullptr},
                          {"padding", nullptr},
                          {"added_tokens", added},
                          {"normalizer", nullptr},
                          {"pre_tokenizer", byte_level},
                          {"post_processor", post},
                          {"decoder", byte_level},
                          {"model",
                           {{"type", "BPE"},
                            {"dropout", nullptr},
                            {"unk_token", nullptr},
                            {"continuing_subword_prefix", nullptr},
                            {"end_of_word_suffix", nullptr},
                            {"fuse_unk", false},
                            {"byte_fallback", false},
                            {"ignore_merges", false},
                            {"vocab", vocab},
                            {"merges", {"h e", "l l", "he ll", "hell o"}}}}};
  return tokenizer.dump();
}

struct TokenizerSetup {
  bool add_bos_token = false;
  bool bos_post_processor = false;
  bool eos = true;
};

inline TokenizerSetup TokenizerWith(bool add_bos_token, bool bos_post_processor, bool eos) {
  TokenizerSetup setup;
  setup.add_bos_token = add_bos_token;
  setup.bos_post_processor = bos_post_processor;
  setup.eos = eos;
  return setup;
}

inline std::shared_ptr<const Tokenizer> MakeTokenizer(const TokenizerSetup& setup = {}) {
  TokenizerConfig config;
  config.bos_token = "<s>";
  if (setup.eos) config.eos_token = "<|endoftext|>";
  config.add_bos_token = setup.add_bos_token;
  config.present = true;
  auto tokenizer = Tokenizer::FromJson(TinyTokenizerJson(setup.bos_post_processor), "test", config);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return *tokenizer;
}

// A ChatML-shaped template written here so that these tests check the
// dataset code alone: "<|im_start|>ROLE\nCONTENT<|im_end|>\n" per message,
// where an assistant's "CONTENT<|im_end|>" is the target. `prefix` is
// rendered first (to test the BOS rule). Rejects conversations that do not
// end with an assistant turn.
class FakeChatTemplate : public ChatTemplate {
 public:
  explicit FakeChatTemplate(std::string prefix = "") : prefix_(std::move(prefix)) {}
  std::string name() const override { return "fake"; }
  absl::StatusOr<RenderedChat> Render(const Conversation& conversation,
                                      const RenderOptions& options) const override {
    if (conversation.empty() || conversation.back().role != "assistant") {
      return absl::InvalidArgumentError("the last message must be the assistant's");
    }
    RenderedChat chat;
    std::string prompt = prefix_;
    int assistants_left = 0;
    for (const Message& m : conversation) assistants_left += m.role == "assistant";
    for (const Message& m : conversation) {
      prompt += "<|im_start|>" + m.role + "\n";
      if (m.role != "assistant") {
        prompt += m.content + "<|im_end|>\n";
        continue;
      }
      --assistants_left;
      const bool target = options.train_on_prompt || !options.mask_history || assistants_left == 0;
      chat.segments.push_back({prompt, options.train_on_prompt});
      chat.segments.push_back({m.content + "<|im_end|>", target});
      prompt = "\n";
    }
    chat.segments.push_back({prompt, options.train_on_prompt});
    return chat;
  }

 private:
  std::string prefix_;
};

// NOTE: ScratchDir() empties the test's directory on every call; tests that
// need several files pass the directory.
inline std::string WriteJsonl(const std::string& text, const std::string& dir = ScratchDir(),
                              const std::string& name = "data.jsonl") {
  const std::string path = dir + "/" + name;
  WriteFile(path, text);
  return path;
}

inline std::vector<int64_t> Widen(const std::vector<int32_t>& ids) {
  return std::vector<int64_t>(ids.begin(), ids.end());
}

// ids and labels expected from segments (text, is_target) tokenized one by one.
struct Expected {
  std::vector<int64_t> ids, labels;
  void Add(const Tokenizer& tokenizer, const std::string& text, bool target) {
    for (const int32_t id : tokenizer.Encode(text, false)) AddId(id, target);
  }
  void AddId(int64_t id, bool target) {
    ids.push_back(id);
    labels.push_back(target ? id : kIgnoreIndex);
  }
};

inline absl::StatusOr<LoadedSamples> Load(const std::vector<DatasetSource>& sources,
                                          const Tokenizer& tokenizer,
                                          const TokenizeOptions& options = {},
                                          const ChatTemplate* chat_template = nullptr) {
  static const FakeChatTemplate kDefaultTemplate;
  return LoadTextDataset(sources, tokenizer,
                         chat_template != nullptr ? chat_template : &kDefaultTemplate, options);
}

// Loads one source of `format` holding `text` and expects the error to name
// "PATH:LINE: " and contain `what`.
inline void ExpectError(const std::string& text, TextFormat format, int line,
                        const std::string& what, const FieldMap& fields = {}) {
  const std::string path = WriteJsonl(text);
  auto loaded = Load({{path, format, fields}}, *MakeTokenizer());
  ASSERT_FALSE(loaded.ok()) << text;
  const std::string message(loaded.status().message());
  EXPECT_NE(message.find(path + ":" + std::to_string(line) + ": "), std::string::npos) << message;
  EXPECT_NE(message.find(what), std::string::npos) << message;
}

// One conversation: a system prompt and two question-answer turns.
inline constexpr char kMessagesLine[] =
    "{\"messages\": [{\"role\": \"system\", \"content\": \"sys\"}, "
    "{\"role\": \"user\", \"content\": \"q1\"}, {\"role\": \"assistant\", \"content\": \"a1\"}, "
    "{\"role\": \"user\", \"content\": \"q2\"}, {\"role\": \"assistant\", \"content\": \"a2\"}]}\n";

}  // namespace fulcrum::data::text_dataset_test
