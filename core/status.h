// Status propagation for errors a user can cause (files, YAML, data,
// checkpoints, world size): absl::Status travels up and is reported once, at
// the top, with the file and key. Broken invariants use FULCRUM_CHECK instead.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define FULCRUM_CONCAT_INNER_(a, b) a##b
#define FULCRUM_CONCAT_(a, b) FULCRUM_CONCAT_INNER_(a, b)

#define FULCRUM_RETURN_IF_ERROR(expr)                  \
  do {                                                 \
    ::absl::Status fulcrum_status_ = (expr);           \
    if (!fulcrum_status_.ok()) return fulcrum_status_; \
  } while (0)

#define FULCRUM_ASSIGN_OR_RETURN(lhs, expr) \
  FULCRUM_ASSIGN_OR_RETURN_IMPL_(FULCRUM_CONCAT_(fulcrum_statusor_, __LINE__), lhs, expr)

#define FULCRUM_ASSIGN_OR_RETURN_IMPL_(var, lhs, expr) \
  auto var = (expr);                                   \
  if (!var.ok()) return std::move(var).status();       \
  lhs = std::move(var).value()

namespace fulcrum {

// Prefixes a status message with context ("recipe.yaml: optim.lr: ...")
// keeping its code.
inline absl::Status Annotate(const absl::Status& status, absl::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

}  // namespace fulcrum
