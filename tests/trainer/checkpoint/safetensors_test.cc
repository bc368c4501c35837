#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "tests/test_support.h"
#include "trainer/checkpoint/safetensors_reader.h"
#include "trainer/checkpoint/safetensors_writer.h"

namespace fulcrum::checkpoint {
namespace {

using ::fulcrum::testing::FixturesDir;
using ::fulcrum::testing::ReadFile;
using ::fulcrum::testing::ScratchDir;
using ::fulcrum::testing::WriteFile;

std::shared_ptr<SafetensorsReader> OpenOrDie(const std::string& path) {
  absl::StatusOr<std::shared_ptr<SafetensorsReader>> reader = SafetensorsReader::Open(path);
  EXPECT_TRUE(reader.ok()) << reader.status();
  return reader.ok() ? *reader : nullptr;
}

bool BitEqual(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const torch::Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.numel() * ca.element_size()) == 0;
}

TEST(SafetensorsReaderTest, ReadsLlamaFixture) {
  auto reader = OpenOrDie(FixturesDir() + "/llama/model/model.safetensors");
  ASSERT_NE(reader, nullptr);
  const std::vector<std::string> names = reader->Names();
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_TRUE(reader->Contains("model.embed_tokens.weight"));
  EXPECT_TRUE(reader->Contains("lm_head.weight"));
  EXPECT_FALSE(reader->Contains("__metadata__"));
  EXPECT_EQ(reader->Metadata().at("format"), "pt");
  absl::StatusOr<TensorEntry> entry = reader->Entry("model.layers.0.mlp.down_proj.weight");
  ASSERT_TRUE(entry.ok()) << entry.status();
  EXPECT_EQ(entry->dtype, "F32");
  EXPECT_EQ(entry->shape, (std::vector<int64_t>{64, 128}));
  EXPECT_EQ(entry->end - entry->begin, 64u * 128u * 4u);
  absl::StatusOr<torch::Tensor> embed = reader->View("model.embed_tokens.weight");
  ASSERT_TRUE(embed.ok()) << embed.status();
  EXPECT_EQ(embed->sizes(), (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(embed->scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::isfinite(*embed).all().item<bool>());
  absl::StatusOr<TensorEntry> missing = reader->Entry("no.such.tensor");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("no.such.tensor"), std::string::npos);
}

TEST(SafetensorsReaderTest, ReadsBatchFixtureAndViewOutlivesReader) {
  torch::Tensor ids;
  {
    auto reader = OpenOrDie(FixturesDir() + "/batch.safetensors");
    ASSERT_NE(reader, nullptr);
    ids = *reader->View("input_ids");
  }  // the tensor now holds the only reference to the mapping
  EXPECT_EQ(ids.scalar_type(), torch::kInt64);
  EXPECT_EQ(ids.sizes(), (std::vector<int64_t>{2, 16}));
  EXPECT_TRUE((ids >= 0).all().item<bool>());
  EXPECT_TRUE((ids < 512).all().item<bool>());
}

std::vector<NamedTensor> AllDtypes() {
  torch::manual_seed(0);
  return {
      {"f32", torch::randn({3, 5})},
      {"f16", torch::randn({4, 2}).to(torch::kFloat16)},
      {"bf16", torch::randn({2, 3, 4}).to(torch::kBFloat16)},
      {"i64", torch::arange(-6, 6, torch::kInt64).view({3, 4})},
      {"i32", torch::randint(-1000, 1000, {7}, torch::kInt32)},
      {"u8", torch::randint(0, 256, {2, 5}, torch::kUInt8)},
      {"bool", torch::rand({3, 3}) > 0.5},
      {"f64", torch::randn({2, 2}, torch::kFloat64)},
      {"scalar", torch::tensor(3.5f)},
      {"empty", torch::empty({0, 4})},
      // non-contiguous input: written as its contiguous layout
      {"transposed", torch::randn({3, 4}).t()},
  };
}

TEST(SafetensorsWriterTest, RoundTripsEveryDtypeBitForBit) {
  const std::string path = ScratchDir() + "/all.safetensors";
  const std::vector<NamedTensor> tensors = AllDtypes();
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}, {"step", "7"}}).ok());
  auto reader = OpenOrDie(path);
  ASSERT_NE(reader, nullptr);
  EXPECT_EQ(reader->Names().size(), tensors.size());
  for (const NamedTensor& t : tensors) {
    absl::StatusOr<torch::Tensor> read = reader->View(t.name);
    ASSERT_TRUE(read.ok()) << read.status();
    EXPECT_TRUE(BitEqual(*read, t.tensor)) << t.name;
  }
  EXPECT_EQ(reader->Entry("bf16")->dtype, "BF16");
  EXPECT_EQ(reader->Entry("bool")->dtype, "BOOL");
  EXPECT_EQ(reader->Metadata(),
            (std::map<std::string, std::string>{{"format", "pt"}, {"step", "7"}}));
}

