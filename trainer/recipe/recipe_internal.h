// Allowed values of the recipe's enum fields, shared by the parser (which
// reports them with file:line:col) and ValidateRecipe (for recipes built in code).
#pragma once

#include <string>
#include <vector>

namespace fulcrum::recipe {

// data.format. "pretokenized" is JSONL of ids (only through data.path); the others are
// tokenized by fulcrum (data/dataset/text_dataset.h).
inline const std::vector<std::string>& KnownDataFormats() {
  static const std::vector<std::string> kValues = {"pretokenized", "text", "instruction",
                                                   "messages", "sharegpt"};
  return kValues;
}
// Formats a data.datasets entry or data.validation may have ("" = data.format).
inline const std::vector<std::string>& KnownTextFormats() {
  static const std::vector<std::string> kValues = {"text", "instruction", "messages", "sharegpt"};
  return kValues;
}
inline const std::vector<std::string>& KnownErrorPolicies() {
  static const std::vector<std::string> kValues = {"fail", "skip"};
  return kValues;
}
inline const std::vector<std::string>& KnownTruncations() {
  static const std::vector<std::string> kValues = {"truncate", "drop"};
  return kValues;
}
inline const std::vector<std::string>& KnownMethods() {
  static const std::vector<std::string> kValues = {"lora", "full"};
  return kValues;
}
inline const std::vector<std::string>& KnownScheduleTypes() {
  static const std::vector<std::string> kValues = {"constant", "linear", "cosine"};
  return kValues;
}
inline const std::vector<std::string>& KnownNonfinitePolicies() {
  static const std::vector<std::string> kValues = {"abort", "skip"};
  return kValues;
}

inline const std::vector<std::string>& KnownRecomputeModes() {
  static const std::vector<std::string> kValues = {"none", "selective", "full"};
  return kValues;
}

inline const std::vector<std::string>& KnownDtypes() {
  static const std::vector<std::string> kValues = {"fp32", "bf16"};
  return kValues;
}
inline const std::vector<std::string>& KnownAuxLosses() {
  static const std::vector<std::string> kValues = {"none", "switch", "seq"};
  return kValues;
}
inline const std::vector<std::string>& KnownDevices() {
  static const std::vector<std::string> kValues = {"cpu", "cuda"};
  return kValues;
}

}  // namespace fulcrum::recipe
