#include "data/template/segment_builder.h"

#include "absl/strings/str_cat.h"

namespace fulcrum::data {
namespace {

bool IsAsciiSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

}  // namespace

void SegmentBuilder::AddPrompt(std::string_view text) {
  if (!pieces_.empty() && pieces_.back().answer_index < 0) {
    pieces_.back().text.append(text);
    return;
  }
  pieces_.push_back(Piece{std::string(text), -1});
}

void SegmentBuilder::AddAnswer(std::string_view header, std::string_view answer) {
  std::string answer_text(answer);
  if (!header.empty() && header.back() == '\n' && StartsWithSpace(answer)) {
    header.remove_suffix(1);
    answer_text.insert(0, "\n");
  }
  AddPrompt(header);
  pieces_.push_back(Piece{std::move(answer_text), answers_++});
}

RenderedChat SegmentBuilder::Finish(const RenderOptions& options) const {
  RenderedChat chat;
  for (const Piece& piece : pieces_) {
    if (piece.text.empty()) continue;
    bool target =
        options.train_on_prompt ||
        (piece.answer_index >= 0 && (!options.mask_history || piece.answer_index == answers_ - 1));
    if (!chat.segments.empty() && chat.segments.back().is_target == target) {
      chat.segments.back().text += piece.text;
    } else {
      chat.segments.push_back(RenderedSegment{piece.text, target});
    }
  }
  return chat;
}

std::string TrimWhitespace(std::string_view text) {
  size_t begin = 0;
  size_t end = text.size();
  while (begin < end && IsAsciiSpace(text[begin])) ++begin;
  while (end > begin && IsAsciiSpace(text[end - 1])) --end;
  return std::string(text.substr(begin, end - begin));
}

bool StartsWithSpace(std::string_view text) { return !text.empty() && IsAsciiSpace(text.front()); }

absl::Status UnknownRoleError(const std::string& template_name, size_t index,
                              const std::string& role) {
  return absl::InvalidArgumentError(absl::StrCat("message ", index, " has role '", role, "'; the ",
                                                 template_name,
                                                 " chat template accepts system, user, "
                                                 "assistant"));
}

absl::Status CheckBasicConversation(const std::string& template_name,
                                    const Conversation& conversation) {
  if (conversation.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("empty conversation given to the ", template_name, " chat template"));
  }
  for (size_t i = 0; i < conversation.size(); ++i) {
    const std::string& role = conversation[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      return UnknownRoleError(template_name, i, role);
    }
  }
  return absl::OkStatus();
}

}  // namespace fulcrum::data
