// fulcrum generate --model DIR [--adapter DIR] (--prompt TEXT | --chat FILE.json)
//                  [--max-new-tokens N] [--temperature T] [--top-p P] [--seed S]
//
// The tokenizer comes from DIR (tokenizer.json + tokenizer_config.json). The
// prompt is rendered through the model's chat template (with the generation
// prompt) when tokenizer_config.json holds one fulcrum recognises, else
// encoded raw with special tokens. Stops at an eos id (tokenizer_config
// eos_token, config.json / generation_config.json eos_token_id) or after N
// tokens. The answer (special tokens skipped) goes to stdout, from rank 0;
// progress and errors to stderr.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "core/file_util.h"
#include "core/status.h"
#include "data/template/chat_template.h"
#include "data/tokenizer/tokenizer.h"
#include "data/tokenizer/utf8.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/flags.h"
#include "trainer/generate/generator.h"
#include "trainer/loop/model_factory.h"
#include "trainer/lora/peft_adapter.h"

namespace fulcrum::cli {
namespace {

namespace fs = std::filesystem;

struct GenerateFlags {
  std::string model_dir;
  std::string adapter_dir;
  std::string prompt;     // --prompt, or
  std::string chat_file;  // --chat
  generate::GenerateOptions options;
};

absl::Status BadFlag(const std::string& flag, const std::string& expected, const std::string& got) {
  return absl::InvalidArgumentError(
      absl::StrCat("fulcrum generate: --", flag, ": expected ", expected, ", got '", got, "'"));
}

absl::StatusOr<GenerateFlags> ParseGenerateFlags(const Args& args) {
  FlagSpec spec;
  spec.valued = {"model",          "adapter",     "prompt", "chat",
                 "max-new-tokens", "temperature", "top-p",  "seed"};
  spec.required = {"model"};
  FULCRUM_ASSIGN_OR_RETURN(const ParsedFlags flags, ParseFlags("generate", args, spec));
  GenerateFlags out;
  out.model_dir = flags.Get("model");
  out.adapter_dir = flags.Get("adapter");
  out.prompt = flags.Get("prompt");
  out.chat_file = flags.Get("chat");
  if (flags.values.count("prompt") == flags.values.count("chat")) {
    return absl::InvalidArgumentError(
        "fulcrum generate: give exactly one of --prompt TEXT and --chat FILE.json");
  }
  const std::string n = flags.Get("max-new-tokens", "128");
  if (!absl::SimpleAtoi(n, &out.options.max_new_tokens) || out.options.max_new_tokens < 1) {
    return BadFlag("max-new-tokens", "a positive integer", n);
  }
  const std::string t = flags.Get("temperature", "0");
  double& temperature = out.options.sampling.temperature;
  if (!absl::SimpleAtod(t, &temperature) || !(temperature >= 0) || std::isinf(temperature)) {
    return BadFlag("temperature", "a number >= 0 (0 = greedy)", t);
  }
  const std::string p = flags.Get("top-p", "1");
  double& top_p = out.options.sampling.top_p;
  if (!absl::SimpleAtod(p, &top_p) || !(top_p > 0 && top_p <= 1)) {
    return BadFlag("top-p", "a number in (0, 1]", p);
  }
  const std::string s = flags.Get("seed", "0");
  if (!absl::SimpleAtoi(s, &out.options.sampling.seed)) {
    return BadFlag("seed", "a non-negative integer", s);
  }
  return out;
}

// --chat FILE.json: [{"role": ..., "content": ...}, ...].
absl::StatusOr<data::Conversation> ReadChat(const std::string& path) {
  FULCRUM_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON: ", e.what()));
  }
  if (!json.is_array() || json.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": expected a non-empty list of {\"role\", \"content\"} messages"));
  }
  data::Conversation chat;
  for (size_t i = 0; i < json.size(); ++i) {
    const nlohmann::json& m = json[i];
    const std::string where = absl::StrCat(path, ": [", i, "]");
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
        !m["content"].is_string()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": expected {\"role\": string, \"content\": string}"));
    }
    chat.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    if (data::FindInvalidUtf8(chat.back().content)) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".content: invalid UTF-8"));
    }
  }
  return chat;
}

