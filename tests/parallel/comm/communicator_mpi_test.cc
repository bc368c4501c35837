// Every collective of the MPI communicator under 2, 3 and 4 ranks; expected
// values are closed forms of the rank.
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

#include "parallel/comm/communicator_factory.h"
#include "parallel/comm/mpi_communicator.h"

namespace fulcrum::parallel {
namespace {

int WorldRank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}
int WorldSize() {
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  return size;
}

std::unique_ptr<Communicator> MakeComm(
    HalfPrecisionReduction half = HalfPrecisionReduction::kFp32Staging) {
  CommOptions options;
  options.timeout_seconds = 60.0;
  options.half_reduction = half;
  auto comm = CreateCommunicator(CommBackend::kMpi, MPI_COMM_WORLD, "world", options);
  EXPECT_TRUE(comm.ok()) << comm.status();
  return std::move(comm).value();
}

// Reduction dtypes x the two 16-bit reductions.
struct DtypeCase {
  torch::ScalarType dtype;
  HalfPrecisionReduction half;
};
std::vector<DtypeCase> AllDtypeCases() {
  std::vector<DtypeCase> cases;
  for (torch::ScalarType t :
       {torch::kFloat, torch::kDouble, torch::kInt, torch::kLong, torch::kByte}) {
    cases.push_back({t, HalfPrecisionReduction::kFp32Staging});
  }
  for (torch::ScalarType t : {torch::kBFloat16, torch::kHalf}) {
    cases.push_back({t, HalfPrecisionReduction::kFp32Staging});
    cases.push_back({t, HalfPrecisionReduction::kNative});
  }
  return cases;
}
std::string CaseName(const DtypeCase& c) {
  return std::string(CommDtypeName(c.dtype)) +
         (c.half == HalfPrecisionReduction::kNative ? " native" : " staging");
}

// i + 1 for i in [0, n): small integers, exact in every dtype (sums <= 80).
torch::Tensor Iota1(int64_t n) { return torch::arange(1, n + 1, torch::kDouble); }

TEST(MpiCommunicatorTest, IdentityMatchesWorld) {
  auto comm = MakeComm();
  EXPECT_EQ(comm->rank(), WorldRank());
  EXPECT_EQ(comm->size(), WorldSize());
  EXPECT_EQ(comm->name(), "world");
  EXPECT_STREQ(comm->backend(), "mpi");
}

TEST(MpiCommunicatorTest, FactoryRejectsBadArguments) {
  EXPECT_FALSE(CreateCommunicator(CommBackend::kMpi, MPI_COMM_NULL, "x", {}).ok());
  CommOptions zero_timeout;
  zero_timeout.timeout_seconds = 0;
  auto bad = CreateCommunicator(CommBackend::kMpi, MPI_COMM_WORLD, "x", zero_timeout);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("timeout_seconds"), std::string::npos);
}

TEST(MpiCommunicatorTest, AllReduceSumEveryDtypeSyncAndAsync) {
  const int n = WorldSize(), r = WorldRank();
  for (const DtypeCase& c : AllDtypeCases()) {
    auto comm = MakeComm(c.half);
    // rank r holds (r + 1) * (i + 1); the sum is (i + 1) * n (n + 1) / 2.
    torch::Tensor expected = Iota1(8) * (n * (n + 1) / 2);
    torch::Tensor a = (Iota1(8) * (r + 1)).to(c.dtype);
    comm->AllReduce(a);
    EXPECT_TRUE(a.to(torch::kDouble).equal(expected)) << CaseName(c) << " " << a;
    torch::Tensor b = (Iota1(8) * (r + 1)).to(c.dtype).reshape({2, 4});
    torch::Tensor d = (Iota1(3) * (r + 1)).to(c.dtype);
    WorkHandle wb = comm->AllReduceAsync(b, ReduceOp::kSum);
    WorkHandle wd = comm->AllReduceAsync(d, ReduceOp::kSum);
    wd->Wait();
    wb->Wait();
    EXPECT_TRUE(wb->Test());
    EXPECT_TRUE(b.to(torch::kDouble).reshape({8}).equal(expected)) << CaseName(c);
    EXPECT_TRUE(d.to(torch::kDouble).equal(Iota1(3) * (n * (n + 1) / 2))) << CaseName(c);
  }
}

