#include "data/dataset/pretokenized_dataset.h"

#include <gtest/gtest.h>

#include <string>

#include "tests/test_support.h"

namespace fulcrum::data {
namespace {

using ::fulcrum::testing::ScratchDir;
using ::fulcrum::testing::WriteFile;

std::string WriteJsonl(const std::string& text) {
  const std::string path = ScratchDir() + "/data.jsonl";
  WriteFile(path, text);
  return path;
}

// Loads `text` and expects an error whose message contains "PATH:LINE:" and `what`.
void ExpectError(const std::string& text, int line, const std::string& what) {
  const std::string path = WriteJsonl(text);
  auto samples = LoadPretokenizedJsonl(path);
  ASSERT_FALSE(samples.ok()) << text;
  EXPECT_EQ(samples.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(samples.status().message());
  EXPECT_NE(message.find(path + ":" + std::to_string(line) + ": "), std::string::npos) << message;
  EXPECT_NE(message.find(what), std::string::npos) << message;
}

TEST(PretokenizedJsonlTest, LoadsSamplesSkipsBlankLinesAndDefaultsLabels) {
  const std::string path = WriteJsonl(
      "{\"input_ids\": [1, 2, 3]}\n"
      "\n"
      "   \r\n"
      "{\"input_ids\": [4, 5], \"labels\": [-100, 5]}\r\n"
      "{\"labels\": [7], \"input_ids\": [7], \"text\": \"ignored\"}");  // no final newline
  auto samples = LoadPretokenizedJsonl(path);
  ASSERT_TRUE(samples.ok()) << samples.status();
  ASSERT_EQ(samples->size(), 3u);
  EXPECT_EQ((*samples)[0].input_ids, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ((*samples)[0].labels, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ((*samples)[0].line, 1);
  EXPECT_EQ((*samples)[1].input_ids, (std::vector<int64_t>{4, 5}));
  EXPECT_EQ((*samples)[1].labels, (std::vector<int64_t>{-100, 5}));
  EXPECT_EQ((*samples)[1].line, 4);
  EXPECT_EQ((*samples)[2].labels, (std::vector<int64_t>{7}));
  EXPECT_EQ((*samples)[2].line, 5);
}

TEST(PretokenizedJsonlTest, MissingFileNamesThePath) {
  const std::string path = ScratchDir() + "/absent.jsonl";
  auto samples = LoadPretokenizedJsonl(path);
  ASSERT_FALSE(samples.ok());
  EXPECT_NE(samples.status().message().find(path), std::string::npos) << samples.status();
}

TEST(PretokenizedJsonlTest, ErrorsNameFileAndLine) {
  const std::string good = "{\"input_ids\": [1]}\n";
  ExpectError(good + "{\"input_ids\": [1, 2\n", 2, "invalid JSON");
  ExpectError(good + good + "[1, 2]\n", 3, "expected a JSON object");
  ExpectError(good + "\n{\"labels\": [1]}\n", 3, "missing \"input_ids\"");
  ExpectError("{\"input_ids\": \"1 2\"}\n", 1, "\"input_ids\" is not a list");
  ExpectError("{\"input_ids\": [1, 2.5]}\n", 1, "input_ids[1] is not an integer");
  ExpectError("{\"input_ids\": [1, \"2\"]}\n", 1, "input_ids[1] is not an integer");
  ExpectError("{\"input_ids\": [1, 18446744073709551615]}\n", 1, "out of the int64 range");
  ExpectError(good + "{\"input_ids\": [3, -1]}\n", 2, "input_ids[1] = -1 is negative");
  ExpectError("{\"input_ids\": [1, 2], \"labels\": [1]}\n", 1,
              "labels has 1 entries but input_ids has 2");
  ExpectError("{\"input_ids\": [1], \"labels\": 1}\n", 1, "\"labels\" is not a list");
  ExpectError("{\"input_ids\": [1], \"labels\": [1.5]}\n", 1, "labels[0] is not an integer");
  ExpectError("{\"input_ids\": [1, 2], \"labels\": [1, -5]}\n", 1, "labels[1] = -5");
  ExpectError(good + good + good + "{\"input_ids\": []}\n", 4, "empty sample");
}

TEST(PretokenizedJsonlTest, EmptyDatasetIsAnError) {
  for (const std::string text : {"", "\n\n  \n"}) {
    const std::string path = WriteJsonl(text);
    auto samples = LoadPretokenizedJsonl(path);
    ASSERT_FALSE(samples.ok());
    EXPECT_EQ(samples.status().message(), path + ": no samples");
  }
}

TEST(CheckVocabularyTest, AcceptsIdsBelowVocabAndIgnoredLabels) {
  const std::vector<Sample> samples = {{{0, 9}, {-100, 9}, 1}, {{5}, {5}, 2}};
  EXPECT_TRUE(CheckVocabulary(samples, 10, "d.jsonl").ok());
}

TEST(CheckVocabularyTest, NamesSourceLineAndValue) {
  const std::vector<Sample> bad_id = {{{0, 1}, {0, 1}, 1}, {{3, 10}, {3, 4}, 7}};
  absl::Status status = CheckVocabulary(bad_id, 10, "d.jsonl");
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "d.jsonl:7: input_ids[1] = 10 is out of range for vocab_size 10");

  const std::vector<Sample> bad_label = {{{1, 2}, {-100, 12}, 3}};
  status = CheckVocabulary(bad_label, 10, "d.jsonl");
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.message(), "d.jsonl:3: labels[1] = 12 is out of range for vocab_size 10");

  // Samples made in code (line 0) are named by index.
  const std::vector<Sample> no_line = {{{1}, {1}, 0}, {{11}, {11}, 0}};
  status = CheckVocabulary(no_line, 10, "mem");
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.message(), "mem: sample 1: input_ids[0] = 11 is out of range for vocab_size 10");

  EXPECT_FALSE(CheckVocabulary(no_line, 0, "mem").ok());
}

TEST(CheckVocabularyTest, LoadedFileReportsItsLine) {
  const std::string path = WriteJsonl("{\"input_ids\": [1]}\n\n{\"input_ids\": [1, 99]}\n");
  auto samples = LoadPretokenizedJsonl(path);
  ASSERT_TRUE(samples.ok()) << samples.status();
  const absl::Status status = CheckVocabulary(*samples, 50, path);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find(path + ":3: input_ids[1] = 99"), std::string::npos) << status;
}

}  // namespace
}  // namespace fulcrum::data
