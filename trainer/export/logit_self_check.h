// The export's self-check: the logits of a fixed prompt from the model an
// export was made from against those of what it wrote, read back the way a
// user's loader reads it. Both forwards run one decoder layer at a time (a
// one-chunk pipeline stage per layer, loaded, run and dropped), so the check
// holds no more of the model in memory than the export does, plus one layer.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "trainer/export/export_source.h"

namespace fulcrum::exporter {

enum class ExportFormat { kHf, kMerged, kPeft };

struct SelfCheckReport {
  int64_t tokens = 0;          // of the prompt
  double max_abs_diff = 0.0;   // over every logit
  double max_abs_logit = 0.0;  // of the source's logits: the scale the tolerance is relative to
};

// The source forward applies adapters unmerged (so a merged export is
// checked against the adapters, not against its own merge), the written
// directory is loaded with LoadHfWeights (hf, merged) or as the source's base
// plus LoadPeftAdapter (peft). Both compute in fp32 from the values as held.
absl::StatusOr<SelfCheckReport> CompareExportLogits(ExportSource& source,
                                                    const std::string& written,
                                                    ExportFormat format);

}  // namespace fulcrum::exporter