TEST(MpiCommunicatorTest, AllReduceMaxMin) {
  const int n = WorldSize(), r = WorldRank();
  for (const DtypeCase& c : AllDtypeCases()) {
    auto comm = MakeComm(c.half);
    torch::Tensor hi = (Iota1(5) * (r + 1)).to(c.dtype);
    torch::Tensor lo = (Iota1(5) * (r + 1)).to(c.dtype);
    comm->AllReduceAsync(hi, ReduceOp::kMax)->Wait();
    comm->AllReduce(lo, ReduceOp::kMin);
    EXPECT_TRUE(hi.to(torch::kDouble).equal(Iota1(5) * n)) << CaseName(c) << hi;
    EXPECT_TRUE(lo.to(torch::kDouble).equal(Iota1(5))) << CaseName(c) << lo;
  }
}

TEST(MpiCommunicatorTest, HalfSumsOfFractionsAreCloseToFp32) {
  const int n = WorldSize(), r = WorldRank();
  for (torch::ScalarType dtype : {torch::kBFloat16, torch::kHalf}) {
    for (auto half : {HalfPrecisionReduction::kFp32Staging, HalfPrecisionReduction::kNative}) {
      auto comm = MakeComm(half);
      // rank r: 0.1 * (r + 1) + i / 7, rounded to 16 bits before the sum.
      auto value = [&](int q) {
        return (torch::full({16}, 0.1 * (q + 1)) + torch::arange(16) / 7.0).to(dtype);
      };
      torch::Tensor t = value(r);
      torch::Tensor expected = torch::zeros({16}, torch::kFloat);
      for (int q = 0; q < n; ++q) expected += value(q).to(torch::kFloat);
      comm->AllReduce(t);
      // n - 1 roundings at most, each within half an ulp (2^-8 relative for bf16).
      const double tol = (dtype == torch::kBFloat16 ? 1.0 / 256 : 1.0 / 2048) * n;
      EXPECT_TRUE(torch::allclose(t.to(torch::kFloat), expected, tol, 0))
          << CommDtypeName(dtype) << " " << t << expected;
    }
  }
}

TEST(MpiCommunicatorTest, ReduceScatterEveryDtype) {
  const int n = WorldSize(), r = WorldRank();
  const int64_t k = 3;
  for (const DtypeCase& c : AllDtypeCases()) {
    auto comm = MakeComm(c.half);
    // input[j] = (rank + 1) * (j + 1); rank r gets the sum of chunk r.
    torch::Tensor input = (Iota1(n * k) * (r + 1)).to(c.dtype);
    torch::Tensor output = torch::zeros({k}, c.dtype);
    torch::Tensor expected = Iota1(n * k).narrow(0, r * k, k) * (n * (n + 1) / 2);
    comm->ReduceScatterAsync(input, output, ReduceOp::kSum)->Wait();
    EXPECT_TRUE(output.to(torch::kDouble).equal(expected)) << CaseName(c) << output;
    torch::Tensor max_out = torch::zeros({k}, c.dtype);
    comm->ReduceScatter(input, max_out, ReduceOp::kMax);
    EXPECT_TRUE(max_out.to(torch::kDouble).equal(Iota1(n * k).narrow(0, r * k, k) * n))
        << CaseName(c);
  }
}

TEST(MpiCommunicatorTest, AllGatherEvenAndUneven) {
  const int n = WorldSize(), r = WorldRank();
  auto comm = MakeComm();
  for (torch::ScalarType dtype : {torch::kFloat, torch::kBFloat16, torch::kLong, torch::kByte}) {
    // Even: 4 elements r * 10 + i from each rank.
    torch::Tensor input = (torch::arange(4) + 10 * r).to(dtype);
    torch::Tensor output = torch::zeros({n, 4}, dtype);
    comm->AllGatherAsync(input, output)->Wait();
    torch::Tensor expected = torch::arange(4).unsqueeze(0) + 10 * torch::arange(n).unsqueeze(1);
    EXPECT_TRUE(output.to(torch::kLong).equal(expected)) << CommDtypeName(dtype) << output;
    // Uneven: rank q contributes q + 1 elements, all equal to q + 1.
    std::vector<int64_t> counts;
    std::vector<torch::Tensor> pieces;
    for (int q = 0; q < n; ++q) {
      counts.push_back(q + 1);
      pieces.push_back(torch::full({q + 1}, q + 1, torch::kLong));
    }
    torch::Tensor mine = torch::full({r + 1}, r + 1, dtype);
    torch::Tensor gathered = torch::zeros({n * (n + 1) / 2}, dtype);
    comm->AllGatherV(mine, gathered, counts);
    EXPECT_TRUE(gathered.to(torch::kLong).equal(torch::cat(pieces))) << gathered;
  }
}