TEST(SafetensorsWriterTest, HeaderLayoutOnDisk) {
  const std::string dir = ScratchDir();
  const std::string path = dir + "/layout.safetensors";
  ASSERT_TRUE(WriteSafetensors(path,
                               {{"b", torch::ones({3}, torch::kInt16)},
                                {"a", torch::zeros({2, 2}, torch::kFloat32)}},
                               {{"format", "pt"}})
                  .ok());
  const std::string bytes = ReadFile(path);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + 16 + 6);  // a: 4 floats, b: 3 int16
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.front(), '{');
  const size_t last = header.find_last_not_of(' ');
  EXPECT_EQ(header[last], '}');  // only spaces pad the JSON
  const nlohmann::json json = nlohmann::json::parse(header);
  EXPECT_EQ(json["a"]["dtype"], "F32");
  EXPECT_EQ(json["a"]["data_offsets"], nlohmann::json({0, 16}));  // sorted: a first
  EXPECT_EQ(json["b"]["dtype"], "I16");
  EXPECT_EQ(json["b"]["shape"], nlohmann::json({3}));
  EXPECT_EQ(json["b"]["data_offsets"], nlohmann::json({16, 22}));
  EXPECT_EQ(json["__metadata__"]["format"], "pt");
  EXPECT_LT(header.find("\"a\""), header.find("\"b\""));
  // Data follows the header: b's int16 ones.
  EXPECT_EQ(static_cast<uint8_t>(bytes[8 + n + 16]), 1);
  EXPECT_EQ(static_cast<uint8_t>(bytes[8 + n + 17]), 0);
  // Nothing but the file in the directory (no temp file left).
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir),
                          std::filesystem::directory_iterator()),
            1);
}

TEST(SafetensorsWriterTest, RejectsBadInputsWithoutWriting) {
  const std::string path = ScratchDir() + "/bad.safetensors";
  absl::Status dup = WriteSafetensors(path, {{"x", torch::ones({1})}, {"x", torch::ones({2})}});
  ASSERT_FALSE(dup.ok());
  EXPECT_NE(dup.message().find("duplicate tensor name \"x\""), std::string::npos) << dup;
  EXPECT_NE(dup.message().find(path), std::string::npos) << dup;
  EXPECT_FALSE(WriteSafetensors(path, {{"c", torch::ones({1}, torch::kComplexFloat)}}).ok());
  EXPECT_FALSE(WriteSafetensors(path, {{"u", torch::Tensor()}}).ok());
  EXPECT_FALSE(WriteSafetensors(path, {{"", torch::ones({1})}}).ok());
  EXPECT_FALSE(std::filesystem::exists(path));
  EXPECT_FALSE(WriteSafetensors(ScratchDir() + "/no/such/dir/x.safetensors", {}).ok());
}

