// Pre-tokenizers against pieces recorded from the reference (Rust
// `tokenizers` 0.23.2 Node binding, PreTokenizer.preTokenizeString) for the
// configs of Llama-3, Qwen3, DeepSeek-V3 and each type / behaviour.
#include "data/tokenizer/pre_tokenizer.h"

#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

namespace fulcrum::data {
namespace {

struct Case {
  const char* name;
  const char* config;  // the "pre_tokenizer" JSON
  const char* text;
  std::vector<std::string> expected;
};

const std::vector<Case>& ReferenceCases() {
  static const std::vector<Case> cases = {
      {"llama3",
       "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
       "{\"Regex\": "
       "\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| "
       "?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"}, "
       "\"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", "
       "\"add_prefix_space\": false, \"trim_offsets\": true, \"use_regex\": false}]}",
       "Hello world's  IT'S 1234567 \303\200B\012\012  x  \011\344\270\226\347\225\214!!?\015\012 "
       "end",
       {"Hello", "\304\240world", "'s", "\304\240", "\304\240IT", "'S", "\304\240", "123", "456",
        "7", "\304\240\303\203\304\242B", "\304\212\304\212", "\304\240", "\304\240x",
        "\304\240\304\240", "\304\211\303\244\302\270\304\270\303\247\304\267\304\256",
        "!!?\304\215\304\212", "\304\240end"}},
      {"qwen3",
       "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
       "{\"Regex\": "
       "\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}| "
       "?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"}, "
       "\"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", "
       "\"add_prefix_space\": false, \"trim_offsets\": false, \"use_regex\": false}]}",
       "Hello world's  IT'S 1234567 \303\200B\012\012  x  \011\344\270\226\347\225\214!!?\015\012 "
       "end",
       {"Hello",
        "\304\240world",
        "'s",
        "\304\240",
        "\304\240IT",
        "'S",
        "\304\240",
        "1",
        "2",
        "3",
        "4",
        "5",
        "6",
        "7",
        "\304\240\303\203\304\242B",
        "\304\212\304\212",
        "\304\240",
        "\304\240x",
        "\304\240\304\240",
        "\304\211\303\244\302\270\304\270\303\247\304\267\304\256",
        "!!?\304\215\304\212",
        "\304\240end"}},
      {"deepseek",
       "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
       "{\"Regex\": \"\\\\p{N}{1,3}\"}, \"behavior\": \"Isolated\", \"invert\": false}, {\"type\": "
       "\"Split\", \"pattern\": {\"Regex\": \"[\\u4e00-\\u9fa5\\u3040-\\u309f\\u30a0-\\u30ff]+\"}, "
       "\"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"Split\", \"pattern\": "
       "{\"Regex\": "
       "\"[!\\\"#$%&'()*+,\\\\-./"
       ":;<=>?@\\\\[\\\\\\\\\\\\]^_`{|}~][A-Za-z]+|[^\\r\\n\\\\p{L}\\\\p{P}\\\\p{S}]?[\\\\p{L}"
       "\\\\p{M}]+| ?[\\\\p{P}\\\\p{S}]+[\\r\\n]*|\\\\s*[\\r\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"}, "
       "\"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", "
       "\"add_prefix_space\": false, \"trim_offsets\": true, \"use_regex\": false}]}",
       "Hello world's  IT'S 1234567 \303\200B\012\012  x  \011\344\270\226\347\225\214!!?\015\012 "
       "end \343\201\223\343\202\223\343\201\253\343\201\241\343\201\25712345 ab;cd",
       {"Hello",
        "\304\240world",
        "'s",
        "\304\240",
        "\304\240IT",
        "'S",
        "\304\240",
        "123",
        "456",
        "7",
        "\304\240\303\203\304\242B",
        "\304\212\304\212",
        "\304\240",
        "\304\240x",
        "\304\240\304\240\304\211",
        "\303\244\302\270\304\270\303\247\304\267\304\256",
        "!!?\304\215\304\212",
        "\304\240end",
        "\304\240",
        "\303\243\304\243\304\265\303\243\304\244\304\265\303\243\304\243\302\253\303\243\304\243"
        "\302\241\303\243\304\243\302\257",
        "123",
        "45",
        "\304\240ab",
        ";cd"}},
      {"bytelevel_default",
       "{\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"trim_offsets\": true, "
       "\"use_regex\": true}",
       "Hello  there\011friend's 42x",
       {"\304\240Hello", "\304\240", "\304\240there", "\304\211", "friend", "'s", "\304\24042",
        "x"}},
      {"bytelevel_prefix_noregex",
       "{\"type\": \"ByteLevel\", \"add_prefix_space\": true, \"use_regex\": false, "
       "\"trim_offsets\": true}",
       "hi there",
       {"\304\240hi\304\240there"}},
      {"split_string_prev",
       "{\"type\": \"Split\", \"pattern\": {\"String\": \" \"}, \"behavior\": "
       "\"MergedWithPrevious\", \"invert\": false}",
       "a b  c ",
       {"a ", "b ", " ", "c "}},
      {"split_removed",
       "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"-+\"}, \"behavior\": \"Removed\", "
       "\"invert\": false}",
       "--a-b--c-",
       {"a", "b", "c"}},
      {"split_isolated",
       "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"-+\"}, \"behavior\": \"Isolated\", "
       "\"invert\": false}",
       "--a-b--c-",
       {"--", "a", "-", "b", "--", "c", "-"}},
      {"split_prev",
       "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"-\"}, \"behavior\": "
       "\"MergedWithPrevious\", \"invert\": false}",
       "--a-b--c-",
       {"-", "-", "a-", "b-", "-", "c-"}},
      {"split_next",
       "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"-\"}, \"behavior\": \"MergedWithNext\", "
       "\"invert\": false}",
       "--a-b--c-",
       {"-", "-a", "-b", "-", "-c", "-"}},
      {"split_contig",
       "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"-\"}, \"behavior\": \"Contiguous\", "
       "\"invert\": false}",
       "--a-b--c-",
       {"--", "a", "-", "b", "--", "c", "-"}},
      {"split_invert_removed",
       "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"-\"}, \"behavior\": \"Removed\", "
       "\"invert\": true}",
       "--a-b--c-",
       {"-", "-", "-", "-", "-", "-"}},
      {"split_invert_isolated",
       "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"[a-z]\"}, \"behavior\": "
       "\"MergedWithPrevious\", \"invert\": true}",
       "ab-cd--e",
       {"a", "b-", "c", "d--", "e"}},
      {"split_empty_matches",
       "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"x*\"}, \"behavior\": \"Isolated\", "
       "\"invert\": false}",
       "abxxc",
       {"a", "b", "xx", "c"}},
      {"split_empty_prev",
       "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"x*\"}, \"behavior\": "
       "\"MergedWithPrevious\", \"invert\": false}",
       "abxxc",
       {"a", "bxx", "c"}},
      {"metaspace_always",
       "{\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"always\", "
       "\"split\": true}",
       "Hey  friend \342\226\201x",
       {"\342\226\201Hey", "\342\226\201", "\342\226\201friend", "\342\226\201", "\342\226\201x"}},
      {"metaspace_first",
       "{\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"first\", "
       "\"split\": true}",
       "Hey friend",
       {"\342\226\201Hey", "\342\226\201friend"}},
      {"metaspace_never_nosplit",
       "{\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"never\", "
       "\"split\": false}",
       "Hey friend",
       {"Hey\342\226\201friend"}},
      {"metaspace_seq_first",
       "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": "
       "{\"String\": \",\"}, \"behavior\": \"Isolated\", \"invert\": false}, {\"type\": "
       "\"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"first\", \"split\": "
       "true}]}",
       "a b,c d",
       {"\342\226\201a", "\342\226\201b", ",", "c", "\342\226\201d"}},
      {"digits_individual",
       "{\"type\": \"Digits\", \"individual_digits\": true}",
       "abc123def4\331\243\302\275",
       {"abc", "1", "2", "3", "def", "4", "\331\243", "\302\275"}},
      {"digits_contig",
       "{\"type\": \"Digits\", \"individual_digits\": false}",
       "abc123def4\331\243\302\275",
       {"abc", "123", "def", "4\331\243\302\275"}},
      {"whitespace",
       "{\"type\": \"Whitespace\"}",
       "Hey man!! h\303\251llo_w e\314\201x 12,3",
       {"Hey", "man", "!!", "h\303\251llo_w", "e\314\201x", "12", ",", "3"}},
      {"whitespace_split",
       "{\"type\": \"WhitespaceSplit\"}",
       " Hey  man!!\343\200\200x\012",
       {"Hey", "man!!", "x"}},
      {"punctuation",
       "{\"type\": \"Punctuation\", \"behavior\": \"Isolated\"}",
       "Hey, you!!\302\277s\342\200\224x",
       {"Hey", ",", " you", "!", "!", "\302\277", "s", "\342\200\224", "x"}},
      {"punctuation_contig",
       "{\"type\": \"Punctuation\", \"behavior\": \"Contiguous\"}",
       "Hey, you!!?x",
       {"Hey", ",", " you", "!!?", "x"}},
      {"gpt2_spaces",
       "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, "
       "\"use_regex\": true}",
       "a   b\012\012 c  ",
       {"a", "\304\240\304\240", "\304\240b", "\304\212\304\212", "\304\240c", "\304\240\304\240"}},
  };
  return cases;
}

