// `fulcrum prepare` + `fulcrum train` on an instruction JSONL with a tiny
// byte-level BPE tokenizer written here: the prepared cache is reused when
// nothing changed and rebuilt when the data, the tokenizer or an option that
// changes tokens did; validation loss reaches the metrics file on 1 and 2 ranks.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "tests/integration/train_recipes.h"
#include "tests/test_support.h"

namespace fulcrum::testing {
namespace {
namespace fs = std::filesystem;

#define EXPECT_CONTAINS(text, part)          \
  EXPECT_TRUE(absl::StrContains(text, part)) \
      << "output: " << (text) << "\nexpected part: " << (part)

// GPT-2's byte -> printable code point map (the ByteLevel alphabet), as UTF-8.
std::vector<std::string> ByteLevelAlphabet() {
  std::vector<int> printable;
  for (int b = '!'; b <= '~'; ++b) printable.push_back(b);
  for (int b = 0xA1; b <= 0xAC; ++b) printable.push_back(b);
  for (int b = 0xAE; b <= 0xFF; ++b) printable.push_back(b);
  std::vector<int> code(256, -1);
  for (int b : printable) code[b] = b;
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    if (code[b] < 0) code[b] = next++;
  }
  std::vector<std::string> out(256);
  for (int b = 0; b < 256; ++b) {
    const int c = code[b];
    std::string s;
    if (c < 0x80) {
      s.push_back(static_cast<char>(c));
    } else {
      s.push_back(static_cast<char>(0xC0 | (c >> 6)));
      s.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
    out[b] = s;
  }
  return out;
}

// 256 byte tokens + 4 merges + 3 ChatML specials: ids < 263 <= the tiny model's 512.
void WriteTokenizer(const std::string& dir, const std::string& extra_merge = "") {
  fs::create_directories(dir);
  const std::vector<std::string> alphabet = ByteLevelAlphabet();
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[alphabet[b]] = b;
  const std::string space = alphabet[' '];  // "Ġ"
  std::vector<std::string> merges = {"h e", space + " t", space + "t he", "i n"};
  vocab["he"] = 256;
  vocab[space + "t"] = 257;
  vocab[space + "the"] = 258;
  vocab["in"] = 259;
  if (!extra_merge.empty()) {  // "o n" -> "on" = 263, a changed tokenizer
    merges.push_back(extra_merge);
    vocab["on"] = 263;
  }
  auto added = [](int id, const std::string& content) {
    return nlohmann::json{{"id", id},        {"content", content}, {"single_word", false},
                          {"lstrip", false}, {"rstrip", false},    {"normalized", false},
                          {"special", true}};
  };
  const nlohmann::json byte_level = {{"type", "ByteLevel"},
                                     {"add_prefix_space", false},
                                     {"trim_offsets", true},
                                     {"use_regex", true}};
  const nlohmann::json tokenizer = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens",
       {added(260, "<|endoftext|>"), added(261, "<|im_start|>"), added(262, "<|im_end|>")}},
      {"normalizer", nullptr},
      {"pre_tokenizer", byte_level},
      {"post_processor", byte_level},
      {"decoder", byte_level},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", merges}}}};
  WriteFile(dir + "/tokenizer.json", tokenizer.dump(1));
  const nlohmann::json config = {
      {"bos_token", nullptr},
      {"eos_token", "<|im_end|>"},
      {"pad_token", "<|endoftext|>"},
      {"add_bos_token", false},
      {"chat_template",
       "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
       "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt "
       "%}{{ '<|im_start|>assistant\\n' }}{% endif %}"}};
  WriteFile(dir + "/tokenizer_config.json", config.dump(1));
}

void WriteInstructions(const std::string& path, int records, const std::string& salt = "") {
  std::string text;
  for (int i = 0; i < records; ++i) {
    const nlohmann::json record = {
        {"instruction", absl::StrCat("Name the number after ", i, salt, ".")},
        {"input", i % 3 == 0 ? "Answer in one word." : ""},
        {"output", absl::StrCat("The number is ", i + 1, ", then in order.")}};
    absl::StrAppend(&text, record.dump(), "\n");
  }
  WriteFile(path, text);
}

std::string TextRecipe(const std::string& dir, const std::string& model) {
  return absl::StrCat("model: {path: ", model, "}\n",
                      "data:\n"
                      "  path: data.jsonl\n"
                      "  format: instruction\n"
                      "  tokenizer: tok\n"
                      "  chat_template: chatml\n"
                      "  validation: {fraction: 0.25}\n"
                      "  cache_dir: cache\n"
                      "finetune: {method: lora, lora: {rank: 4, alpha: 8, targets: [all-linear]}}\n"
                      "optim: {lr: 0.003}\n"
                      "schedule: {type: constant}\n"
                      "batch: {global_batch: 4, micro_batch: 2, seq_len: 64}\n"
                      "train: {steps: 4, eval_every: 2}\n"
                      "logging: {peak_flops: 1.0e9, metrics_file: ",
                      dir, "/metrics.jsonl}\n", "seed: 5\n");
}

struct Metrics {
  std::vector<double> losses;
  std::vector<std::pair<int64_t, double>> val_losses;
};

Metrics ReadMetrics(const std::string& path) {
  Metrics m;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("val_loss")) {
      m.val_losses.emplace_back(j.at("step").get<int64_t>(), j.at("val_loss").get<double>());
    } else {
      m.losses.push_back(j.at("loss").get<double>());
    }
  }
  return m;
}

class PrepareTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ScratchDir();
    model_ = TinyModel(dir_);
    WriteTokenizer(dir_ + "/tok");
    WriteInstructions(dir_ + "/data.jsonl", 24);
    WriteFile(recipe(), TextRecipe(dir_, model_));
  }
  std::string recipe() const { return dir_ + "/r.yaml"; }
  std::vector<fs::path> CacheDirs() const {
    std::vector<fs::path> dirs;
    for (const auto& e : fs::directory_iterator(dir_ + "/cache")) dirs.push_back(e.path());
    return dirs;
  }

  std::string dir_;
  std::string model_;
};

TEST_F(PrepareTest, PrepareThenTrainReusesTheCacheAndLogsValLoss) {
  CommandResult r = RunFulcrum("prepare " + recipe());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_CONTAINS(r.output, "not prepared yet");
  EXPECT_CONTAINS(r.output, "records/s");
  ASSERT_EQ(CacheDirs().size(), 1u);
  const fs::path cache = CacheDirs()[0];
  const nlohmann::json manifest =
      nlohmann::json::parse(ReadFile((cache / "manifest.json").string()));
  EXPECT_EQ(manifest.at("splits").at("train").at("samples").get<int64_t>(), 18);
  EXPECT_EQ(manifest.at("splits").at("validation").at("samples").get<int64_t>(), 6);
  EXPECT_EQ(manifest.at("fingerprint").at("template").get<std::string>(), "chatml");
  EXPECT_EQ(manifest.at("fingerprint").at("files").size(), 3u);  // data, tokenizer, its config

  r = RunFulcrum("prepare " + recipe());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_CONTAINS(r.output, "reusing prepared cache");
  EXPECT_CONTAINS(r.output, "up to date");

  r = RunFulcrum("train " + recipe());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_CONTAINS(r.output, "reusing prepared cache");
  EXPECT_FALSE(absl::StrContains(r.output, "preparing")) << r.output;
  EXPECT_CONTAINS(r.output, "val_loss");
  const Metrics m = ReadMetrics(dir_ + "/metrics.jsonl");
  EXPECT_EQ(m.losses.size(), 4u);
  ASSERT_EQ(m.val_losses.size(), 2u);
  EXPECT_EQ(m.val_losses[0].first, 2);
  EXPECT_EQ(m.val_losses[1].first, 4);
  for (const auto& [step, loss] : m.val_losses) {
    EXPECT_TRUE(std::isfinite(loss) && loss > 0) << step << ": " << loss;
  }
  // A random model over 512 ids starts near ln(512) = 6.24.
  EXPECT_NEAR(m.val_losses[0].second, std::log(512.0), 1.5);
}