// Values asked for one at a time, in the order given, and laid out so;
// a value that is not what its spec announced is refused and nothing is left.
TEST(SafetensorsWriterTest, StreamedWriteProducesInOrder) {
  const std::string dir = ScratchDir();
  const std::string path = dir + "/streamed.safetensors";
  const auto meta = [](std::vector<int64_t> shape, torch::ScalarType dtype) {
    return torch::empty(shape, torch::TensorOptions().dtype(dtype).device(torch::kMeta));
  };
  const std::vector<NamedTensor> specs = {{"z", meta({2, 3}, torch::kFloat)},
                                          {"a", meta({4}, torch::kBFloat16)}};
  const std::vector<torch::Tensor> values = {torch::arange(6, torch::kFloat).view({2, 3}),
                                             torch::ones({4}, torch::kBFloat16)};
  std::vector<size_t> asked;
  const auto produce = [&](size_t i) -> absl::StatusOr<torch::Tensor> {
    asked.push_back(i);
    return values[i];
  };
  ASSERT_TRUE(WriteSafetensorsStreamed(path, specs, produce).ok());
  EXPECT_EQ(asked, (std::vector<size_t>{0, 1}));
  auto reader = OpenOrDie(path);
  ASSERT_NE(reader, nullptr);
  EXPECT_TRUE(BitEqual(*reader->View("z"), values[0]));
  EXPECT_TRUE(BitEqual(*reader->View("a"), values[1]));
  EXPECT_LT(reader->Entry("z")->begin, reader->Entry("a")->begin);  // not sorted by name

  const std::string bad = dir + "/bad_streamed.safetensors";
  const absl::Status wrong = WriteSafetensorsStreamed(
      bad, specs, [&](size_t i) -> absl::StatusOr<torch::Tensor> { return values[0]; });
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.message().find("tensor \"a\""), std::string::npos) << wrong;
  const absl::Status failed = WriteSafetensorsStreamed(
      bad, specs,
      [](size_t) -> absl::StatusOr<torch::Tensor> { return absl::DataLossError("source gone"); });
  EXPECT_NE(failed.message().find("source gone"), std::string::npos) << failed;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    EXPECT_EQ(entry.path().filename().string().find("bad_streamed"), std::string::npos);
  }
}

TEST(SafetensorsWriterTest, OverwritesAtomically) {
  const std::string path = ScratchDir() + "/w.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {{"x", torch::ones({4})}}).ok());
  ASSERT_TRUE(WriteSafetensors(path, {{"y", torch::zeros({2})}}).ok());
  auto reader = OpenOrDie(path);
  ASSERT_NE(reader, nullptr);
  EXPECT_EQ(reader->Names(), std::vector<std::string>{"y"});
  EXPECT_TRUE(reader->Metadata().empty());
}

TEST(SafetensorsReaderTest, ReadSliceMatchesNarrow) {
  const std::string path = ScratchDir() + "/slice.safetensors";
  torch::manual_seed(1);
  const torch::Tensor w = torch::randn({6, 5, 4});
  const torch::Tensor h = torch::randn({8, 6}).to(torch::kBFloat16);
  ASSERT_TRUE(WriteSafetensors(path, {{"w", w}, {"h", h}}).ok());
  auto reader = OpenOrDie(path);
  ASSERT_NE(reader, nullptr);
  for (int64_t dim = 0; dim < 3; ++dim) {
    absl::StatusOr<torch::Tensor> slice = reader->ReadSlice("w", dim, 1, 3);
    ASSERT_TRUE(slice.ok()) << slice.status();
    EXPECT_TRUE(BitEqual(*slice, reader->View("w")->narrow(dim, 1, 3))) << "dim " << dim;
  }
  EXPECT_TRUE(BitEqual(*reader->ReadSlice("h", 0, 4, 4), h.narrow(0, 4, 4)));
  EXPECT_TRUE(BitEqual(*reader->ReadSlice("h", 1, 3, 2), h.narrow(1, 3, 2)));
  EXPECT_TRUE(BitEqual(*reader->ReadSlice("h", -1, 0, 6), h));
  EXPECT_EQ(reader->ReadSlice("h", 1, 6, 0)->numel(), 0);
  // Out of range: clear errors naming the tensor.
  for (auto [dim, start, length] :
       {std::tuple<int64_t, int64_t, int64_t>{2, 0, 1}, {0, 5, 4}, {0, -1, 2}, {1, 0, 7}}) {
    absl::StatusOr<torch::Tensor> bad = reader->ReadSlice("h", dim, start, length);
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("\"h\""), std::string::npos) << bad.status();
  }
  EXPECT_FALSE(reader->ReadSlice("nope", 0, 0, 1).ok());
}

TEST(SafetensorsReaderTest, ReadSliceOfFixture) {
  auto reader = OpenOrDie(FixturesDir() + "/llama/model/model.safetensors");
  ASSERT_NE(reader, nullptr);
  const torch::Tensor full = *reader->View("model.layers.0.mlp.gate_proj.weight");
  EXPECT_TRUE(BitEqual(*reader->ReadSlice("model.layers.0.mlp.gate_proj.weight", 0, 64, 64),
                       full.narrow(0, 64, 64)));
  EXPECT_TRUE(BitEqual(*reader->ReadSlice("model.layers.0.mlp.gate_proj.weight", 1, 32, 32),
                       full.narrow(1, 32, 32)));
}

