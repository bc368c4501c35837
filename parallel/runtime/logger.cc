#include "parallel/runtime/logger.h"

namespace fulcrum::parallel {

void Logger::Write(FILE* stream, const std::string& text) const {
  // One fprintf per line keeps lines of different ranks from interleaving.
  std::string out;
  size_t begin = 0;
  while (begin <= text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    absl::StrAppend(&out, "[fulcrum r", rank_, "] ", text.substr(begin, end - begin), "\n");
    begin = end + 1;
  }
  std::fputs(out.c_str(), stream);
  std::fflush(stream);
}

}  // namespace fulcrum::parallel
