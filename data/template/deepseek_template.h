// DeepSeek chat templates.
//
// Defines: MakeDeepseekV3Template, MakeDeepseekV2Template.
//
// deepseek_v3 (DeepSeek-V3 without tools): BOS, then every system message
// joined by "\n\n", then <｜User｜>CONTENT and <｜Assistant｜>CONTENT<｜end▁of▁sentence｜>
// per turn in order; the generation prompt is <｜Assistant｜>.
// deepseek_v2 (DeepSeek-V2-Chat): BOS, then per message in order
// "CONTENT\n\n" (system), "User: CONTENT\n\n", "Assistant: CONTENT" EOS; the
// generation prompt is "Assistant:" (no space: the model writes it).
#pragma once

#include <memory>

#include "data/template/chat_template.h"
#include "data/template/segment_builder.h"

namespace fulcrum::data {

std::unique_ptr<ChatTemplate> MakeDeepseekV3Template(const TemplateTokens& tokens);
std::unique_ptr<ChatTemplate> MakeDeepseekV2Template(const TemplateTokens& tokens);

}  // namespace fulcrum::data
