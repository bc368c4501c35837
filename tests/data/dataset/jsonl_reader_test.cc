#include "data/dataset/jsonl_reader.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/test_support.h"

namespace fulcrum::data {
namespace {

using ::fulcrum::testing::ScratchDir;
using ::fulcrum::testing::WriteFile;

std::vector<JsonlLine> ReadAll(const std::string& text) {
  const std::string path = ScratchDir() + "/data.jsonl";
  WriteFile(path, text);
  auto reader = JsonlReader::Open(path);
  EXPECT_TRUE(reader.ok()) << reader.status();
  std::vector<JsonlLine> lines;
  if (!reader.ok()) return lines;
  JsonlLine line;
  while (reader->Next(&line)) lines.push_back(line);
  EXPECT_TRUE(reader->status().ok()) << reader->status();
  return lines;
}

TEST(JsonlReaderTest, SkipsBlankLinesAndKeepsLineNumbers) {
  const auto lines = ReadAll("{\"a\": 1}\n\n  \t\r\n{\"b\": 2}\r\n{\"c\": 3}");  // no final newline
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0].number, 1);
  EXPECT_EQ(lines[0].text, "{\"a\": 1}");
  EXPECT_EQ(lines[1].number, 4);
  EXPECT_EQ(lines[1].text, "{\"b\": 2}");  // '\r' removed
  EXPECT_EQ(lines[2].number, 5);
  EXPECT_EQ(lines[2].text, "{\"c\": 3}");
}

TEST(JsonlReaderTest, EmptyFileHasNoLines) { EXPECT_TRUE(ReadAll("").empty()); }

TEST(JsonlReaderTest, MissingFileNamesThePath) {
  const std::string path = ScratchDir() + "/absent.jsonl";
  auto reader = JsonlReader::Open(path);
  ASSERT_FALSE(reader.ok());
  EXPECT_NE(reader.status().message().find(path + ": cannot open"), std::string::npos)
      << reader.status();
}

TEST(ParseJsonObjectLineTest, ParsesAnObject) {
  auto value = ParseJsonObjectLine("{\"text\": \"h\\u00e9\", \"n\": 2}");
  ASSERT_TRUE(value.ok()) << value.status();
  EXPECT_EQ((*value)["text"].get<std::string>(), "h\xc3\xa9");
  EXPECT_EQ((*value)["n"].get<int>(), 2);
}

TEST(ParseJsonObjectLineTest, InvalidJson) {
  auto value = ParseJsonObjectLine("{\"text\": ");
  ASSERT_FALSE(value.ok());
  EXPECT_NE(value.status().message().find("invalid JSON"), std::string::npos) << value.status();
}

TEST(ParseJsonObjectLineTest, NotAnObject) {
  auto value = ParseJsonObjectLine("[1, 2]");
  ASSERT_FALSE(value.ok());
  EXPECT_NE(value.status().message().find("expected a JSON object, got array"), std::string::npos)
      << value.status();
}

TEST(ParseJsonObjectLineTest, InvalidUtf8GivesTheByteOffset) {
  auto value = ParseJsonObjectLine("{\"text\": \"ab\xff\"}");
  ASSERT_FALSE(value.ok());
  EXPECT_NE(value.status().message().find("invalid UTF-8 at byte 12"), std::string::npos)
      << value.status();
}

}  // namespace
}  // namespace fulcrum::data
