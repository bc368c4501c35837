#include "data/tokenizer/decoder.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

namespace fulcrum::data {
namespace {

std::string Decode(const std::string& decoder_json, std::vector<std::string> tokens) {
  auto decoder = ParseDecoder(nlohmann::json::parse(decoder_json), "tokenizer.json: decoder");
  EXPECT_TRUE(decoder.ok()) << decoder.status();
  if (!decoder.ok()) return "<error>";
  return DecodeTokens(decoder->get(), std::move(tokens));
}

std::string Lossy(const std::string& bytes) {
  std::string out;
  AppendUtf8Lossy(bytes, &out);
  return out;
}

constexpr char kFffd[] = "\xEF\xBF\xBD";

TEST(DecoderTest, NoDecoderJoinsWithSpaces) {
  EXPECT_EQ(DecodeTokens(nullptr, {"a", "b", "c"}), "a b c");
  auto null_decoder = ParseDecoder(nlohmann::json(), "tokenizer.json: decoder");
  ASSERT_TRUE(null_decoder.ok());
  EXPECT_EQ(*null_decoder, nullptr);
}

TEST(DecoderTest, ByteLevelMapsBackToBytes) {
  const std::string byte_level = R"({"type": "ByteLevel", "add_prefix_space": true})";
  EXPECT_EQ(Decode(byte_level, {"Hello", "Ġworld", "Ċ"}), "Hello world\n");
  // "ä½ł" is the byte-level form of 你 (E4 BD A0), split across tokens.
  EXPECT_EQ(Decode(byte_level, {"ä", "½ł"}), "你");
  // A lone lead byte is invalid UTF-8.
  EXPECT_EQ(Decode(byte_level, {"a", "ä"}), std::string("a") + kFffd);
  // A token with a char outside the alphabet is copied whole, raw.
  EXPECT_EQ(Decode(byte_level, {"Ġ日", "Ġx"}), "Ġ日 x");
}

TEST(DecoderTest, ByteFallbackGroupsRuns) {
  const std::string fallback = R"({"type": "ByteFallback"})";
  EXPECT_EQ(Decode(fallback, {"a", "<0xE4>", "<0xBD>", "<0xA0>", "b"}), "a你b");
  // An invalid run gives one U+FFFD per byte token.
  EXPECT_EQ(Decode(fallback, {"<0xE4>", "<0xBD>", "x"}), std::string(kFffd) + kFffd + "x");
  EXPECT_EQ(Decode(fallback, {"<0x41>", "<0x4g>"}), "A<0x4g>");
}

TEST(DecoderTest, Llama2Sequence) {
  const std::string sequence = R"({"type": "Sequence", "decoders": [
      {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
      {"type": "ByteFallback"}, {"type": "Fuse"},
      {"type": "Strip", "content": " ", "start": 1, "stop": 0}]})";
  EXPECT_EQ(Decode(sequence, {"▁Hello", "▁wor", "ld", "<0x21>"}), "Hello world!");
  EXPECT_EQ(Decode(sequence, {"▁▁x"}), " x");
  EXPECT_EQ(Decode(sequence, {"<s>", "▁Hi"}), "<s> Hi");
}

TEST(DecoderTest, StripBothEnds) {
  const std::string strip = R"({"type": "Strip", "content": "x", "start": 2, "stop": 1})";
  EXPECT_EQ(Decode(strip, {"xxxaxx", "x", "ab"}), "xaxab");
}

TEST(DecoderTest, MetaspaceDropsThePrependedSpace) {
  EXPECT_EQ(Decode(R"({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"})",
                   {"▁Hey", "▁friend"}),
            "Hey friend");
  EXPECT_EQ(Decode(R"({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never"})",
                   {"▁Hey", "▁friend"}),
            " Hey friend");
  EXPECT_EQ(
      Decode(R"({"type": "Metaspace", "replacement": "▁", "add_prefix_space": true})", {"▁a"}),
      "a");
}

TEST(DecoderTest, LossyUtf8ReplacesMaximalSubparts) {
  EXPECT_EQ(Lossy("ok"), "ok");
  EXPECT_EQ(Lossy("\xC3\xA9"), "é");
  EXPECT_EQ(Lossy("\xE4\xBD"), kFffd);  // truncated: one subpart
  EXPECT_EQ(Lossy("\xE4\xBDx"), std::string(kFffd) + "x");
  EXPECT_EQ(Lossy("\x80\x80"), std::string(kFffd) + kFffd);              // lone continuations
  EXPECT_EQ(Lossy("\xED\xA0\x80"), std::string(kFffd) + kFffd + kFffd);  // surrogate
  EXPECT_EQ(Lossy("\xF0\x9F\x98\x80"), "😀");
  EXPECT_EQ(Lossy("\xC0\xAF"), std::string(kFffd) + kFffd);  // overlong
}

TEST(DecoderTest, BadDecodersNameTheKey) {
  const auto error = [](const std::string& json_text) {
    return ParseDecoder(nlohmann::json::parse(json_text), "tokenizer.json: decoder").status();
  };
  EXPECT_EQ(error(R"({"type": "CTC"})").message(),
            "tokenizer.json: decoder.type: not supported yet: decoder type CTC");
  EXPECT_EQ(error(R"({"kind": "Fuse"})").message(), "tokenizer.json: decoder.type: missing");
  EXPECT_EQ(
      error(
          R"({"type": "Sequence", "decoders": [{"type": "Strip", "content": " ", "start": -1, "stop": 0}]})")
          .message(),
      "tokenizer.json: decoder.decoders[0].start: expected an integer >= 0");
  EXPECT_NE(error(R"({"type": "Replace", "pattern": {"String": 3}, "content": " "})")
                .message()
                .find("decoder.pattern.String"),
            std::string::npos);
}

}  // namespace
}  // namespace fulcrum::data
