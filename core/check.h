// FULCRUM_CHECK: broken invariants (bugs, never user errors). Prints
// file:line, the condition and a message, then aborts every rank.
#pragma once

#include <string>

#include "absl/strings/str_cat.h"

namespace fulcrum::internal {
[[noreturn]] void CheckFailed(const char* file, int line, const char* condition,
                              const std::string& message);
}  // namespace fulcrum::internal

// Usage: FULCRUM_CHECK(n % tp == 0, "n=", n, " tp=", tp);
#define FULCRUM_CHECK(condition, ...)                                  \
  do {                                                                 \
    if (!(condition)) {                                                \
      ::fulcrum::internal::CheckFailed(__FILE__, __LINE__, #condition, \
                                       ::absl::StrCat(__VA_ARGS__));   \
    }                                                                  \
  } while (0)
