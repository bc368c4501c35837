// Logger: rank-aware console logging. Rank 0 prints by default; with
// all_ranks every rank prints. Every line is prefixed "[fulcrum rN] ".
#pragma once

#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"

namespace fulcrum::parallel {

class Logger {
 public:
  Logger(int rank, bool all_ranks) : rank_(rank), all_ranks_(all_ranks) {}

  template <typename... Args>
  void Info(const Args&... args) const {
    if (rank_ == 0 || all_ranks_) Write(stdout, absl::StrCat(args...));
  }
  // Printed by every rank, to stderr.
  template <typename... Args>
  void Warn(const Args&... args) const {
    Write(stderr, absl::StrCat("warning: ", args...));
  }
  int rank() const { return rank_; }

 private:
  void Write(FILE* stream, const std::string& text) const;

  int rank_;
  bool all_ranks_;
};

}  // namespace fulcrum::parallel
