#include "data/dataset/prepared_cache.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "data/dataset/content_hash.h"
#include "tests/test_support.h"

namespace fulcrum::data {
namespace {

using ::fulcrum::testing::ReadFile;
using ::fulcrum::testing::ScratchDir;
using ::fulcrum::testing::WriteFile;

Sample MakeSample(std::vector<int64_t> ids, std::vector<int64_t> labels) {
  Sample s;
  s.input_ids = std::move(ids);
  s.labels = std::move(labels);
  return s;
}

PreparedData TwoSplits() {
  PreparedData data;
  data.train.push_back(MakeSample({1, 2, 3}, {-100, 2, 3}));
  data.train.push_back(MakeSample({70000, 5}, {70000, -100}));  // ids past 16 bits survive
  data.validation.push_back(MakeSample({9}, {9}));
  return data;
}

nlohmann::json Fingerprint(const std::string& data_hash, bool train_on_prompt) {
  return {{"inputs", {{{"path", "/d/a.jsonl"}, {"hash", data_hash}}}},
          {"tokenizer", {{"hash", "aaaa"}}},
          {"options", {{"train_on_prompt", train_on_prompt}, {"seq_len", 16}}}};
}

TEST(ContentHashTest, KnownVectorsOfXxh64) {
  // Reference values of XXH64 with seed 0 (xxhsum -H64).
  EXPECT_EQ(HashBytes(""), 0xEF46DB3751D8E999ULL);
  EXPECT_EQ(HashBytes("abc"), 0x44BC2CF5AD770999ULL);
  EXPECT_EQ(HashToHex(0xEF46DB3751D8E999ULL), "ef46db3751d8e999");
}

TEST(ContentHashTest, StreamingEqualsOneShotForEverySplit) {
  std::string text;
  for (int i = 0; i < 200; ++i) text.push_back(static_cast<char>((i * 37 + 11) % 256));
  const uint64_t whole = HashBytes(text);
  for (size_t cut = 0; cut <= text.size(); cut += 7) {
    ContentHasher hasher;
    hasher.Update(std::string_view(text).substr(0, cut));
    hasher.Update(std::string_view(text).substr(cut));
    EXPECT_EQ(hasher.Digest(), whole) << "cut at " << cut;
  }
  EXPECT_NE(HashBytes(text, 1), whole);  // the seed matters
  text[100] ^= 1;
  EXPECT_NE(HashBytes(text), whole);  // one flipped bit changes it
}

TEST(ContentHashTest, HashFileMatchesBytesAndNamesMissingFile) {
  const std::string path = ScratchDir() + "/f.bin";
  const std::string bytes(3 << 20 | 5, 'x');  // spans several 1 MiB chunks
  WriteFile(path, bytes);
  auto hash = HashFile(path);
  ASSERT_TRUE(hash.ok()) << hash.status();
  EXPECT_EQ(*hash, HashBytes(bytes));
  auto missing = HashFile(ScratchDir() + "/nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(std::string(missing.status().message()).find("nope"), std::string::npos);
}

TEST(PreparedCacheTest, WriteThenLoadRoundTripsBothSplits) {
  const std::string root = ScratchDir();  // (each call empties it)
  const std::string dir = root + "/cache/k1";
  const PreparedData data = TwoSplits();
  ASSERT_TRUE(WritePreparedCache(dir, Fingerprint("h1", false), data, {{"records", 3}}).ok());
  EXPECT_TRUE(std::filesystem::exists(dir + "/train.tokens"));
  EXPECT_EQ(std::filesystem::file_size(dir + "/train.tokens"), 5u * 4);
  EXPECT_EQ(std::filesystem::file_size(dir + "/train.offsets"), 3u * 8);
  auto loaded = LoadPreparedCache(dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->train.size(), 2u);
  EXPECT_EQ(loaded->train[0].input_ids, data.train[0].input_ids);
  EXPECT_EQ(loaded->train[0].labels, data.train[0].labels);
  EXPECT_EQ(loaded->train[1].input_ids, data.train[1].input_ids);
  EXPECT_EQ(loaded->train[1].labels, data.train[1].labels);
  ASSERT_EQ(loaded->validation.size(), 1u);
  EXPECT_EQ(loaded->validation[0].input_ids, std::vector<int64_t>{9});
  // Nothing staged is left behind.
  for (const auto& entry : std::filesystem::directory_iterator(root + "/cache")) {
    EXPECT_EQ(entry.path().filename(), "k1");
  }
}

TEST(PreparedCacheTest, FreshOnlyWhenFingerprintMatches) {
  const std::string dir = ScratchDir() + "/k";
  EXPECT_EQ(CheckPreparedCache(dir, Fingerprint("h1", false)).state, CacheState::kMissing);
  ASSERT_TRUE(WritePreparedCache(dir, Fingerprint("h1", false), TwoSplits()).ok());
  EXPECT_EQ(CheckPreparedCache(dir, Fingerprint("h1", false)).state, CacheState::kFresh);

  const CacheCheck data_changed = CheckPreparedCache(dir, Fingerprint("h2", false));
  EXPECT_EQ(data_changed.state, CacheState::kStale);
  EXPECT_EQ(data_changed.reason, "fingerprint.inputs[0].hash changed");
  const CacheCheck option_changed = CheckPreparedCache(dir, Fingerprint("h1", true));
  EXPECT_EQ(option_changed.state, CacheState::kStale);
  EXPECT_EQ(option_changed.reason, "fingerprint.options.train_on_prompt changed");

  // Rebuilding replaces the stale cache in place.
  ASSERT_TRUE(WritePreparedCache(dir, Fingerprint("h2", false), TwoSplits()).ok());
  EXPECT_EQ(CheckPreparedCache(dir, Fingerprint("h2", false)).state, CacheState::kFresh);
  EXPECT_EQ(CheckPreparedCache(dir, Fingerprint("h1", false)).state, CacheState::kStale);
}

TEST(PreparedCacheTest, KeyDependsOnContent) {
  EXPECT_EQ(PreparedCacheKey({{"a", 1}}), PreparedCacheKey({{"a", 1}}));
  EXPECT_NE(PreparedCacheKey({{"a", 1}}), PreparedCacheKey({{"a", 2}}));
  EXPECT_EQ(PreparedCacheKey({{"a", 1}}).size(), 16u);
}

TEST(PreparedCacheTest, GarbageManifestIsStaleNotAnError) {
  const std::string dir = ScratchDir() + "/k";
  std::filesystem::create_directories(dir);
  WriteFile(dir + "/manifest.json", "{not json");
  EXPECT_EQ(CheckPreparedCache(dir, Fingerprint("h1", false)).state, CacheState::kStale);
  WriteFile(dir + "/manifest.json", "{\"version\": 999, \"fingerprint\": {}}");
  const CacheCheck old_version = CheckPreparedCache(dir, Fingerprint("h1", false));
  EXPECT_EQ(old_version.state, CacheState::kStale);
  EXPECT_NE(old_version.reason.find("version"), std::string::npos);
}

TEST(PreparedCacheTest, TruncatedShardIsAnErrorNamingTheFile) {
  const std::string dir = ScratchDir() + "/k";
  ASSERT_TRUE(WritePreparedCache(dir, Fingerprint("h1", false), TwoSplits()).ok());
  const std::string tokens = ReadFile(dir + "/train.tokens");
  WriteFile(dir + "/train.tokens", tokens.substr(0, tokens.size() - 4));
  auto loaded = LoadPreparedCache(dir);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(std::string(loaded.status().message()).find("train.tokens"), std::string::npos)
      << loaded.status();
}

TEST(PreparedCacheTest, MissingShardAndMissingDirAreErrors) {
  const std::string dir = ScratchDir() + "/k";
  ASSERT_TRUE(WritePreparedCache(dir, Fingerprint("h1", false), TwoSplits()).ok());
  std::filesystem::remove(dir + "/validation.labels");
  auto loaded = LoadPreparedCache(dir);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(std::string(loaded.status().message()).find("validation.labels"), std::string::npos);
  EXPECT_FALSE(LoadPreparedCache(ScratchDir() + "/none").ok());
}

TEST(PreparedCacheTest, CorruptOffsetsAreAnError) {
  const std::string dir = ScratchDir() + "/k";
  ASSERT_TRUE(WritePreparedCache(dir, Fingerprint("h1", false), TwoSplits()).ok());
  std::string offsets = ReadFile(dir + "/train.offsets");
  offsets[8] = 9;  // offsets[1] = 9 > 5 tokens
  WriteFile(dir + "/train.offsets", offsets);
  auto loaded = LoadPreparedCache(dir);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(std::string(loaded.status().message()).find("train.offsets[1]"), std::string::npos)
      << loaded.status();
}

}  // namespace
}  // namespace fulcrum::data