// Rank q sends (q + j) % 3 + 1 rows of width 2 to rank j; row t of the block
// from q to j holds 1000 q + 100 j + 10 t + column.
torch::Tensor AllToAllBlock(int from, int to, torch::ScalarType dtype) {
  const int64_t rows = (from + to) % 3 + 1;
  return (torch::arange(rows).unsqueeze(1) * 10 + torch::arange(2).unsqueeze(0) + 1000 * from +
          100 * to)
      .to(dtype);
}

TEST(MpiCommunicatorTest, AllToAllUnequalSplitsSyncAndAsync) {
  const int n = WorldSize(), r = WorldRank();
  auto comm = MakeComm();
  for (torch::ScalarType dtype : {torch::kFloat, torch::kLong}) {
    std::vector<torch::Tensor> send_blocks, recv_blocks;
    std::vector<int64_t> input_splits, output_splits;
    for (int j = 0; j < n; ++j) {
      send_blocks.push_back(AllToAllBlock(r, j, dtype));
      recv_blocks.push_back(AllToAllBlock(j, r, dtype));
      input_splits.push_back((r + j) % 3 + 1);
      output_splits.push_back((j + r) % 3 + 1);
    }
    torch::Tensor input = torch::cat(send_blocks);
    torch::Tensor expected = torch::cat(recv_blocks);
    torch::Tensor output = torch::zeros_like(expected);
    comm->AllToAll(input, output, output_splits, input_splits);
    EXPECT_TRUE(output.equal(expected)) << output;
    torch::Tensor output2 = torch::zeros_like(expected);
    WorkHandle w = comm->AllToAllAsync(input, output2, output_splits, input_splits);
    w->Wait();
    EXPECT_TRUE(output2.equal(expected));
  }
  // Equal blocks (no splits): rank r sends value 10 r + j to rank j.
  torch::Tensor input = torch::arange(n, torch::kFloat) + 10 * r;
  torch::Tensor output = torch::zeros({n});
  comm->AllToAll(input, output);
  EXPECT_TRUE(output.equal(torch::arange(n, torch::kFloat) * 10 + r)) << output;
}

TEST(MpiCommunicatorTest, BroadcastFromLastRank) {
  const int n = WorldSize(), r = WorldRank();
  auto comm = MakeComm();
  const int root = n - 1;
  for (torch::ScalarType dtype : {torch::kFloat, torch::kBFloat16, torch::kInt, torch::kByte}) {
    torch::Tensor t = r == root ? (torch::arange(6) + root).to(dtype) : torch::zeros({6}, dtype);
    comm->BroadcastAsync(t, root)->Wait();
    EXPECT_TRUE(t.to(torch::kLong).equal(torch::arange(6) + root)) << CommDtypeName(dtype) << t;
  }
  torch::Tensor t = torch::full({2, 3}, r == 0 ? 7.0 : 0.0);
  comm->Broadcast(t, 0);
  EXPECT_TRUE(t.equal(torch::full({2, 3}, 7.0)));
}

