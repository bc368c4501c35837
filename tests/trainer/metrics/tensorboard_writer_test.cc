// TensorBoard event files read back by an independent decoder of the
// TFRecord framing (lengths and masked CRC-32Cs checked) and of the Event
// protocol buffers, as TensorBoard's loader reads them.
#include "trainer/metrics/tensorboard_writer.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/crc32c.h"
#include "tests/test_support.h"
#include "trainer/metrics/step_metrics.h"

namespace fulcrum::metrics {
namespace {

struct Event {
  double wall_time = 0.0;
  int64_t step = -1;
  std::string file_version;
  std::map<std::string, float> scalars;
};

// A protocol buffer reader over [pos, end): just the wire types Event uses.
class Wire {
 public:
  Wire(const std::string& bytes) : data_(bytes) {}
  bool done() const { return pos_ >= data_.size(); }
  uint64_t Varint() {
    uint64_t value = 0;
    for (int shift = 0; pos_ < data_.size(); shift += 7) {
      const uint8_t byte = static_cast<uint8_t>(data_[pos_++]);
      value |= static_cast<uint64_t>(byte & 0x7f) << shift;
      if ((byte & 0x80) == 0) break;
    }
    return value;
  }
  std::string Bytes() {
    const size_t n = Varint();
    std::string out = data_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  template <typename T>
  T Fixed() {
    T value;
    std::memcpy(&value, data_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }

 private:
  std::string data_;
  size_t pos_ = 0;
};

uint32_t Masked(const std::string& bytes) {
  const uint32_t crc = Crc32c(bytes.data(), bytes.size());
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

Event ParseEvent(const std::string& bytes) {
  Event event;
  Wire wire(bytes);
  while (!wire.done()) {
    const uint64_t tag = wire.Varint();
    switch (tag) {
      case (1 << 3) | 1:
        event.wall_time = wire.Fixed<double>();
        break;
      case (2 << 3) | 0:
        event.step = static_cast<int64_t>(wire.Varint());
        break;
      case (3 << 3) | 2:
        event.file_version = wire.Bytes();
        break;
      case (5 << 3) | 2: {
        Wire summary(wire.Bytes());
        while (!summary.done()) {
          EXPECT_EQ(summary.Varint(), (1u << 3) | 2);  // repeated Value value = 1
          Wire value(summary.Bytes());
          std::string name;
          float simple = 0;
          while (!value.done()) {
            const uint64_t field = value.Varint();
            if (field == ((1 << 3) | 2)) name = value.Bytes();
            if (field == ((2 << 3) | 5)) simple = value.Fixed<float>();
          }
          event.scalars[name] = simple;
        }
        break;
      }
      default:
        ADD_FAILURE() << "unexpected field tag " << tag;
        return event;
    }
  }
  return event;
}

// Every record of the file, its framing checked.
std::vector<Event> ReadEvents(const std::string& path) {
  const std::string file = testing::ReadFile(path);
  std::vector<Event> events;
  size_t pos = 0;
  while (pos < file.size()) {
    EXPECT_LE(pos + 12, file.size()) << "truncated record header";
    if (pos + 12 > file.size()) break;
    const std::string length_bytes = file.substr(pos, 8);
    uint64_t length = 0;
    uint32_t length_crc = 0, data_crc = 0;
    std::memcpy(&length, length_bytes.data(), 8);
    std::memcpy(&length_crc, file.data() + pos + 8, 4);
    EXPECT_EQ(length_crc, Masked(length_bytes));
    const std::string data = file.substr(pos + 12, length);
    std::memcpy(&data_crc, file.data() + pos + 12 + length, 4);
    EXPECT_EQ(data_crc, Masked(data));
    events.push_back(ParseEvent(data));
    pos += 12 + length + 4;
  }
  return events;
}

std::string OnlyEventFile(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    files.push_back(entry.path().string());
  }
  EXPECT_EQ(files.size(), 1u);
  EXPECT_NE(files.empty() ? std::string::npos : files[0].find("events.out.tfevents."),
            std::string::npos);
  return files.empty() ? "" : files[0];
}

TEST(TensorBoardWriterTest, MaskedCrcOfNothingIsTheMaskDelta) {
  EXPECT_EQ(MaskedCrc32c("", 0), 0xa282ead8u);
  EXPECT_EQ(MaskedCrc32c("123456789", 9), Masked("123456789"));
}

TEST(TensorBoardWriterTest, ScalarsReadBack) {
  const std::string dir = testing::ScratchDir() + "/tb";
  auto writer = TensorBoardWriter::Create(dir);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->AddScalars(3, {{"train/loss", 2.5}, {"train/lr", 1e-4}}).ok());
  ASSERT_TRUE((*writer)->AddScalars(300, {{"train/loss", 1.25}}).ok());
  const std::vector<Event> events = ReadEvents(OnlyEventFile(dir));
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  EXPECT_GT(events[0].wall_time, 1.7e9);  // seconds since 1970, after 2023
  EXPECT_EQ(events[1].step, 3);
  EXPECT_EQ(events[1].scalars.at("train/loss"), 2.5f);
  EXPECT_EQ(events[1].scalars.at("train/lr"), 1e-4f);
  EXPECT_EQ(events[2].step, 300);  // a two-byte varint
  EXPECT_EQ(events[2].scalars.at("train/loss"), 1.25f);
}

TEST(TensorBoardWriterTest, MetricsSinkWritesEveryStepsScalars) {
  const std::string dir = testing::ScratchDir();
  const parallel::Logger logger(0, false);
  auto sink = MetricsSink::Create(dir + "/m.jsonl", dir + "/tb", logger, 100);
  ASSERT_TRUE(sink.ok()) << sink.status();
  for (int64_t step = 1; step <= 2; ++step) {
    StepMetrics m;
    m.step = step;
    m.total_steps = 2;
    m.loss = 3.0 / static_cast<double>(step);
    m.mfu = 0.5;
    m.expert_load_max_over_mean = {1.5, 2.0};
    m.peak_host_reserved_bytes = step == 2 ? 3 << 20 : 0;  // 0: no host allocator
    m.peak_host_tensor_bytes = step == 2 ? 2 << 20 : 0;
    (*sink)->Record(m);
  }
  const std::vector<Event> events = ReadEvents(OnlyEventFile(dir + "/tb"));
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[2].step, 2);
  EXPECT_EQ(events[2].scalars.at("train/loss"), 1.5f);
  EXPECT_EQ(events[2].scalars.at("throughput/mfu"), 0.5f);
  EXPECT_EQ(events[2].scalars.at("moe/expert_load_max_over_mean/1"), 2.0f);
  EXPECT_TRUE(events[2].scalars.count("memory/peak_rss_bytes"));
  EXPECT_FALSE(events[1].scalars.count("memory/peak_host_reserved_bytes"));
  EXPECT_EQ(events[2].scalars.at("memory/peak_host_reserved_bytes"), 3 << 20);
  EXPECT_EQ(events[2].scalars.at("memory/peak_host_tensor_bytes"), 2 << 20);
  std::ifstream jsonl(dir + "/m.jsonl");
  std::string first, second;
  ASSERT_TRUE(std::getline(jsonl, first) && std::getline(jsonl, second));
  EXPECT_EQ(first.find("peak_host_reserved_bytes"), std::string::npos);
  EXPECT_EQ(nlohmann::json::parse(second).at("peak_host_reserved_bytes"), 3 << 20);

  // A directory that cannot be made names the recipe key.
  testing::WriteFile(dir + "/file", "x");
  auto bad = MetricsSink::Create("", dir + "/file/tb", logger, 1);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("logging.tensorboard_dir"), std::string::npos)
      << bad.status();
}

}  // namespace
}  // namespace fulcrum::metrics
