#include "core/parallel_for.h"

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace fulcrum {
namespace {

// Sets LibTorch's intra-op threads for one test.
class ThreadsFor {
 public:
  explicit ThreadsFor(int n) : saved_(at::get_num_threads()) { at::set_num_threads(n); }
  ~ThreadsFor() { at::set_num_threads(saved_); }

 private:
  int saved_;
};

struct Chunk {
  int64_t begin, end;
  int thread_num;  // at::get_thread_num() inside the chunk
  std::thread::id os_thread;
};

std::vector<Chunk> ChunksOf(int64_t begin, int64_t end, int64_t grain) {
  std::mutex mutex;
  std::vector<Chunk> chunks;
  ParallelFor(begin, end, grain, [&](int64_t b, int64_t e) {
    std::lock_guard<std::mutex> lock(mutex);
    chunks.push_back({b, e, at::get_thread_num(), std::this_thread::get_id()});
  });
  return chunks;
}

// The regression this exists for: with an OpenMP LibTorch and a file built
// without the compiler's OpenMP, at::parallel_for ran every range on one
// thread. This build must split them.
TEST(ParallelForTest, SplitsAcrossThreadsInThisBuild) {
  EXPECT_NE(std::string(ParallelForBackend()), "serial");
  ThreadsFor two(2);
  const std::vector<Chunk> chunks = ChunksOf(0, 1000, 10);
  ASSERT_EQ(chunks.size(), 2u);
  std::set<std::thread::id> os_threads;
  std::set<int> thread_nums;
  for (const Chunk& c : chunks) {
    os_threads.insert(c.os_thread);
    thread_nums.insert(c.thread_num);
    // at::parallel_for's cut: ceil(1000 / 2) per thread, chunk i on thread i.
    EXPECT_EQ(c.begin, c.thread_num * 500);
    EXPECT_EQ(c.end, c.begin + 500);
  }
  EXPECT_EQ(os_threads.size(), 2u);
  EXPECT_EQ(thread_nums, (std::set<int>{0, 1}));
}

TEST(ParallelForTest, CoversTheRangeOnceWithUnevenChunks) {
  ThreadsFor three(3);
  std::vector<std::atomic<int>> visits(1001);
  ParallelFor(7, 1001, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) visits[i].fetch_add(1);
  });
  for (int64_t i = 0; i < 1001; ++i) EXPECT_EQ(visits[i].load(), i >= 7 ? 1 : 0) << i;
  // The grain caps the chunks: 25 elements at grain 10 make 3 at most.
  EXPECT_LE(ChunksOf(0, 25, 10).size(), 3u);
}

TEST(ParallelForTest, SmallRangesAndOneThreadRunOnTheCaller) {
  ThreadsFor two(2);
  for (const std::vector<Chunk>& chunks : {ChunksOf(0, 10, 10), ChunksOf(5, 6, 0)}) {
    ASSERT_EQ(chunks.size(), 1u);
    EXPECT_EQ(chunks[0].os_thread, std::this_thread::get_id());
    EXPECT_EQ(chunks[0].thread_num, 0);
  }
  EXPECT_TRUE(ChunksOf(3, 3, 1).empty());
  at::set_num_threads(1);
  const std::vector<Chunk> chunks = ChunksOf(0, 1000, 1);
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].end - chunks[0].begin, 1000);
}

// Inside a parallel region a nested range runs on the calling thread, as
// LibTorch's own ops do there.
TEST(ParallelForTest, NestedRangesRunOnTheirCaller) {
  ThreadsFor two(2);
  std::atomic<int> nested_chunks{0}, elsewhere{0};
  ParallelFor(0, 2, 1, [&](int64_t, int64_t) {
    EXPECT_TRUE(at::in_parallel_region());
    const std::thread::id outer = std::this_thread::get_id();
    ParallelFor(0, 1000, 1, [&](int64_t, int64_t) {
      nested_chunks.fetch_add(1);
      if (std::this_thread::get_id() != outer) elsewhere.fetch_add(1);
    });
  });
  EXPECT_EQ(nested_chunks.load(), 2);  // one per outer chunk
  EXPECT_EQ(elsewhere.load(), 0);
  EXPECT_FALSE(at::in_parallel_region());
}

TEST(ParallelForTest, RethrowsAChunksException) {
  ThreadsFor two(2);
  std::atomic<int> ran{0};
  EXPECT_THROW(ParallelFor(0, 100, 1,
                           [&](int64_t b, int64_t) {
                             ran.fetch_add(1);
                             if (b > 0) throw std::runtime_error("second chunk");
                           }),
               std::runtime_error);
  EXPECT_EQ(ran.load(), 2);  // the other chunk still ran
  // The team is usable after a failure.
  EXPECT_EQ(ChunksOf(0, 100, 1).size(), 2u);
}

}  // namespace
}  // namespace fulcrum
