// `fulcrum generate` end to end: a tiny random Llama (recipes/tiny/config.json)
// carrying the demo tokenizer (recipes/tiny/tokenizer*.json, vocab 512), and
// the HF llama fixture with its PEFT adapter.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "tests/test_support.h"

namespace fulcrum::testing {
namespace {
namespace fs = std::filesystem;

struct Output {
  int exit_code = -1;
  std::string out;  // stdout: the answer
  std::string err;  // stderr: progress and errors
};

// `fulcrum generate ARGS` with stdout and stderr kept apart (stderr through
// `err_path`).
Output RunGenerate(const std::string& args, const std::string& err_path) {
  const CommandResult r = RunCommand("(OMP_NUM_THREADS=1 " + FulcrumBinary() + " generate " + args +
                                     " 2>" + err_path + ")");
  return {r.exit_code, r.output, ReadFile(err_path)};
}

void CopyTokenizer(const std::string& model_dir) {
  for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
    fs::copy_file(SourceDir() + "/recipes/tiny/" + name, model_dir + "/" + name,
                  fs::copy_options::overwrite_existing);
  }
}

class GenerateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ScratchDir();
    // The tiny config with the demo tokenizer's special ids (bos
    // <|begin_of_text|> = 508, eos <|im_end|> = 510).
    nlohmann::json config =
        nlohmann::json::parse(ReadFile(SourceDir() + "/recipes/tiny/config.json"));
    config["bos_token_id"] = 508;
    config["eos_token_id"] = 510;
    WriteFile(dir_ + "/config.json", config.dump(2));
    model_ = dir_ + "/model";
    const CommandResult r =
        RunFulcrum("init --config " + dir_ + "/config.json --out " + model_ + " --seed 3");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    CopyTokenizer(model_);
  }
  Output Generate(const std::string& args) { return RunGenerate(args, dir_ + "/stderr.txt"); }
  // Expects exit code 1 and every fragment on stderr, nothing on stdout.
  void ExpectError(const std::string& args, const std::vector<std::string>& fragments) {
    const Output o = Generate(args);
    EXPECT_EQ(o.exit_code, 1) << o.err;
    EXPECT_TRUE(o.out.empty()) << o.out;
    for (const std::string& f : fragments) {
      EXPECT_NE(o.err.find(f), std::string::npos) << "'" << f << "' not in:\n" << o.err;
    }
    EXPECT_EQ(o.err.find("terminate called"), std::string::npos) << o.err;
  }
  std::string dir_, model_;
};

TEST_F(GenerateTest, PromptGreedyPrintsTextDeterministically) {
  const std::string args =
      "--model " + model_ + " --prompt 'What is the capital of France?' --max-new-tokens 8";
  const Output first = Generate(args);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_GT(first.out.size(), 1u) << "no text printed";  // text + '\n'
  EXPECT_EQ(first.out.back(), '\n');
  EXPECT_NE(first.err.find("generated"), std::string::npos) << first.err;
  // The chat template was recognised (no raw fallback).
  EXPECT_EQ(first.err.find("no recognised chat template"), std::string::npos) << first.err;
  const Output second = Generate(args);
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_EQ(first.out, second.out);
}

TEST_F(GenerateTest, SamplingIsDeterministicPerSeed) {
  const std::string args = "--model " + model_ +
                           " --prompt 'Reverse the word.' --max-new-tokens 12 --temperature 1.5 "
                           "--top-p 0.95 --seed ";
  const Output a = Generate(args + "11");
  const Output b = Generate(args + "11");
  ASSERT_EQ(a.exit_code, 0) << a.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  EXPECT_EQ(a.out, b.out);
}

TEST_F(GenerateTest, ChatFileWorks) {
  WriteFile(dir_ + "/chat.json",
            R"([{"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": "Compute the result.\n2 + 3"}])");
  const Output o =
      Generate("--model " + model_ + " --chat " + dir_ + "/chat.json --max-new-tokens 6");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_FALSE(o.out.empty());
}