Pieces SplitText(const PreTokenizer& pre_tokenizer, const std::string& text, bool at_start = true) {
  Pieces pieces{text};
  pre_tokenizer.Split(&pieces, at_start);
  return pieces;
}

TEST(PreTokenizerTest, MatchesReference) {
  for (const Case& c : ReferenceCases()) {
    SCOPED_TRACE(c.name);
    auto parsed = ParsePreTokenizer(nlohmann::json::parse(c.config), "pre_tokenizer");
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    ASSERT_NE(*parsed, nullptr);
    EXPECT_EQ(SplitText(**parsed, c.text), c.expected);
  }
}

TEST(PreTokenizerTest, NullGivesNoPreTokenizer) {
  auto parsed = ParsePreTokenizer(nlohmann::json(), "pre_tokenizer");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(*parsed, nullptr);
}

TEST(PreTokenizerTest, MetaspaceFirstPrependsOnlyAtTextStart) {
  auto parsed = ParsePreTokenizer(
      nlohmann::json::parse(
          R"({"type":"Metaspace","replacement":"\u2581","prepend_scheme":"first","split":true})"),
      "pre_tokenizer");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(SplitText(**parsed, "a b", /*at_start=*/false), (Pieces{"a", "\u2581b"}));
  EXPECT_EQ(SplitText(**parsed, "a b", /*at_start=*/true), (Pieces{"\u2581a", "\u2581b"}));
}

