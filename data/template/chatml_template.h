// ChatML templates: plain ChatML, Qwen2.5 and Qwen3.
//
// Defines: MakeChatmlTemplate, MakeQwen25Template, MakeQwen3Template.
//
// Every turn is <|im_start|>ROLE\nCONTENT<|im_end|>\n; the generation prompt
// is <|im_start|>assistant\n.
//   chatml:  no default system message.
//   qwen2_5: "You are Qwen, created by Alibaba Cloud. You are a helpful
//            assistant." as the system message when the first message is not one.
//   qwen3:   no default system; the assistant turns after the last user query
//            render the <think> block as Qwen3's template does for string
//            contents without reasoning_content (enable_thinking undefined):
//            the last assistant turn always carries "<think>\nREASONING\n</think>\n\n",
//            with REASONING taken from a "<think>...</think>" prefix of the
//            content (empty when none); earlier turns drop their think block.
#pragma once

#include <memory>

#include "data/template/chat_template.h"
#include "data/template/segment_builder.h"

namespace fulcrum::data {

std::unique_ptr<ChatTemplate> MakeChatmlTemplate();
std::unique_ptr<ChatTemplate> MakeQwen25Template();
std::unique_ptr<ChatTemplate> MakeQwen3Template();

}  // namespace fulcrum::data