TEST_F(GenerateTest, WithoutChatTemplateThePromptIsEncodedRaw) {
  nlohmann::json config = nlohmann::json::parse(ReadFile(model_ + "/tokenizer_config.json"));
  config.erase("chat_template");
  WriteFile(model_ + "/tokenizer_config.json", config.dump());
  const Output o = Generate("--model " + model_ + " --prompt 'hello' --max-new-tokens 4");
  ASSERT_EQ(o.exit_code, 0) << o.err;
  EXPECT_NE(o.err.find("no recognised chat template"), std::string::npos) << o.err;
  // --chat needs a template.
  WriteFile(dir_ + "/chat.json", R"([{"role": "user", "content": "hi"}])");
  ExpectError("--model " + model_ + " --chat " + dir_ + "/chat.json", {"chat.json"});
}

TEST_F(GenerateTest, AdapterOnFixtureModel) {
  // The HF llama fixture (vocab 512) with the demo tokenizer and its adapter.
  const std::string model = dir_ + "/fixture_model";
  // File by file into a new (writable) directory: the fixtures are read-only.
  fs::create_directories(model);
  for (const auto& entry : fs::directory_iterator(FixturesDir() + "/llama/model")) {
    fs::copy_file(entry.path(), model + "/" + entry.path().filename().string());
  }
  CopyTokenizer(model);
  const std::string args =
      "--model " + model + " --prompt 'Give the opposite of the word.' " + "--max-new-tokens 6";
  const Output base = Generate(args);
  const Output adapted = Generate(args + " --adapter " + FixturesDir() + "/llama/lora");
  ASSERT_EQ(base.exit_code, 0) << base.err;
  ASSERT_EQ(adapted.exit_code, 0) << adapted.err;
  ExpectError(args + " --adapter " + dir_ + "/no_adapter", {"no_adapter"});
}

TEST_F(GenerateTest, MissingTokenizerIsAClearError) {
  fs::remove(model_ + "/tokenizer.json");
  ExpectError("--model " + model_ + " --prompt hi", {"tokenizer.json", "not found"});
}

TEST_F(GenerateTest, BadChatFilesAreClearErrors) {
  const std::string base = "--model " + model_ + " --chat ";
  WriteFile(dir_ + "/broken.json", "[{\"role\": \"user\", ");
  ExpectError(base + dir_ + "/broken.json", {"broken.json", "not valid JSON"});
  WriteFile(dir_ + "/object.json", R"({"role": "user", "content": "hi"})");
  ExpectError(base + dir_ + "/object.json", {"object.json", "list"});
  WriteFile(dir_ + "/nocontent.json", R"([{"role": "user"}])");
  ExpectError(base + dir_ + "/nocontent.json", {"nocontent.json: [0]", "content"});
  WriteFile(dir_ + "/badrole.json", R"([{"role": "robot", "content": "hi"}])");
  ExpectError(base + dir_ + "/badrole.json", {"robot"});
  ExpectError(base + dir_ + "/absent.json", {"absent.json"});
}

TEST_F(GenerateTest, BadFlagValuesAreClearErrors) {
  const std::string base = "--model " + model_ + " --prompt hi ";
  ExpectError(base + "--temperature -1", {"--temperature", "-1"});
  ExpectError(base + "--temperature warm", {"--temperature", "warm"});
  ExpectError(base + "--top-p 0", {"--top-p", "(0, 1]"});
  ExpectError(base + "--top-p 1.5", {"--top-p"});
  ExpectError(base + "--max-new-tokens 0", {"--max-new-tokens", "positive"});
  ExpectError(base + "--max-new-tokens many", {"--max-new-tokens"});
  ExpectError(base + "--seed -3", {"--seed"});
  ExpectError(base + "--chat " + dir_ + "/x.json", {"exactly one of --prompt"});
  ExpectError("--model " + model_, {"exactly one of --prompt"});
  ExpectError("--prompt hi", {"--model"});
  ExpectError(base + "--beams 4", {"beams"});
}

TEST_F(GenerateTest, TokenizerLargerThanTheModelIsAClearError) {
  nlohmann::json config = nlohmann::json::parse(ReadFile(dir_ + "/config.json"));
  config["vocab_size"] = 300;
  WriteFile(dir_ + "/small.json", config.dump(2));
  const std::string small = dir_ + "/small_model";
  ASSERT_EQ(RunFulcrum("init --config " + dir_ + "/small.json --out " + small).exit_code, 0);
  CopyTokenizer(small);
  ExpectError("--model " + small + " --prompt 'What is the capital of France?'",
              {"vocab_size", "300"});
}

}  // namespace
}  // namespace fulcrum::testing
