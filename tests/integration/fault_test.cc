// Faults during training, under mpirun:
//   non-finite steps: train.on_nonfinite: skip drops and counts them,
//     abort stops before the update with the previous checkpoint latest;
//   preemption: SIGTERM to one rank mid-run: all ranks save and exit 0, and
//     the resumed run continues the uninterrupted one bit for bit;
//   a rank that dies (SIGKILL) or hangs (SIGSTOP): the job ends non-zero
//     within the communication timeout, naming the rank and the operation;
//   kill -9 at each of the 20 moments of a save (kSaveMoments): `latest`
//     always names a complete, readable checkpoint, which resumes;
//   disk full during a save: a clear error naming the file, the previous
//     checkpoint still latest and readable.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "tests/integration/fixture_compare.h"
#include "tests/integration/layout_compare.h"
#include "tests/integration/train_recipes.h"
#include "tests/test_support.h"
#include "trainer/checkpoint/sharded_checkpoint.h"

namespace fulcrum::testing {
namespace {

namespace fs = std::filesystem;

std::string Model() { return FixturesDir() + "/llama/model"; }

// The step lines of a metrics file as JSON (NaN losses are null there).
std::vector<nlohmann::json> StepLines(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object() && j.contains("grad_norm")) out.push_back(j);
  }
  return out;
}

// The checkpoint `latest` names under root, and whether every tensor of it
// reads back (sizes and checksums) with finite values.
std::string LatestReadableCheckpoint(const std::string& root) {
  auto dir = checkpoint::ResolveCheckpoint(root, "latest");
  EXPECT_TRUE(dir.ok()) << dir.status();
  if (!dir.ok()) return "";
  auto reader = checkpoint::ShardedCheckpointReader::Open(*dir);
  EXPECT_TRUE(reader.ok()) << reader.status();
  if (!reader.ok()) return "";
  for (const auto& [name, saved] : (*reader)->metadata().tensors) {
    auto tensor = (*reader)->ReadWhole(name);
    EXPECT_TRUE(tensor.ok()) << tensor.status();
    if (tensor.ok() && tensor->is_floating_point()) {
      EXPECT_TRUE(torch::isfinite(*tensor).all().item<bool>()) << *dir << ": " << name;
    }
  }
  return *dir;
}

// `fulcrum ARGS` on `ranks` ranks in the background: the log, mpirun's pid
// and, when it ends, its exit code land in `dir`.
void StartInBackground(const std::string& dir, const std::string& args, int ranks,
                       const std::string& env = "") {
  fs::remove(dir + "/rc");
  RunCommand("(" + env + " OMP_NUM_THREADS=1 " + SourceDir() + "/scripts/mpirun.sh " +
             std::to_string(ranks) + " " + FulcrumBinary() + " " + args + " > " + dir +
             "/log 2>&1 & echo $! > " + dir + "/pid; wait $!; echo $? > " + dir +
             "/rc) > /dev/null 2>&1 &");
}

// Polls until `done` or `seconds` pass; whether it came true.
template <typename Predicate>
bool WaitFor(Predicate done, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return done();
}

int ExitCodeOf(const std::string& dir) {
  return std::stoi(std::string(absl::StripAsciiWhitespace(ReadFile(dir + "/rc"))));
}

// The pid of one rank (a child of mpirun).
pid_t SomeRank(const std::string& dir) {
  const std::string mpirun(absl::StripAsciiWhitespace(ReadFile(dir + "/pid")));
  const CommandResult children = RunCommand("pgrep -P " + mpirun);
  const std::vector<std::string> pids =
      absl::StrSplit(absl::StripAsciiWhitespace(children.output), '\n');
  EXPECT_FALSE(pids.empty() || pids.front().empty()) << "no rank under mpirun " << mpirun;
  return pids.empty() || pids.front().empty() ? 0 : std::stoi(pids.back());
}

class FaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A run killed while DiskFull's tmpfs was mounted left it mounted, and
    // ScratchDir cannot remove a mount point.
    ::umount((ScratchDirPath() + "/small").c_str());
    dir_ = ScratchDir();
    WriteTinyData(dir_ + "/data.jsonl", 64, 512);
  }
  // LayoutRecipe in dir_/name (metrics there), with `overrides`.
  std::string Args(const std::string& name, const std::string& overrides) {
    const std::string dir = dir_ + "/" + name;
    fs::create_directories(dir);
    WriteFile(dir + "/recipe.yaml", LayoutRecipe(Model(), dir_ + "/data.jsonl", "full", dir));
    return "train " + dir + "/recipe.yaml " + overrides;
  }
  std::string dir_;
};

TEST_F(FaultTest, NonFiniteStepsAreSkippedOrAbortTheRun) {
  // An absurd learning rate overflows the weights after the first update.
  const std::string diverge = " optim.lr=1e37 optim.grad_clip=0 parallel.dp=2 ";
  CommandResult r =
      RunFulcrum(Args("skip", diverge + "train.on_nonfinite=skip checkpoint.dir=" + dir_ +
                                  "/skip/ckpt checkpoint.every=5"),
                 2);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::vector<nlohmann::json> steps = StepLines(dir_ + "/skip/metrics.jsonl");
  ASSERT_EQ(steps.size(), 10u);
  int64_t skipped = 0;
  for (const nlohmann::json& s : steps) skipped += s.value("skipped", false) ? 1 : 0;
  EXPECT_GT(skipped, 0) << r.output;
  EXPECT_EQ(steps.back().value("skipped_steps", int64_t{0}), skipped);
  EXPECT_NE(r.output.find("SKIPPED: non-finite gradient norm"), std::string::npos) << r.output;
  // What was saved is finite: a skipped update changes nothing.
  EXPECT_EQ(LatestReadableCheckpoint(dir_ + "/skip/ckpt"), dir_ + "/skip/ckpt/step-00000010");

  r = RunFulcrum(
      Args("abort", diverge + "checkpoint.dir=" + dir_ + "/abort/ckpt checkpoint.every=1"), 2);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("train.on_nonfinite: abort"), std::string::npos) << r.output;
  const size_t finite_steps = StepLines(dir_ + "/abort/metrics.jsonl").size();
  ASSERT_GE(finite_steps, 1u) << r.output;
  // The last finite step's checkpoint is latest; nothing of the bad step.
  EXPECT_EQ(LatestReadableCheckpoint(dir_ + "/abort/ckpt"),
            dir_ + "/abort/ckpt/step-0000000" + std::to_string(finite_steps));
  EXPECT_FALSE(fs::exists(dir_ + "/abort/ckpt/step-0000000" + std::to_string(finite_steps + 1)));
}

TEST_F(FaultTest, SigtermToOneRankSavesEverywhereAndResumesExactly) {
  const std::string steps = " train.steps=300 parallel.dp=2 parallel.zero=1 ";
  CommandResult r = RunFulcrum(Args("straight", steps), 2);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const StepLog straight = ReadStepLog(dir_ + "/straight/metrics.jsonl");

  const std::string run = dir_ + "/preempted";
  StartInBackground(dir_, Args("preempted", steps + "checkpoint.dir=" + run + "/ckpt"), 2);
  ASSERT_TRUE(WaitFor([&] { return StepLines(run + "/metrics.jsonl").size() >= 10; }, 120));
  const pid_t rank = SomeRank(dir_);
  ASSERT_GT(rank, 0);
  ::kill(rank, SIGTERM);
  ASSERT_TRUE(WaitFor([&] { return fs::exists(dir_ + "/rc"); }, 120));
  const std::string log = ReadFile(dir_ + "/log");
  ASSERT_EQ(ExitCodeOf(dir_), 0) << log;
  EXPECT_NE(log.find("stopping after step"), std::string::npos) << log;
  const std::string saved = LatestReadableCheckpoint(run + "/ckpt");
  const size_t stopped_at = StepLines(run + "/metrics.jsonl").size();
  ASSERT_LT(stopped_at, 300u) << "the run ended before the signal";
  EXPECT_EQ(saved, run + "/ckpt/step-" + std::string(8 - std::to_string(stopped_at).size(), '0') +
                       std::to_string(stopped_at));

  r = RunFulcrum(Args("resumed", steps + "checkpoint.resume=" + run + "/ckpt/" +
                                     fs::path(saved).filename().string()),
                 2);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const StepLog resumed = ReadStepLog(dir_ + "/resumed/metrics.jsonl");
  ASSERT_EQ(resumed.losses.size(), 300 - stopped_at);
  for (size_t s = 0; s < resumed.losses.size(); ++s) {
    ASSERT_EQ(resumed.losses[s], straight.losses[stopped_at + s]) << "step " << stopped_at + s + 1;
  }
}