// eos_token_id of a config.json / generation_config.json (int or list);
// absent file or key -> nothing.
absl::Status AddEosIds(const std::string& path, std::set<int32_t>* ids) {
  if (!fs::exists(path)) return absl::OkStatus();
  FULCRUM_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  try {
    const nlohmann::json json = nlohmann::json::parse(text);
    if (!json.is_object() || !json.contains("eos_token_id")) return absl::OkStatus();
    const nlohmann::json& eos = json["eos_token_id"];
    if (eos.is_number_integer()) {
      ids->insert(eos.get<int32_t>());
    } else if (eos.is_array()) {
      for (const auto& id : eos) ids->insert(id.get<int32_t>());
    } else if (!eos.is_null()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": eos_token_id: expected an integer or a list of integers"));
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": eos_token_id: ", e.what()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> EosIds(const std::string& model_dir,
                                            const data::Tokenizer& tokenizer) {
  std::set<int32_t> ids;
  if (tokenizer.config().eos_token) {
    const auto id = tokenizer.TokenToId(*tokenizer.config().eos_token);
    if (id) ids.insert(*id);
  }
  FULCRUM_RETURN_IF_ERROR(AddEosIds(model_dir + "/config.json", &ids));
  FULCRUM_RETURN_IF_ERROR(AddEosIds(model_dir + "/generation_config.json", &ids));
  return std::vector<int32_t>(ids.begin(), ids.end());
}

// The prompt's ids: through the chat template when one is recognised.
absl::StatusOr<std::vector<int32_t>> PromptIds(const GenerateFlags& flags,
                                               const data::Tokenizer& tokenizer) {
  data::Conversation chat;
  if (!flags.chat_file.empty()) {
    FULCRUM_ASSIGN_OR_RETURN(chat, ReadChat(flags.chat_file));
  } else {
    if (data::FindInvalidUtf8(flags.prompt)) {
      return absl::InvalidArgumentError("fulcrum generate: --prompt: invalid UTF-8");
    }
    chat.push_back({"user", flags.prompt});
  }
  auto chat_template = data::CreateChatTemplate("auto", tokenizer.config());
  if (!chat_template.ok()) {
    if (!flags.chat_file.empty()) {
      return Annotate(chat_template.status(),
                      absl::StrCat(flags.chat_file, ": --chat needs a known chat template"));
    }
    std::fprintf(stderr, "[fulcrum] no recognised chat template; encoding the prompt raw\n");
    return tokenizer.Encode(flags.prompt, /*add_special_tokens=*/true);
  }
  data::RenderOptions render;
  render.add_generation_prompt = true;
  FULCRUM_ASSIGN_OR_RETURN(const data::RenderedChat rendered,
                           (*chat_template)->Render(chat, render));
  // The rendered text carries its own BOS where the template writes one.
  return tokenizer.Encode(rendered.Text(), /*add_special_tokens=*/false);
}

}  // namespace

absl::Status RunGenerate(const Args& args, const parallel::World& world) {
  FULCRUM_ASSIGN_OR_RETURN(GenerateFlags flags, ParseGenerateFlags(args));
  const std::string tokenizer_path = flags.model_dir + "/tokenizer.json";
  if (!fs::exists(tokenizer_path)) {
    return absl::NotFoundError(absl::StrCat(
        "fulcrum generate: ", tokenizer_path,
        " not found: --model needs the tokenizer files (tokenizer.json, tokenizer_config.json)"));
  }
  FULCRUM_ASSIGN_OR_RETURN(const auto tokenizer, data::Tokenizer::Load(tokenizer_path));
  FULCRUM_ASSIGN_OR_RETURN(const std::vector<int32_t> prompt, PromptIds(flags, *tokenizer));
  FULCRUM_ASSIGN_OR_RETURN(flags.options.eos_ids, EosIds(flags.model_dir, *tokenizer));

  loop::ModelRequest request;
  request.path = flags.model_dir;
  // Generation runs the main model only (HF drops multi-token-prediction
  // layers as well).
  request.load.skip_mtp_layers = true;
  FULCRUM_ASSIGN_OR_RETURN(loop::BuiltModel built, loop::BuildModel(request));
  if (!flags.adapter_dir.empty()) {
    FULCRUM_RETURN_IF_ERROR(lora::LoadPeftAdapter(*built.model, flags.adapter_dir).status());
  }
  if (prompt.empty()) return absl::InvalidArgumentError("fulcrum generate: the prompt is empty");
  for (int32_t id : prompt) {
    if (id < 0 || id >= built.config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "fulcrum generate: the tokenizer produced id ", id, " but the model's vocab_size is ",
          built.config.vocab_size, " (", flags.model_dir, "/config.json)"));
    }
  }
  const auto start = std::chrono::steady_clock::now();
  const generate::GenerateResult result = generate::Generate(built.model, prompt, flags.options);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!world.is_root()) return absl::OkStatus();
  std::fprintf(stderr, "[fulcrum] prompt %zu tokens, generated %zu (%s) in %.2f s\n", prompt.size(),
               result.tokens.size(), result.stopped_at_eos ? "eos" : "max-new-tokens", seconds);
  const std::string answer = tokenizer->Decode(result.tokens, /*skip_special_tokens=*/true);
  std::fwrite(answer.data(), 1, answer.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  return absl::OkStatus();
}

}  // namespace fulcrum::cli
