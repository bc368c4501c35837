// Turns samples into fixed-length training rows of seq_len tokens.
//
// Defines: PackingOptions, Row, BuildRows, CountRows, CountTargets.
//
// Packing (pack = true) concatenates the samples in the given order and cuts
// the stream into rows of seq_len tokens; only the last row is padded. Within
// a row each document (or piece of one) gets its own document id, its
// positions restart at 0, and the label of its first token is -100 unless it
// opens the row, so that no token is a target of another document's context.
// NOTE: a sample that does not fit in the rest of a row continues at the start
// of the next row with positions RESTARTING at 0: attention cannot see the
// part in the previous row, so the piece is a sequence of its own, and
// positions stay < seq_len (never past the model's context). Its first token
// opens the row, where it is never a target anyway (targets are labels[1:]).
//
// Without packing (pack = false) each sample is one row, truncated to seq_len
// and right-padded.
//
// Worked example, seq_len 4, pack, samples [a b c] [d e] [f g h i j]:
//   row 0: input a b c d   labels a b c -100   pos 0 1 2 0   doc 0 0 0 1
//   row 1: input e f g h   labels e -100 g h   pos 0 0 1 2   doc 0 1 1 1
//   row 2: input i j 0 0   labels i j -100 -100 pos 0 1 0 0  doc 0 0 -1 -1
// (labels shown equal to the ids where the sample's labels are the ids).
#pragma once

#include <cstdint>
#include <vector>

#include "data/dataset/pretokenized_dataset.h"

namespace fulcrum::data {

struct PackingOptions {
  int64_t seq_len = 512;  // tokens per row
  bool pack = true;       // concatenate samples (else: one sample per row)
};

inline constexpr int64_t kPadId = 0;
inline constexpr int64_t kPadDocumentId = -1;

// One training row: each vector has exactly seq_len entries.
struct Row {
  std::vector<int64_t> input_ids;  // [seq_len], pad id 0
  std::vector<int64_t> labels;     // [seq_len], -100 on padding and on the first token of every
                                   // document after the first in a packed row
  std::vector<int64_t> attention_mask;  // [seq_len], 1 real token, 0 padding
  std::vector<int64_t> position_ids;    // [seq_len], restart at 0 for each document; 0 on padding
  std::vector<int64_t> document_ids;    // [seq_len], 0, 1, 2... per document in the row; padding -1
};

// Rows of samples[order[0]], samples[order[1]], ... . Every index in `order`
// must be valid and options.seq_len >= 1 (checked: caller bugs).
std::vector<Row> BuildRows(const std::vector<Sample>& samples, const std::vector<int64_t>& order,
                           const PackingOptions& options);

// The number of rows BuildRows makes for these samples; it does not depend on
// the order (packing: ceil(total tokens / seq_len); else: one per sample).
int64_t CountRows(const std::vector<Sample>& samples, const PackingOptions& options);

// Targets of a row under the shifted-loss convention: count of labels[1:] != -100.
int64_t CountTargets(const Row& row);

}  // namespace fulcrum::data
