// Mistral-7B-Instruct (v0.1/v0.2) and Gemma chat templates: both require
// user/assistant alternation after an optional leading system message.
//
// Defines: MakeMistralTemplate, MakeGemmaTemplate.
//
// mistral: BOS, then " [INST] USER [/INST]" and " ANSWER" EOS per turn; a
// leading system message is prepended to the first user message as
// "SYSTEM\n\nUSER". The template has no generation prompt: a prompt ending in
// " [/INST]" is already one. Errors as the template raises them.
// gemma (Gemma 3's template; Gemma 1/2 render the same without a system
// message): BOS, then "<start_of_turn>ROLE\nCONTENT|trim<end_of_turn>\n" with
// ROLE "model" for the assistant; a leading system message plus "\n\n" is
// prepended to the first user content.
#pragma once

#include <memory>

#include "data/template/chat_template.h"
#include "data/template/segment_builder.h"

namespace fulcrum::data {

std::unique_ptr<ChatTemplate> MakeMistralTemplate(const TemplateTokens& tokens);
std::unique_ptr<ChatTemplate> MakeGemmaTemplate(const TemplateTokens& tokens);

}  // namespace fulcrum::data