// A file made of the given header text (length computed) and data bytes.
std::string RawFile(const std::string& header, const std::string& data) {
  std::string bytes(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i, n >>= 8) bytes[i] = static_cast<char>(n & 0xff);
  return bytes + header + data;
}

// Writes `contents`, opens it and expects an error mentioning the path and
// every one of `needles`.
void ExpectOpenError(const std::string& contents, const std::vector<std::string>& needles) {
  const std::string path = ScratchDir() + "/bad.safetensors";
  WriteFile(path, contents);
  absl::StatusOr<std::shared_ptr<SafetensorsReader>> reader = SafetensorsReader::Open(path);
  ASSERT_FALSE(reader.ok()) << "opened a malformed file";
  const std::string message(reader.status().message());
  EXPECT_NE(message.find(path), std::string::npos) << message;
  for (const std::string& needle : needles) {
    EXPECT_NE(message.find(needle), std::string::npos)
        << "want \"" << needle << "\" in: " << message;
  }
}

const char kGoodEntry[] = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";

TEST(SafetensorsMalformedTest, GoodBaselineOpens) {
  const std::string path = ScratchDir() + "/good.safetensors";
  WriteFile(path, RawFile(absl::StrCat("{", kGoodEntry, "}"), std::string(8, '\0')));
  EXPECT_TRUE(SafetensorsReader::Open(path).ok());
}

TEST(SafetensorsMalformedTest, EmptyFile) { ExpectOpenError("", {"shorter than"}); }

TEST(SafetensorsMalformedTest, TruncatedLength) {
  ExpectOpenError(std::string("\x10\x00\x00", 3), {"3 bytes"});
}

TEST(SafetensorsMalformedTest, TruncatedData) {
  // Header promises 8 bytes of data, file holds 4.
  ExpectOpenError(RawFile(absl::StrCat("{", kGoodEntry, "}"), std::string(4, '\0')),
                  {"\"t\"", "out of range"});
}

TEST(SafetensorsMalformedTest, HeaderLengthBeyondFileSize) {
  std::string bytes = RawFile("{}", "");
  bytes[0] = 100;
  ExpectOpenError(bytes, {"header length 100", "exceeds the file size"});
}

TEST(SafetensorsMalformedTest, AbsurdHeaderLength) {
  std::string bytes = RawFile("{}", "");
  bytes[7] = 0x7f;  // ~9e18
  ExpectOpenError(bytes, {"header length"});
}

TEST(SafetensorsMalformedTest, HeaderOver100MegabytesIsAbsurd) {
  const std::string path = ScratchDir() + "/huge.safetensors";
  std::string bytes = RawFile("{}", "");
  const uint64_t n = 101ull * 1024 * 1024;
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  WriteFile(path, bytes);
  std::filesystem::resize_file(path, n + 16);  // sparse: the length fits the file
  absl::StatusOr<std::shared_ptr<SafetensorsReader>> reader = SafetensorsReader::Open(path);
  ASSERT_FALSE(reader.ok());
  EXPECT_NE(reader.status().message().find("absurd"), std::string::npos) << reader.status();
}

TEST(SafetensorsMalformedTest, NonJsonHeader) {
  ExpectOpenError(RawFile("{\"t\": [1, 2", ""), {"not valid JSON"});
  ExpectOpenError(RawFile("[1, 2, 3]", ""), {"not a JSON object"});
}

TEST(SafetensorsMalformedTest, OffsetsOutOfRange) {
  ExpectOpenError(
      RawFile(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", std::string(8, '\0')),
      {"\"t\"", "[8, 16) out of range"});
  ExpectOpenError(
      RawFile(R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", std::string(8, '\0')),
      {"\"t\"", "out of range"});
}

TEST(SafetensorsMalformedTest, OverlappingTensors) {
  ExpectOpenError(RawFile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("b":{"dtype":"I32","shape":[2],"data_offsets":[4,12]}})",
                          std::string(12, '\0')),
                  {"\"a\"", "\"b\"", "overlap"});
}

