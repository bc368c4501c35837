// Internal: the reference library's Pattern::find_matches and
// SplitDelimiterBehavior, over a literal string, a PCRE2 regex (standing in
// for the reference's Oniguruma) or a per-character predicate.
//
// Defines: Span, SplitBehavior, SplitPattern, CompileRegexPattern,
// LiteralPattern, CharPredicatePattern, ParseSplitBehavior, ApplyBehavior.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace fulcrum::data::internal {

// A byte range [start, end) of a piece, and whether the pattern matched it.
struct Span {
  size_t start = 0;
  size_t end = 0;
  bool is_match = false;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// "Removed", "Isolated", ... (the reference's serde names).
absl::StatusOr<SplitBehavior> ParseSplitBehavior(const std::string& name);

class SplitPattern {
 public:
  virtual ~SplitPattern() = default;
  // Replaces *spans with the alternating matched / unmatched spans covering
  // `text` (non-empty), as the reference's find_matches. Thread-safe.
  virtual void FindMatches(std::string_view text, std::vector<Span>* spans) const = 0;
};

// Oniguruma-compatible options: UTF, UCP (Unicode \s \w \d), MULTILINE (Ruby
// syntax anchors ^ $ at lines). Errors name the pattern and PCRE2's message.
absl::StatusOr<std::unique_ptr<SplitPattern>> CompileRegexPattern(const std::string& pattern);
// Every occurrence of `literal`, left to right, non-overlapping; an empty
// literal never matches.
std::unique_ptr<SplitPattern> LiteralPattern(std::string literal);
// Every character for which `predicate` is true is its own match.
std::unique_ptr<SplitPattern> CharPredicatePattern(bool (*predicate)(char32_t));

// Turns the spans of FindMatches into the kept byte ranges (is_match unused
// in the result), empty ranges dropped. `invert` swaps matched / unmatched
// first.
void ApplyBehavior(SplitBehavior behavior, bool invert, std::vector<Span>* spans);

}  // namespace fulcrum::data::internal