TEST_F(FaultTest, DeadOrHungRankEndsTheJobNamingTheRank) {
  const std::string steps = " train.steps=100000 parallel.dp=2 parallel.comm_timeout_s=5 ";
  // Killed: mpirun ends the job and names the rank.
  StartInBackground(dir_, Args("killed", steps), 2);
  ASSERT_TRUE(WaitFor([&] { return StepLines(dir_ + "/killed/metrics.jsonl").size() >= 5; }, 120));
  ::kill(SomeRank(dir_), SIGKILL);
  ASSERT_TRUE(WaitFor([&] { return fs::exists(dir_ + "/rc"); }, 60)) << "the job hangs";
  EXPECT_NE(ExitCodeOf(dir_), 0);
  EXPECT_NE(ReadFile(dir_ + "/log").find("rank"), std::string::npos) << ReadFile(dir_ + "/log");

  // Hung: the other rank's collective times out after 5 s, naming itself
  // and the operation; the job ends.
  StartInBackground(dir_, Args("hung", steps), 2);
  ASSERT_TRUE(WaitFor([&] { return StepLines(dir_ + "/hung/metrics.jsonl").size() >= 5; }, 120));
  const pid_t hung = SomeRank(dir_);
  const auto stopped = std::chrono::steady_clock::now();
  ::kill(hung, SIGSTOP);
  const bool ended = WaitFor([&] { return fs::exists(dir_ + "/rc"); }, 60);
  ::kill(hung, SIGKILL);  // never leave it stopped
  ASSERT_TRUE(ended) << "the job hangs";
  const std::chrono::duration<double> took = std::chrono::steady_clock::now() - stopped;
  EXPECT_LT(took.count(), 60.0);
  const std::string log = ReadFile(dir_ + "/log");
  EXPECT_NE(ExitCodeOf(dir_), 0) << log;
  EXPECT_NE(log.find("did not complete within 5.0 s"), std::string::npos) << log;
  EXPECT_NE(log.find("rank"), std::string::npos) << log;
}

// kill -9 at every moment of the step-10 save of a run resumed from step 5
// (keep_last 1, so pruning is among them): `latest` names a complete
// checkpoint that reads back whole and resumes.
TEST_F(FaultTest, KillDuringSaveAtEveryMomentLeavesALatestCompleteCheckpoint) {
  const std::string base = dir_ + "/base";
  CommandResult r =
      RunFulcrum(Args("base", "parallel.dp=2 train.steps=5 checkpoint.dir=" + base + "/ckpt"), 2);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  int resumed_from_new = 0;
  for (const char* moment : checkpoint::kSaveMoments) {
    SCOPED_TRACE(moment);
    const std::string root = dir_ + "/crash_" + moment;
    fs::copy(base + "/ckpt", root, fs::copy_options::recursive);
    r = RunCommand("FULCRUM_TEST_CRASH_SAVE=10:" + std::string(moment) + " OMP_NUM_THREADS=1 " +
                   SourceDir() + "/scripts/mpirun.sh 2 " + FulcrumBinary() + " " +
                   Args(std::string("run_") + moment,
                        "parallel.dp=2 checkpoint.keep_last=1 checkpoint.resume=latest "
                        "checkpoint.dir=" +
                            root));
    EXPECT_NE(r.exit_code, 0) << "no crash at " << moment << "\n" << r.output;
    EXPECT_NE(r.output.find(std::string("SIGKILL at checkpoint moment '") + moment),
              std::string::npos)
        << r.output;
    const std::string latest = LatestReadableCheckpoint(root);
    resumed_from_new += absl::EndsWith(latest, "step-00000010") ? 1 : 0;
    // It resumes (at step 10 there is nothing left to train, at 5 the rest).
    r = RunFulcrum(Args(std::string("resume_") + moment,
                        "parallel.dp=2 checkpoint.resume=latest checkpoint.dir=" + root),
                   2);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("resumed from"), std::string::npos) << r.output;
  }
  // The four moments after `latest` was renamed find the new checkpoint.
  EXPECT_EQ(resumed_from_new, 4);
}