TEST(MpiCommunicatorTest, RingSendRecvInP2pGroup) {
  const int n = WorldSize(), r = WorldRank();
  auto comm = MakeComm();
  const int next = (r + 1) % n, prev = (r + n - 1) % n;
  // Launched: the group's Work is waited on explicitly.
  torch::Tensor out = torch::full({5}, r * 1.0);
  torch::Tensor in = torch::full({5}, -1.0);
  WorkHandle work;
  {
    P2pGroup group(*comm);
    comm->SendAsync(out, next);
    comm->RecvAsync(in, prev);
    work = group.Launch();
  }
  work->Wait();
  EXPECT_TRUE(in.equal(torch::full({5}, prev * 1.0))) << in;
  // Not launched: the destructor launches and waits. Both directions.
  torch::Tensor from_prev = torch::zeros({3}, torch::kLong);
  torch::Tensor from_next = torch::zeros({3}, torch::kLong);
  {
    P2pGroup group(*comm);
    comm->SendAsync(torch::full({3}, 100 + r, torch::kLong), next);
    comm->SendAsync(torch::full({3}, 200 + r, torch::kLong), prev);
    comm->RecvAsync(from_prev, prev);
    comm->RecvAsync(from_next, next);
  }
  // With n == 2, prev == next: both messages come from one peer and match
  // in posting order.
  EXPECT_TRUE(from_prev.equal(torch::full({3}, 100 + prev, torch::kLong))) << from_prev;
  EXPECT_TRUE(from_next.equal(torch::full({3}, 200 + next, torch::kLong))) << from_next;
}

TEST(MpiCommunicatorTest, SendRecvOutsideGroup) {
  const int n = WorldSize(), r = WorldRank();
  auto comm = MakeComm();
  // Pairs (0, 1), (2, 3): the even rank sends, the odd one receives.
  if (r % 2 == 0 && r + 1 < n) {
    comm->Send(torch::full({4}, 3.0 + r), r + 1);
    WorkHandle w = comm->SendAsync(torch::full({2}, 5.0 + r), r + 1);
    w->Wait();
  } else if (r % 2 == 1) {
    torch::Tensor a = torch::zeros({4});
    torch::Tensor b = torch::zeros({2});
    WorkHandle w = comm->RecvAsync(a, r - 1);
    w->Wait();
    comm->Recv(b, r - 1);
    EXPECT_TRUE(a.equal(torch::full({4}, 3.0 + r - 1)));
    EXPECT_TRUE(b.equal(torch::full({2}, 5.0 + r - 1)));
  }
}

