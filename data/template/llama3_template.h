// Llama-3 Instruct and Llama-3.1 Instruct chat templates.
//
// Defines: MakeLlama3Template, MakeLlama31Template.
//
// llama3 renders Meta-Llama-3-Instruct's current template:
//   BOS <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT|trim<|eot_id|> ...
// with the assistant header only when add_generation_prompt.
// llama3_1 renders Llama-3.1-Instruct's template with no tools and no
// date_string: a system header always comes first, holding
// "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" and the
// (trimmed) system message when the first message is one.
#pragma once

#include <memory>

#include "data/template/chat_template.h"
#include "data/template/segment_builder.h"

namespace fulcrum::data {

std::unique_ptr<ChatTemplate> MakeLlama3Template(const TemplateTokens& tokens);
std::unique_ptr<ChatTemplate> MakeLlama31Template(const TemplateTokens& tokens);

}  // namespace fulcrum::data
