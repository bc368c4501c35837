// The demo tokenizer (recipes/tiny, written by scripts/make_demo_tokenizer.py)
// loads in the Rust reference and in fulcrum and gives the same ids on the
// demo's instruction data rendered as ChatML, with and without special tokens.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "data/template/chat_template.h"
#include "data/tokenizer/tokenizer.h"
#include "tests/test_support.h"

namespace fulcrum::testing {
namespace {

constexpr char kEncodeScript[] = R"(
const {Tokenizer} = require('tokenizers');
const fs = require('fs');
(async () => {
  const t = Tokenizer.fromFile(process.argv[2]);
  const texts = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'));
  const out = [];
  for (const text of texts) {
    const a = await t.encode(text, null, {addSpecialTokens: true});
    const b = await t.encode(text, null, {addSpecialTokens: false});
    out.push({special: Array.from(a.getIds()), plain: Array.from(b.getIds()),
              decoded: await t.decode(Array.from(b.getIds()), false)});
  }
  fs.writeFileSync(process.argv[4], JSON.stringify({vocab: t.getVocabSize(true), out}));
})();
)";

std::vector<std::string> DemoTexts(const data::ChatTemplate& chat_template) {
  std::vector<std::string> texts = {"", "Hello, World! 12345 it's DON'T",
                                    "  tabs\t\tand\n\nnewlines ", "héllo 你好 🙂",
                                    "<|im_start|>user\nhi<|im_end|>\n"};
  std::istringstream lines(ReadFile(SourceDir() + "/recipes/tiny/instructions.jsonl"));
  std::string line;
  while (std::getline(lines, line)) {
    const nlohmann::json r = nlohmann::json::parse(line);
    std::string user = r["instruction"].get<std::string>();
    if (!r["input"].get<std::string>().empty()) user += "\n" + r["input"].get<std::string>();
    auto rendered = chat_template.Render(
        {{"user", user}, {"assistant", r["output"].get<std::string>()}}, data::RenderOptions());
    EXPECT_TRUE(rendered.ok()) << rendered.status();
    if (rendered.ok()) texts.push_back(rendered->Text());
  }
  return texts;
}

TEST(DemoTokenizerReferenceTest, SameIdsAsTheRustReference) {
  FULCRUM_REQUIRE_NPM();
  const std::string path = SourceDir() + "/recipes/tiny/tokenizer.json";
  auto tokenizer = data::Tokenizer::Load(path);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->vocab_size(), 512);
  EXPECT_EQ((*tokenizer)->TokenToId("<|im_end|>").value_or(-1), 510);
  EXPECT_EQ((*tokenizer)->config().eos_token.value_or(""), "<|im_end|>");
  auto chat_template = data::CreateChatTemplate("auto", (*tokenizer)->config());
  ASSERT_TRUE(chat_template.ok()) << chat_template.status();
  EXPECT_EQ((*chat_template)->name(), "chatml");

  const std::vector<std::string> texts = DemoTexts(**chat_template);
  ASSERT_GT(texts.size(), 300u);
  const std::string dir = ScratchDir();
  WriteFile(dir + "/encode.js", kEncodeScript);
  WriteFile(dir + "/texts.json", nlohmann::json(texts).dump());
  const CommandResult r =
      RunNode(dir + "/encode.js " + path + " " + dir + "/texts.json " + dir + "/ids.json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json ref = nlohmann::json::parse(ReadFile(dir + "/ids.json"));
  EXPECT_EQ(ref["vocab"].get<int64_t>(), 512);
  int mismatches = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto& want = ref["out"][i];
    const std::vector<int32_t> plain = (*tokenizer)->Encode(texts[i], false);
    const std::vector<int32_t> special = (*tokenizer)->Encode(texts[i], true);
    if (plain != want["plain"].get<std::vector<int32_t>>() ||
        special != want["special"].get<std::vector<int32_t>>()) {
      if (++mismatches <= 5) ADD_FAILURE() << "ids differ on: " << texts[i];
    }
    EXPECT_EQ((*tokenizer)->Decode(plain, false), want["decoded"].get<std::string>());
    EXPECT_EQ((*tokenizer)->Decode(plain, false), texts[i]);  // byte-level round trip
  }
  EXPECT_EQ(mismatches, 0);
}

}  // namespace
}  // namespace fulcrum::testing