TEST(SafetensorsMalformedTest, ShapeAndOffsetsDisagree) {
  ExpectOpenError(
      RawFile(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(12, '\0')),
      {"\"t\"", "span 8 bytes", "needs 12"});
}

TEST(SafetensorsMalformedTest, WrongDtype) {
  ExpectOpenError(
      RawFile(R"({"t":{"dtype":"F31","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0')),
      {"\"t\"", "unknown dtype \"F31\""});
}

TEST(SafetensorsMalformedTest, MissingOrBadFields) {
  ExpectOpenError(RawFile(R"({"t":{"dtype":"F32","shape":[2]}})", std::string(8, '\0')),
                  {"\"t\"", "missing \"data_offsets\""});
  ExpectOpenError(RawFile(R"({"t":{"dtype":"F32","data_offsets":[0,8]}})", std::string(8, '\0')),
                  {"\"t\"", "missing \"shape\""});
  ExpectOpenError(
      RawFile(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", std::string(8, '\0')),
      {"\"t\"", "shape"});
  ExpectOpenError(
      RawFile(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", std::string(8, '\0')),
      {"\"t\"", "data_offsets"});
  ExpectOpenError(RawFile(R"({"__metadata__":{"k":1}})", ""), {"__metadata__", "\"k\""});
}

TEST(SafetensorsMalformedTest, MissingFile) {
  absl::StatusOr<std::shared_ptr<SafetensorsReader>> reader =
      SafetensorsReader::Open(ScratchDir() + "/absent.safetensors");
  ASSERT_FALSE(reader.ok());
  EXPECT_NE(reader.status().message().find("absent.safetensors"), std::string::npos);
  absl::StatusOr<std::shared_ptr<SafetensorsReader>> dir = SafetensorsReader::Open(ScratchDir());
  ASSERT_FALSE(dir.ok());
  EXPECT_NE(dir.status().message().find("not a regular file"), std::string::npos) << dir.status();
}

TEST(SafetensorsReaderTest, Float8ViewsDequantizedAndRawBytes) {
  const std::string path = ScratchDir() + "/f8.safetensors";
  const std::string data =
      "\x38\x40\xB8\x7E\x01\x7F"
      "\x3C\x40\xBC\x7C";
  WriteFile(path, RawFile(R"({"a":{"dtype":"F8_E4M3","shape":[2,3],"data_offsets":[0,6]},)"
                          R"("b":{"dtype":"F8_E5M2","shape":[4],"data_offsets":[6,10]}})",
                          data));
  auto reader = OpenOrDie(path);
  ASSERT_NE(reader, nullptr);
  EXPECT_EQ(reader->Entry("a")->dtype, "F8_E4M3");
  EXPECT_EQ(reader->Entry("a")->shape, (std::vector<int64_t>{2, 3}));
  const torch::Tensor a = *reader->View("a");
  ASSERT_EQ(a.scalar_type(), torch::kFloat32);
  ASSERT_EQ(a.sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(a[0][0].item<float>(), 1.0f);
  EXPECT_EQ(a[0][1].item<float>(), 2.0f);
  EXPECT_EQ(a[0][2].item<float>(), -1.0f);
  EXPECT_EQ(a[1][0].item<float>(), 448.0f);
  EXPECT_EQ(a[1][1].item<float>(), 1.0f / 512);
  EXPECT_TRUE(std::isnan(a[1][2].item<float>()));
  const torch::Tensor b = *reader->View("b");
  EXPECT_EQ(b[0].item<float>(), 1.0f);
  EXPECT_EQ(b[2].item<float>(), -1.0f);
  EXPECT_TRUE(std::isinf(b[3].item<float>()));
  const torch::Tensor slice = *reader->ReadSlice("a", 1, 1, 2);
  EXPECT_EQ(slice.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::allclose(slice.narrow(0, 0, 1), a.narrow(0, 0, 1).narrow(1, 1, 2)));
  const torch::Tensor raw = *reader->ViewBytes("a");
  EXPECT_EQ(raw.scalar_type(), torch::kUInt8);
  EXPECT_EQ(raw.numel(), 6);
  EXPECT_EQ(raw[3].item<int>(), 0x7E);
}

}  // namespace
}  // namespace fulcrum::checkpoint
