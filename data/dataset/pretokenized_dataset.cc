#include "data/dataset/pretokenized_dataset.h"

#include <limits>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/file_util.h"
#include "core/status.h"

namespace fulcrum::data {
namespace {

using nlohmann::json;

// Reads the integer `value` (the element `index` of the list `key`) into *out.
absl::Status ReadInteger(const json& value, absl::string_view key, size_t index, int64_t* out) {
  if (value.is_number_unsigned()) {
    const uint64_t u = value.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(
          absl::StrCat(key, "[", index, "] = ", u, " is out of the int64 range"));
    }
    *out = static_cast<int64_t>(u);
    return absl::OkStatus();
  }
  if (value.is_number_integer()) {
    *out = value.get<int64_t>();
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(key, "[", index, "] is not an integer: ", value.dump()));
}

absl::StatusOr<std::vector<int64_t>> ReadIdList(const json& object, absl::string_view key) {
  const auto it = object.find(std::string(key));
  if (it == object.end()) return absl::InvalidArgumentError(absl::StrCat("missing \"", key, "\""));
  if (!it->is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", key, "\" is not a list (", it->type_name(), ")"));
  }
  std::vector<int64_t> ids(it->size());
  for (size_t i = 0; i < it->size(); ++i) {
    FULCRUM_RETURN_IF_ERROR(ReadInteger((*it)[i], key, i, &ids[i]));
  }
  return ids;
}

// Parses one non-blank line into a Sample; errors do not carry the location.
absl::StatusOr<Sample> ParseSample(absl::string_view line) {
  json object = json::parse(line.begin(), line.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (object.is_discarded()) return absl::InvalidArgumentError("invalid JSON");
  if (!object.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected a JSON object, got ", object.type_name()));
  }
  Sample sample;
  FULCRUM_ASSIGN_OR_RETURN(sample.input_ids, ReadIdList(object, "input_ids"));
  if (sample.input_ids.empty()) return absl::InvalidArgumentError("empty sample: input_ids is []");
  for (size_t i = 0; i < sample.input_ids.size(); ++i) {
    if (sample.input_ids[i] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("input_ids[", i, "] = ", sample.input_ids[i], " is negative"));
    }
  }
  if (object.contains("labels")) {
    FULCRUM_ASSIGN_OR_RETURN(sample.labels, ReadIdList(object, "labels"));
    if (sample.labels.size() != sample.input_ids.size()) {
      return absl::InvalidArgumentError(absl::StrCat("labels has ", sample.labels.size(),
                                                     " entries but input_ids has ",
                                                     sample.input_ids.size()));
    }
    for (size_t i = 0; i < sample.labels.size(); ++i) {
      if (sample.labels[i] < 0 && sample.labels[i] != kIgnoreIndex) {
        return absl::InvalidArgumentError(absl::StrCat("labels[", i, "] = ", sample.labels[i],
                                                       " is negative and not ", kIgnoreIndex));
      }
    }
  } else {
    sample.labels = sample.input_ids;
  }
  return sample;
}

absl::Status CheckIds(const std::vector<int64_t>& ids, absl::string_view key, int64_t vocab_size,
                      bool allow_ignore) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (allow_ignore && ids[i] == kIgnoreIndex) continue;
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          key, "[", i, "] = ", ids[i], " is out of range for vocab_size ", vocab_size));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<Sample>> LoadPretokenizedJsonl(const std::string& path) {
  FULCRUM_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  std::vector<Sample> samples;
  size_t begin = 0;
  for (int64_t line_number = 1; begin < text.size(); ++line_number) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    const absl::string_view line =
        absl::StripAsciiWhitespace(absl::string_view(text).substr(begin, end - begin));
    begin = end + 1;
    if (line.empty()) continue;
    absl::StatusOr<Sample> sample = ParseSample(line);
    if (!sample.ok()) return Annotate(sample.status(), absl::StrCat(path, ":", line_number));
    sample->line = line_number;
    samples.push_back(*std::move(sample));
  }
  if (samples.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no samples"));
  return samples;
}

absl::Status CheckVocabulary(const std::vector<Sample>& samples, int64_t vocab_size,
                             const std::string& source) {
  if (vocab_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": vocab_size must be positive, got ", vocab_size));
  }
  for (size_t s = 0; s < samples.size(); ++s) {
    const Sample& sample = samples[s];
    const std::string where = sample.line > 0 ? absl::StrCat(source, ":", sample.line)
                                              : absl::StrCat(source, ": sample ", s);
    FULCRUM_RETURN_IF_ERROR(
        Annotate(CheckIds(sample.input_ids, "input_ids", vocab_size, false), where));
    FULCRUM_RETURN_IF_ERROR(Annotate(CheckIds(sample.labels, "labels", vocab_size, true), where));
  }
  return absl::OkStatus();
}

}  // namespace fulcrum::data