TEST(PreTokenizerTest, LegacyMetaspaceAddPrefixSpaceFalseNeverPrepends) {
  auto parsed = ParsePreTokenizer(
      nlohmann::json::parse(R"({"type":"Metaspace","replacement":"_","add_prefix_space":false})"),
      "pre_tokenizer");
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(SplitText(**parsed, "a b"), (Pieces{"a", "_b"}));
}

TEST(PreTokenizerTest, EmptyPiecesAreDropped) {
  auto parsed = ParsePreTokenizer(nlohmann::json::parse(R"({"type":"WhitespaceSplit"})"), "p");
  ASSERT_TRUE(parsed.ok());
  Pieces pieces{"", "   ", "a"};
  (*parsed)->Split(&pieces, true);
  EXPECT_EQ(pieces, (Pieces{"a"}));
}

TEST(PreTokenizerTest, LongWhitespaceRunDoesNotExhaustJitStack) {
  auto parsed = ParsePreTokenizer(
      nlohmann::json::parse(R"({"type":"ByteLevel","add_prefix_space":false})"), "p");
  ASSERT_TRUE(parsed.ok());
  const std::string text = "a" + std::string(200000, ' ') + "b";
  const Pieces pieces = SplitText(**parsed, text);
  ASSERT_EQ(pieces.size(), 3u);
  EXPECT_EQ(pieces[0], "a");
  EXPECT_EQ(pieces[2],
            "\xC4\xA0"
            "b");
}

TEST(PreTokenizerTest, ConcurrentSplitsAgree) {
  const Case& c = ReferenceCases()[0];
  auto parsed = ParsePreTokenizer(nlohmann::json::parse(c.config), "pre_tokenizer");
  ASSERT_TRUE(parsed.ok());
  const PreTokenizer& pre_tokenizer = **parsed;
  std::vector<int> ok(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      int good = 0;
      for (int i = 0; i < 200; ++i) good += SplitText(pre_tokenizer, c.text) == c.expected;
      ok[t] = good;
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(ok[t], 200);
}

TEST(PreTokenizerTest, BadRegexNamesPatternAndKey) {
  auto parsed = ParsePreTokenizer(
      nlohmann::json::parse(
          R"({"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"(ab"},"behavior":"Isolated","invert":false}]})"),
      "tokenizer.json: pre_tokenizer");
  ASSERT_FALSE(parsed.ok());
  const std::string message(parsed.status().message());
  EXPECT_NE(message.find("tokenizer.json: pre_tokenizer.pretokenizers[0].pattern.Regex"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("(ab"), std::string::npos) << message;
}

TEST(PreTokenizerTest, RejectsBadConfigs) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {R"({"type":"BertPreTokenizer"})", "not supported yet: pre_tokenizer type BertPreTokenizer"},
      {R"({"type":"Split","pattern":{"Regex":"a"},"behavior":"Sideways"})", "behavior"},
      {R"({"type":"Split","pattern":{"Other":"a"},"behavior":"Isolated"})", "pattern"},
      {R"({"type":"Split","pattern":{"String":"a"}})", "behavior"},
      {R"({"type":"ByteLevel","add_prefix_space":"yes"})", "add_prefix_space"},
      {R"({"type":"Metaspace","replacement":"ab"})", "replacement"},
      {R"({"type":"Metaspace","prepend_scheme":"sometimes"})", "prepend_scheme"},
      {R"({"type":"Sequence"})", "pretokenizers"},
      {R"([1,2])", "type"},
  };
  for (const auto& [config, needle] : bad) {
    SCOPED_TRACE(config);
    auto parsed = ParsePreTokenizer(nlohmann::json::parse(config), "pre_tokenizer");
    ASSERT_FALSE(parsed.ok());
    EXPECT_NE(std::string(parsed.status().message()).find(needle), std::string::npos)
        << parsed.status();
  }
}

}  // namespace
}  // namespace fulcrum::data
