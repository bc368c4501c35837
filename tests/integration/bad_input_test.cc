// Every user error is a clear message naming the file and key, exit code 1
// on every rank, no crash, no hang.
#include <gtest/gtest.h>

#include <filesystem>

#include "tests/integration/train_recipes.h"
#include "tests/test_support.h"

namespace fulcrum::testing {
namespace {
namespace fs = std::filesystem;

class BadInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ScratchDir();
    model_ = TinyModel(dir_);
    WriteTinyData(dir_ + "/data.jsonl", 16, 512);
    WriteFile(dir_ + "/r.yaml", TinyTrainRecipe(model_, dir_ + "/data.jsonl", "lora", 2));
  }
  // Runs `fulcrum train` (or validate) and expects exit code 1 with every
  // fragment in the output.
  void ExpectError(const std::string& args, const std::vector<std::string>& fragments,
                   int ranks = 1) {
    const CommandResult r = RunFulcrum(args, ranks);
    EXPECT_NE(r.exit_code, 0) << r.output;
    if (ranks == 1) {
      EXPECT_EQ(r.exit_code, 1) << r.output;  // an error, not a crash
    }
    for (const std::string& f : fragments) {
      EXPECT_NE(r.output.find(f), std::string::npos) << "'" << f << "' not in:\n" << r.output;
    }
    EXPECT_EQ(r.output.find("terminate called"), std::string::npos) << r.output;
  }
  std::string dir_, model_;
};

TEST_F(BadInputTest, UnknownRecipeKey) {
  WriteFile(dir_ + "/bad.yaml", ReadFile(dir_ + "/r.yaml") + "optim2:\n  lr: 1\n");
  ExpectError("train " + dir_ + "/bad.yaml", {"bad.yaml", "unknown key optim2", "optim"});
  ExpectError("train " + dir_ + "/r.yaml optim.lrr=0.1", {"optim.lrr", "optim.lr"});
}

TEST_F(BadInputTest, WrongType) {
  ExpectError("train " + dir_ + "/r.yaml optim.lr=fast", {"optim.lr", "fast"});
}

TEST_F(BadInputTest, MissingModelDirectory) {
  ExpectError("train " + dir_ + "/r.yaml model.path=" + dir_ + "/nowhere",
              {"model.path", "nowhere"});
  ExpectError("validate " + dir_ + "/r.yaml model.path=" + dir_ + "/nowhere", {"nowhere"});
}

TEST_F(BadInputTest, UnsupportedArchitectureListsSupportedOnes) {
  fs::copy(model_, dir_ + "/gpt2");
  std::string config = ReadFile(model_ + "/config.json");
  config.replace(config.find("LlamaForCausalLM"), 16, "GPT2LMHeadModel");
  WriteFile(dir_ + "/gpt2/config.json", config);
  ExpectError("train " + dir_ + "/r.yaml model.path=" + dir_ + "/gpt2",
              {"GPT2LMHeadModel", "LlamaForCausalLM", "Qwen2ForCausalLM", "config.json"});
}

TEST_F(BadInputTest, SequenceLongerThanPositions) {
  ExpectError("train " + dir_ + "/r.yaml batch.seq_len=1024", {"1024", "256"});
  ExpectError("validate " + dir_ + "/r.yaml batch.seq_len=1024", {"seq_len", "1024"});
}

TEST_F(BadInputTest, CorruptedSafetensors) {
  fs::copy(model_, dir_ + "/broken");
  const std::string file = dir_ + "/broken/model.safetensors";
  fs::resize_file(file, fs::file_size(file) / 2);
  ExpectError("train " + dir_ + "/r.yaml model.path=" + dir_ + "/broken", {"model.safetensors"});
  ExpectError("validate " + dir_ + "/r.yaml model.path=" + dir_ + "/broken", {"model.safetensors"});
}

TEST_F(BadInputTest, EmptyDataset) {
  WriteFile(dir_ + "/empty.jsonl", "\n");
  ExpectError("train " + dir_ + "/r.yaml data.path=" + dir_ + "/empty.jsonl", {"empty.jsonl"});
}

TEST_F(BadInputTest, TokenIdBeyondVocabulary) {
  WriteFile(dir_ + "/big.jsonl", "{\"input_ids\": [5, 6, 7]}\n{\"input_ids\": [5, 600, 7]}\n");
  ExpectError("train " + dir_ + "/r.yaml data.path=" + dir_ + "/big.jsonl", {"big.jsonl", "600"});
}

TEST_F(BadInputTest, ResumeWithoutCheckpoint) {
  ExpectError("train " + dir_ + "/r.yaml checkpoint.dir=" + dir_ + "/none checkpoint.resume=latest",
              {"checkpoint.resume"});
}

TEST_F(BadInputTest, ErrorsEndEveryRankUnderMpirun) {
  ExpectError("train " + dir_ + "/r.yaml parallel.dp=2 data.path=" + dir_ + "/missing.jsonl",
              {"missing.jsonl"}, 2);
  // The layout must match the world: the arithmetic is printed.
  ExpectError("train " + dir_ + "/r.yaml", {"world size 2"}, 2);
}

TEST_F(BadInputTest, ParallelLayoutErrorsPrintTheArithmetic) {
  // 3 ranks of tp: the tiny model's 4 heads do not divide by 3.
  ExpectError("train " + dir_ + "/r.yaml parallel.tp=3", {"parallel.tp=3", "4", "divisible"}, 3);
  // The tiny model's 2 layers do not split into 3 stages; the model's config is named.
  ExpectError("train " + dir_ + "/r.yaml parallel.pp=3 batch.micro_batch=1",
              {"parallel.pp", "not divisible", "config.json", "parallel.pp_layers"}, 3);
  // One micro-batch per step cannot fill a 2-stage 1F1B pipeline.
  ExpectError("train " + dir_ + "/r.yaml parallel.pp=2 batch.global_batch=2",
              {"parallel.pp_schedule", "micro-batches"}, 2);
  ExpectError("validate " + dir_ + "/r.yaml parallel.pp_virtual=2",
              {"parallel.pp_virtual", "interleaved_1f1b"});
  ExpectError("validate " + dir_ + "/r.yaml parallel.sequence_parallel=true",
              {"parallel.sequence_parallel"});
}

TEST_F(BadInputTest, ZeroWithoutDataParallelismIsAWarning) {
  const CommandResult r = RunFulcrum("train " + dir_ + "/r.yaml parallel.zero=1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("warning"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("parallel.zero"), std::string::npos) << r.output;
}

TEST_F(BadInputTest, InitWithBadConfigWritesNothing) {
  std::string config = ReadFile(model_ + "/config.json");
  config.replace(config.find("LlamaForCausalLM"), 16, "GPT2LMHeadModel");
  WriteFile(dir_ + "/gpt2.json", config);
  ExpectError("init --config " + dir_ + "/gpt2.json --out " + dir_ + "/new", {"gpt2.json"});
  EXPECT_FALSE(fs::exists(dir_ + "/new"));
  ExpectError("init --config " + dir_ + "/gpt2.json", {"--out"});
}

TEST_F(BadInputTest, ScoreWithBadBatch) {
  WriteFile(dir_ + "/batch.safetensors", "garbage");
  ExpectError("score --model " + model_ + " --batch " + dir_ + "/batch.safetensors --out " + dir_ +
                  "/o.safetensors",
              {"batch.safetensors"});
  EXPECT_FALSE(fs::exists(dir_ + "/o.safetensors"));
  ExpectError("score --model " + model_ + " --bogus 1", {"--bogus"});
}

}  // namespace
}  // namespace fulcrum::testing
