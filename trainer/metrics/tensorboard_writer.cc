#include "trainer/metrics/tensorboard_writer.h"

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "core/crc32c.h"
#include "core/status.h"

namespace fulcrum::metrics {
namespace {

double WallTime() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Protocol buffer wire format: what the Event messages need.
void AppendVarint(std::string& out, uint64_t value) {
  while (value >= 0x80) {
    out.push_back(static_cast<char>((value & 0x7f) | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

void AppendFixed(std::string& out, const void* value, size_t size) {
  // Little-endian, as the x86 and ARM hosts this runs on store it.
  out.append(static_cast<const char*>(value), size);
}

void AppendTag(std::string& out, int field, int wire_type) {
  AppendVarint(out, static_cast<uint64_t>(field) << 3 | static_cast<uint64_t>(wire_type));
}

void AppendBytesField(std::string& out, int field, const std::string& bytes) {
  AppendTag(out, field, 2);
  AppendVarint(out, bytes.size());
  out += bytes;
}

std::string EventHeader(int64_t step) {
  std::string event;
  const double wall_time = WallTime();
  AppendTag(event, 1, 1);  // wall_time: double
  AppendFixed(event, &wall_time, sizeof(wall_time));
  AppendTag(event, 2, 0);  // step: int64
  AppendVarint(event, static_cast<uint64_t>(step));
  return event;
}

}  // namespace

uint32_t MaskedCrc32c(const void* data, size_t size) {
  const uint32_t crc = Crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

absl::StatusOr<std::unique_ptr<TensorBoardWriter>> TensorBoardWriter::Create(
    const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir, ": cannot create: ", ec.message()));
  char host[256] = "localhost";
  ::gethostname(host, sizeof(host) - 1);
  const std::string path = (std::filesystem::path(dir) /
                            absl::StrCat("events.out.tfevents.", static_cast<int64_t>(WallTime()),
                                         ".", host, ".", ::getpid()))
                               .string();
  std::unique_ptr<TensorBoardWriter> writer(new TensorBoardWriter(path));
  writer->out_.open(path, std::ios::binary | std::ios::trunc);
  if (!writer->out_) {
    return absl::InternalError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  }
  std::string event = EventHeader(0);
  AppendBytesField(event, 3, "brain.Event:2");  // file_version
  FULCRUM_RETURN_IF_ERROR(writer->WriteRecord(event));
  return writer;
}

absl::Status TensorBoardWriter::AddScalars(
    int64_t step, const std::vector<std::pair<std::string, double>>& scalars) {
  std::string summary;
  for (const auto& [tag, value] : scalars) {
    std::string entry;
    AppendBytesField(entry, 1, tag);  // tag
    const float simple_value = static_cast<float>(value);
    AppendTag(entry, 2, 5);  // simple_value: float
    AppendFixed(entry, &simple_value, sizeof(simple_value));
    AppendBytesField(summary, 1, entry);  // repeated value
  }
  std::string event = EventHeader(step);
  AppendBytesField(event, 5, summary);
  return WriteRecord(event);
}

absl::Status TensorBoardWriter::WriteRecord(const std::string& data) {
  const uint64_t length = data.size();
  const uint32_t length_crc = MaskedCrc32c(&length, sizeof(length));
  const uint32_t data_crc = MaskedCrc32c(data.data(), data.size());
  out_.write(reinterpret_cast<const char*>(&length), sizeof(length));
  out_.write(reinterpret_cast<const char*>(&length_crc), sizeof(length_crc));
  out_.write(data.data(), static_cast<std::streamsize>(data.size()));
  out_.write(reinterpret_cast<const char*>(&data_crc), sizeof(data_crc));
  out_.flush();
  if (!out_) return absl::InternalError(absl::StrCat(path_, ": write failed"));
  return absl::OkStatus();
}

}  // namespace fulcrum::metrics