TEST_F(FaultTest, DiskFullDuringSaveIsAnErrorAndThePreviousCheckpointStays) {
  // A 2.5 MB file system holds one checkpoint of the full fine-tune (~1.7
  // MB) but not two. Where mounting is not allowed, a file-size limit below
  // a rank's file (ulimit -f) makes the same write fail.
  const std::string mount = dir_ + "/small";
  fs::create_directories(mount);
  const bool mounted = ::mount("tmpfs", mount.c_str(), "tmpfs", 0, "size=2500k") == 0;
  // Unmounted however the test leaves (an ASSERT returns early).
  const std::unique_ptr<const std::string, void (*)(const std::string*)> unmount(
      mounted ? &mount : nullptr, [](const std::string* m) { ::umount(m->c_str()); });
  const std::string root = mount + "/ckpt";
  const std::string flags = "parallel.dp=2 checkpoint.dir=" + root;
  CommandResult r = RunFulcrum(Args("first", flags + " train.steps=5"), 2);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string limit = mounted ? "" : "trap '' XFSZ; ulimit -f 100; ";
  std::cout << (mounted ? "disk full: a 2.5 MB tmpfs\n" : "disk full: ulimit -f 100 KB\n");
  r = RunCommand(limit + "OMP_NUM_THREADS=1 " + SourceDir() + "/scripts/mpirun.sh 2 " +
                 FulcrumBinary() + " " +
                 Args("second", flags + " train.steps=10 checkpoint.resume=latest"));
  const std::string latest = LatestReadableCheckpoint(root);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find(mounted ? "No space left on device" : "File too large"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find(".safetensors"), std::string::npos) << r.output;
  EXPECT_TRUE(absl::EndsWith(latest, "step-00000005")) << latest;
  EXPECT_FALSE(fs::exists(root + "/step-00000010.tmp")) << "the partial save was not removed";
}

// A damaged checkpoint fails the resume with the damaged file named: a
// flipped byte, a short file, a missing file, metadata of another model.
TEST_F(FaultTest, DamagedCheckpointIsNamedAtResume) {
  const std::string root = dir_ + "/good/ckpt";
  CommandResult r = RunFulcrum(Args("good", "train.steps=5 checkpoint.dir=" + root));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string step = root + "/step-00000005";
  const std::string shard = "rank-00000.safetensors";
  auto resume_copy = [&](const std::string& name,
                         const std::function<void(const std::string&)>& damage,
                         const std::string& extra = "") {
    const std::string copy = dir_ + "/" + name;
    fs::copy(step, copy, fs::copy_options::recursive);
    damage(copy);
    return RunFulcrum(Args("resume_" + name, "checkpoint.resume=" + copy + " " + extra));
  };
  r = resume_copy("flipped", [&](const std::string& d) {
    std::fstream f(d + "/" + shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-100, std::ios::end);
    const char c = static_cast<char>(f.peek() ^ 0x20);
    f.seekp(-100, std::ios::end);
    f.put(c);
  });
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find(shard + ": checksum mismatch"), std::string::npos) << r.output;
  r = resume_copy("short", [&](const std::string& d) {
    fs::resize_file(d + "/" + shard, fs::file_size(d + "/" + shard) - 1);
  });
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find(shard + ": "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("truncated"), std::string::npos) << r.output;
  r = resume_copy("missing", [&](const std::string& d) { fs::remove(d + "/" + shard); });
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find(shard + ": cannot open"), std::string::npos) << r.output;
  r = resume_copy(
      "other_model", [](const std::string&) {}, "model.path=" + FixturesDir() + "/qwen2/model");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("metadata.json"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace fulcrum::testing
