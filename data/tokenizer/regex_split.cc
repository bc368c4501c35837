#include "data/tokenizer/regex_split.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <utility>

#include "absl/status/status.h"
#include "core/check.h"
#include "data/tokenizer/unicode_util.h"

namespace fulcrum::data::internal {
namespace {

// Per-thread PCRE2 scratch: match data (only the overall match is read, so
// one pair fits every pattern) and a JIT stack larger than the 32 KiB default
// so that long runs (e.g. `\s+(?!\S)` over many spaces) do not fail.
class ThreadScratch {
 public:
  ThreadScratch() {
    match_data_ = pcre2_match_data_create(1, nullptr);
    jit_stack_ = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    context_ = pcre2_match_context_create(nullptr);
    pcre2_jit_stack_assign(context_, nullptr, jit_stack_);
  }
  ~ThreadScratch() {
    pcre2_match_context_free(context_);
    pcre2_jit_stack_free(jit_stack_);
    pcre2_match_data_free(match_data_);
  }
  ThreadScratch(const ThreadScratch&) = delete;
  ThreadScratch& operator=(const ThreadScratch&) = delete;

  pcre2_match_data* match_data() { return match_data_; }
  pcre2_match_context* context() { return context_; }

 private:
  pcre2_match_data* match_data_ = nullptr;
  pcre2_jit_stack* jit_stack_ = nullptr;
  pcre2_match_context* context_ = nullptr;
};

ThreadScratch& Scratch() {
  thread_local ThreadScratch scratch;
  return scratch;
}

class RegexPattern : public SplitPattern {
 public:
  explicit RegexPattern(pcre2_code* code) : code_(code) {}
  ~RegexPattern() override { pcre2_code_free(code_); }

  void FindMatches(std::string_view text, std::vector<Span>* spans) const override {
    spans->clear();
    ThreadScratch& scratch = Scratch();
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t search_from = 0;   // the reference's last_end
    size_t previous = 0;      // end of the last accepted match
    bool have_match = false;  // the reference's last_match_end.is_some()
    while (search_from <= text.size()) {
      int rc = pcre2_match(code_, subject, text.size(), search_from, PCRE2_NO_UTF_CHECK,
                           scratch.match_data(), scratch.context());
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
        rc = pcre2_match(code_, subject, text.size(), search_from,
                         PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, scratch.match_data(), nullptr);
      }
      if (rc < 0) break;  // no match (other errors: treat the rest as unmatched)
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(scratch.match_data());
      const size_t start = ovector[0];
      const size_t end = ovector[1];
      if (start == end && have_match && previous == end) {
        // As Oniguruma's find_iter: no empty match right after a match; step
        // one character.
        if (search_from >= text.size()) break;
        size_t next = search_from;
        NextCodePoint(text, &next);
        search_from = next;
        continue;
      }
      if (start != previous) spans->push_back({previous, start, false});
      spans->push_back({start, end, true});
      previous = end;
      have_match = true;
      search_from = end;
    }
    if (previous != text.size()) spans->push_back({previous, text.size(), false});
  }

 private:
  pcre2_code* code_;
};

class Literal : public SplitPattern {
 public:
  explicit Literal(std::string literal) : literal_(std::move(literal)) {}
  void FindMatches(std::string_view text, std::vector<Span>* spans) const override {
    spans->clear();
    size_t previous = 0;
    if (!literal_.empty()) {
      for (size_t at = text.find(literal_); at != std::string_view::npos;
           at = text.find(literal_, at + literal_.size())) {
        if (at != previous) spans->push_back({previous, at, false});
        spans->push_back({at, at + literal_.size(), true});
        previous = at + literal_.size();
      }
    }
    if (previous != text.size()) spans->push_back({previous, text.size(), false});
  }

 private:
  std::string literal_;
};

class CharPredicate : public SplitPattern {
 public:
  explicit CharPredicate(bool (*predicate)(char32_t)) : predicate_(predicate) {}
  void FindMatches(std::string_view text, std::vector<Span>* spans) const override {
    spans->clear();
    size_t previous = 0;
    size_t pos = 0;
    while (pos < text.size()) {
      const size_t start = pos;
      const char32_t c = NextCodePoint(text, &pos);
      if (!predicate_(c)) continue;
      if (start != previous) spans->push_back({previous, start, false});
      spans->push_back({start, pos, true});
      previous = pos;
    }
    if (previous != text.size()) spans->push_back({previous, text.size(), false});
  }

 private:
  bool (*predicate_)(char32_t);
};

}  // namespace

absl::StatusOr<SplitBehavior> ParseSplitBehavior(const std::string& name) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  return absl::InvalidArgumentError("unknown split behavior \"" + name + "\"");
}

absl::StatusOr<std::unique_ptr<SplitPattern>> CompileRegexPattern(const std::string& pattern) {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                    PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    return absl::InvalidArgumentError("regex \"" + pattern + "\" rejected by PCRE2 at offset " +
                                      std::to_string(error_offset) + ": " +
                                      reinterpret_cast<const char*>(message));
  }
  // JIT failure (e.g. unsupported platform) is not an error: the
  // interpreter gives the same matches, only slower.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  return std::unique_ptr<SplitPattern>(new RegexPattern(code));
}

std::unique_ptr<SplitPattern> LiteralPattern(std::string literal) {
  return std::make_unique<Literal>(std::move(literal));
}

std::unique_ptr<SplitPattern> CharPredicatePattern(bool (*predicate)(char32_t)) {
  return std::make_unique<CharPredicate>(predicate);
}

void ApplyBehavior(SplitBehavior behavior, bool invert, std::vector<Span>* spans) {
  if (invert) {
    for (Span& span : *spans) span.is_match = !span.is_match;
  }
  std::vector<Span>& s = *spans;
  size_t out = 0;  // spans are compacted in place into s[0, out)
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      out = s.size();
      break;
    case SplitBehavior::kRemoved:
      for (const Span& span : s) {
        if (!span.is_match) s[out++] = span;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Span& span : s) {
        if (span.is_match && !previous_match && out > 0) {
          s[out - 1].end = span.end;
        } else {
          s[out++] = span;
        }
        previous_match = span.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext: {
      // Walks right to left; kept spans are written from the back.
      size_t write = s.size();
      for (size_t i = s.size(); i-- > 0;) {
        const Span span = s[i];
        if (span.is_match && !previous_match && write < s.size()) {
          s[write].start = span.start;
        } else {
          s[--write] = span;
        }
        previous_match = span.is_match;
      }
      s.erase(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(write));
      out = s.size();
      break;
    }
    case SplitBehavior::kContiguous:
      for (size_t i = 0; i < s.size(); ++i) {
        const Span span = s[i];
        if (span.is_match == previous_match && out > 0) {
          s[out - 1].end = span.end;
        } else {
          s[out++] = span;
        }
        previous_match = span.is_match;
      }
      break;
  }
  s.resize(out);
  size_t kept = 0;
  for (const Span& span : s) {
    if (span.start != span.end) s[kept++] = span;
  }
  s.resize(kept);
}

}  // namespace fulcrum::data::internal
