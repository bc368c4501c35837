#include "data/tokenizer/utf8.h"

#include <gtest/gtest.h>

#include <string>

namespace fulcrum::data {
namespace {

TEST(Utf8Test, AcceptsValidText) {
  EXPECT_EQ(FindInvalidUtf8(""), std::nullopt);
  EXPECT_EQ(FindInvalidUtf8("plain ascii text that is longer than eight bytes"), std::nullopt);
  EXPECT_EQ(FindInvalidUtf8("\u00e9\u4e16\U0001F600 \U0010FFFF \uD7FF \uE000"), std::nullopt);
}

TEST(Utf8Test, FindsFirstInvalidSequence) {
  struct Case {
    std::string text;
    size_t offset;
  };
  const std::string prefix = "0123456789";  // exercises the 8-byte path first
  const Case cases[] = {
      {prefix + "\x80", 10},              // stray continuation byte
      {prefix + "\xC0\x80", 10},          // overlong 2-byte
      {prefix + "\xC1\xBF", 10},          // overlong 2-byte
      {prefix + "\xE0\x80\x80", 10},      // overlong 3-byte
      {prefix + "\xED\xA0\x80", 10},      // surrogate U+D800
      {prefix + "\xF0\x80\x80\x80", 10},  // overlong 4-byte
      {prefix + "\xF4\x90\x80\x80", 10},  // > U+10FFFF
      {prefix + "\xF5\x80\x80\x80", 10},  // invalid lead
      {prefix + "\xE4\xB8", 10},          // truncated
      {prefix + "\xE4\x41\x96", 10},      // bad continuation
      {"\xC3\xA9"
       "ab\xFF",
       4},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(FindInvalidUtf8(c.text), std::optional<size_t>(c.offset)) << c.text;
  }
}

}  // namespace
}  // namespace fulcrum::data
