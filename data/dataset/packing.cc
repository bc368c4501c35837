#include "data/dataset/packing.h"

#include <algorithm>

#include "core/check.h"

namespace fulcrum::data {
namespace {

// A row under construction: tokens are appended until it holds seq_len.
class RowBuilder {
 public:
  explicit RowBuilder(int64_t seq_len) : seq_len_(seq_len) { Reset(); }

  int64_t free() const { return seq_len_ - static_cast<int64_t>(row_.input_ids.size()); }
  bool empty() const { return row_.input_ids.empty(); }

  // Appends sample tokens [begin, begin + count) as a new document of the row.
  void AppendDocument(const Sample& sample, int64_t begin, int64_t count) {
    FULCRUM_CHECK(count >= 1 && count <= free(), "count=", count, " free=", free());
    const int64_t document_id = next_document_id_++;
    for (int64_t i = 0; i < count; ++i) {
      row_.input_ids.push_back(sample.input_ids[begin + i]);
      // The first token of a later document would be predicted from the
      // previous document's last token: not a target.
      const bool crosses_documents = i == 0 && !row_.labels.empty();
      row_.labels.push_back(crosses_documents ? kIgnoreIndex : sample.labels[begin + i]);
      row_.attention_mask.push_back(1);
      row_.position_ids.push_back(i);
      row_.document_ids.push_back(document_id);
    }
  }

  // Pads the row to seq_len, hands it over and starts an empty one.
  Row Finish() {
    while (free() > 0) {
      row_.input_ids.push_back(kPadId);
      row_.labels.push_back(kIgnoreIndex);
      row_.attention_mask.push_back(0);
      row_.position_ids.push_back(0);
      row_.document_ids.push_back(kPadDocumentId);
    }
    Row row = std::move(row_);
    Reset();
    return row;
  }

 private:
  void Reset() {
    row_ = Row();
    for (std::vector<int64_t>* v : {&row_.input_ids, &row_.labels, &row_.attention_mask,
                                    &row_.position_ids, &row_.document_ids}) {
      v->reserve(seq_len_);
    }
    next_document_id_ = 0;
  }

  int64_t seq_len_;
  Row row_;
  int64_t next_document_id_ = 0;
};

}  // namespace

std::vector<Row> BuildRows(const std::vector<Sample>& samples, const std::vector<int64_t>& order,
                           const PackingOptions& options) {
  FULCRUM_CHECK(options.seq_len >= 1, "seq_len=", options.seq_len);
  const auto num_samples = static_cast<int64_t>(samples.size());
  std::vector<Row> rows;
  RowBuilder builder(options.seq_len);
  for (const int64_t index : order) {
    FULCRUM_CHECK(index >= 0 && index < num_samples, "index=", index, " samples=", num_samples);
    const Sample& sample = samples[index];
    const auto length = static_cast<int64_t>(sample.input_ids.size());
    FULCRUM_CHECK(static_cast<int64_t>(sample.labels.size()) == length, "labels ",
                  sample.labels.size(), " != input_ids ", length, " in sample ", index);
    if (!options.pack) {
      // Truncated to seq_len; an empty sample gives an all-padding row.
      const int64_t count = std::min(length, options.seq_len);
      if (count > 0) builder.AppendDocument(sample, 0, count);
      rows.push_back(builder.Finish());
      continue;
    }
    for (int64_t begin = 0; begin < length;) {
      const int64_t count = std::min(length - begin, builder.free());
      builder.AppendDocument(sample, begin, count);
      begin += count;
      if (builder.free() == 0) rows.push_back(builder.Finish());
    }
  }
  if (options.pack && !builder.empty()) rows.push_back(builder.Finish());
  return rows;
}

int64_t CountRows(const std::vector<Sample>& samples, const PackingOptions& options) {
  FULCRUM_CHECK(options.seq_len >= 1, "seq_len=", options.seq_len);
  if (!options.pack) return static_cast<int64_t>(samples.size());
  int64_t tokens = 0;
  for (const Sample& sample : samples) tokens += static_cast<int64_t>(sample.input_ids.size());
  return (tokens + options.seq_len - 1) / options.seq_len;
}

int64_t CountTargets(const Row& row) {
  int64_t targets = 0;
  for (size_t t = 1; t < row.labels.size(); ++t) targets += row.labels[t] != kIgnoreIndex ? 1 : 0;
  return targets;
}

}  // namespace fulcrum::data