TEST_F(PrepareTest, TwoRanksMatchOneRankIncludingValLoss) {
  ASSERT_EQ(RunFulcrum("train " + recipe()).exit_code, 0);
  const Metrics one = ReadMetrics(dir_ + "/metrics.jsonl");
  fs::remove(dir_ + "/metrics.jsonl");
  // Train without a prior prepare: rank 0 prepares, rank 1 waits and maps it.
  fs::remove_all(dir_ + "/cache");
  const CommandResult r = RunFulcrum("train " + recipe() + " parallel.dp=2", 2);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_CONTAINS(r.output, "not prepared yet");
  const Metrics two = ReadMetrics(dir_ + "/metrics.jsonl");
  ASSERT_EQ(one.losses.size(), two.losses.size());
  ASSERT_EQ(two.val_losses.size(), 2u);
  for (size_t i = 0; i < one.losses.size(); ++i) EXPECT_NEAR(one.losses[i], two.losses[i], 1e-4);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(one.val_losses[i].first, two.val_losses[i].first);
    EXPECT_NEAR(one.val_losses[i].second, two.val_losses[i].second, 1e-4);
  }
}

TEST_F(PrepareTest, ChangedDataTokenizerOrOptionRebuilds) {
  ASSERT_EQ(RunFulcrum("prepare " + recipe()).exit_code, 0);
  // The data file changed: same cache directory, stale fingerprint.
  WriteInstructions(dir_ + "/data.jsonl", 24, " again");
  CommandResult r = RunFulcrum("prepare " + recipe());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_CONTAINS(r.output, "stale: fingerprint.files." + dir_ + "/data.jsonl changed");
  EXPECT_EQ(CacheDirs().size(), 1u);
  // The tokenizer changed (one more merge).
  WriteTokenizer(dir_ + "/tok", "o n");
  r = RunFulcrum("prepare " + recipe());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_CONTAINS(r.output, "stale: fingerprint.files." + dir_ + "/tok/tokenizer.json changed");
  // An option that changes labels: its own cache (the key includes it).
  r = RunFulcrum("prepare " + recipe() + " data.train_on_prompt=true");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_CONTAINS(r.output, "not prepared yet");
  EXPECT_EQ(CacheDirs().size(), 2u);
  // Nothing changed: reused.
  r = RunFulcrum("prepare " + recipe() + " data.train_on_prompt=true");
  EXPECT_CONTAINS(r.output, "up to date");
}

TEST_F(PrepareTest, ClearErrors) {
  // No data.tokenizer and a model dir without tokenizer.json.
  CommandResult r = RunFulcrum("validate " + recipe() + " data.tokenizer=");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_CONTAINS(r.output, "data.tokenizer: must be set for data.format instruction");
  EXPECT_CONTAINS(r.output, "holds no tokenizer.json");
  // An unknown template lists the known ones.
  r = RunFulcrum("prepare " + recipe() + " data.chat_template=nope");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_CONTAINS(r.output, "data.chat_template");
  EXPECT_CONTAINS(r.output, "chatml");
  // Pretokenized data has nothing to prepare.
  r = RunFulcrum("prepare " + recipe() + " data.format=pretokenized");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_CONTAINS(r.output, "needs no prepare");
  // A record that is not JSON names the file and line; skip counts it.
  WriteFile(dir_ + "/data.jsonl", ReadFile(dir_ + "/data.jsonl") + "{oops\n");
  r = RunFulcrum("prepare " + recipe());
  EXPECT_NE(r.exit_code, 0);
  EXPECT_CONTAINS(r.output, dir_ + "/data.jsonl:25");
  r = RunFulcrum("prepare " + recipe() + " data.on_error=skip");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_CONTAINS(r.output, "skipped 1");
  // eval_every without validation: a recipe error naming the key.
  r = RunFulcrum("validate " + recipe() + " data.validation={}");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_CONTAINS(r.output, "train.eval_every: needs a validation split");
}

}  // namespace
}  // namespace fulcrum::testing