TEST(MpiCommunicatorTest, BarrierWaitsForTheSlowestRank) {
  auto comm = MakeComm();
  comm->Barrier();
  const auto start = std::chrono::steady_clock::now();
  if (comm->rank() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  comm->Barrier();
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(waited, 0.25);
}

TEST(MpiCommunicatorTest, SubCommunicatorUsesGroupRanks) {
  const int n = WorldSize(), r = WorldRank();
  MPI_Comm half;
  ASSERT_EQ(MPI_Comm_split(MPI_COMM_WORLD, r % 2, r, &half), MPI_SUCCESS);
  auto comm = CreateCommunicator(CommBackend::kMpi, half, "parity", {});
  MPI_Comm_free(&half);  // the communicator holds its own duplicate
  ASSERT_TRUE(comm.ok()) << comm.status();
  EXPECT_EQ((*comm)->rank(), r / 2);
  int members = 0;  // world ranks with parity r % 2
  int64_t sum = 0;
  for (int q = r % 2; q < n; q += 2, ++members) sum += q;
  EXPECT_EQ((*comm)->size(), members);
  torch::Tensor t = torch::full({3}, r, torch::kLong);
  (*comm)->AllReduce(t);
  EXPECT_TRUE(t.equal(torch::full({3}, sum, torch::kLong))) << t;
}

// Large-count paths (chunked calls, per-root reduce, point-to-point
// exchanges) run on tiny tensors with at most 3 elements per MPI call.
TEST(MpiCommunicatorTest, ChunkedCallsGiveTheSameResults) {
  const int n = WorldSize(), r = WorldRank();
  MpiCommunicator comm(MPI_COMM_WORLD, "chunked", CommOptions{}, /*max_count_per_call=*/3);
  torch::Tensor a = Iota1(10) * (r + 1);
  comm.AllReduce(a);
  EXPECT_TRUE(a.equal(Iota1(10) * (n * (n + 1) / 2)));

  torch::Tensor rs_in = (Iota1(7 * n) * (r + 1)).to(torch::kBFloat16);
  torch::Tensor rs_out = torch::zeros({7}, torch::kBFloat16);
  comm.ReduceScatter(rs_in, rs_out);
  EXPECT_TRUE(
      rs_out.to(torch::kDouble).equal(Iota1(7 * n).narrow(0, 7 * r, 7) * (n * (n + 1) / 2)));

  torch::Tensor ag_out = torch::zeros({n, 5});
  comm.AllGather(torch::full({5}, 1.0 * r), ag_out);
  EXPECT_TRUE(ag_out.equal(torch::arange(n, torch::kFloat).unsqueeze(1).expand({n, 5})));

  std::vector<int64_t> counts;
  for (int q = 0; q < n; ++q) counts.push_back(2 * q + 4);  // rank 0's 4 > 3 already
  torch::Tensor agv_out = torch::zeros({(n - 1) * n + 4 * n});
  comm.AllGatherV(torch::full({2 * r + 4}, 1.0 * r), agv_out, counts);
  std::vector<torch::Tensor> pieces;
  for (int q = 0; q < n; ++q) pieces.push_back(torch::full({2 * q + 4}, 1.0 * q));
  EXPECT_TRUE(agv_out.equal(torch::cat(pieces)));

  std::vector<int64_t> splits(n, 2);  // 2 rows of 3 = 6 elements per block
  torch::Tensor a2a_in = torch::full({2 * n, 3}, 1.0 * r);
  torch::Tensor a2a_out = torch::zeros({2 * n, 3});
  comm.AllToAll(a2a_in, a2a_out, splits, splits);
  EXPECT_TRUE(a2a_out.equal(
      torch::arange(n, torch::kFloat).repeat_interleave(2).unsqueeze(1).expand({2 * n, 3})));

  torch::Tensor b = r == 0 ? Iota1(8) : torch::zeros({8}, torch::kDouble);
  comm.Broadcast(b, 0);
  EXPECT_TRUE(b.equal(Iota1(8)));

  torch::Tensor ring_in = torch::zeros({8});
  {
    P2pGroup group(comm);
    comm.SendAsync(torch::full({8}, 1.0 * r), (r + 1) % n);
    comm.RecvAsync(ring_in, (r + n - 1) % n);
  }
  EXPECT_TRUE(ring_in.equal(torch::full({8}, 1.0 * ((r + n - 1) % n))));
}

TEST(MpiCommunicatorTest, WorkKeepsItsTensorAlive) {
  const int n = WorldSize();
  auto comm = MakeComm(HalfPrecisionReduction::kFp32Staging);
  torch::Tensor view;
  WorkHandle w;
  {
    torch::Tensor t = torch::ones({1 << 12}, torch::kBFloat16);
    view = t.narrow(0, 0, 4);
    w = comm->AllReduceAsync(t, ReduceOp::kSum);
  }  // t's handle is gone; the Work holds the storage (and the fp32 staging)
  w->Wait();
  EXPECT_TRUE(view.to(torch::kFloat).equal(torch::full({4}, 1.0f * n)));
}

// Run by tests/parallel/comm/comm_timeout_test.cc under 2 ranks with
// FULCRUM_COMM_HANG_TEST=blocking|async: rank 1 never joins rank 0's all_reduce, which
// must end every rank with a message naming rank 0 and the all_reduce.
TEST(MpiCommunicatorTest, PeerThatNeverArrivesIsAFatalTimeout) {
  if (std::getenv("FULCRUM_COMM_HANG_TEST") == nullptr) {
    SUCCEED() << "runs only from comm_timeout_test";
    return;
  }
  CommOptions options;
  options.timeout_seconds = 1.0;
  auto comm = CreateCommunicator(CommBackend::kMpi, MPI_COMM_WORLD, "world", options);
  ASSERT_TRUE(comm.ok());
  if ((*comm)->rank() == 1) {
    std::this_thread::sleep_for(std::chrono::seconds(60));  // hung peer
  } else {
    torch::Tensor t = torch::ones({1024}, torch::kBFloat16);
    if (std::string(std::getenv("FULCRUM_COMM_HANG_TEST")) == "async") {
      (*comm)->AllReduceAsync(t, ReduceOp::kSum)->Wait();
    } else {
      (*comm)->AllReduce(t);
    }
  }
  ADD_FAILURE() << "the all_reduce returned although rank 1 never joined";
}

}  // namespace
}  // namespace fulcrum::parallel
