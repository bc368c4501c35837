// TokenDispatcher and AllToAllRows under 2, 3 and 4 ranks: each rank routes
// an uneven number of tokens to experts spread over every rank; the rows an
// expert receives, the combined outputs and the gradients are closed forms
// of the ranks' deterministic inputs (every rank can compute every other
// rank's tokens).
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <vector>

#include "parallel/comm/communicator_factory.h"
#include "parallel/expert/all_to_all.h"
#include "parallel/expert/padded_token_dispatcher.h"
#include "parallel/expert/token_dispatcher.h"

namespace fulcrum::parallel::expert {
namespace {

constexpr int64_t kHidden = 3;
constexpr int64_t kTopK = 2;

std::unique_ptr<Communicator> World() {
  CommOptions options;
  options.timeout_seconds = 60.0;
  auto comm = CreateCommunicator(CommBackend::kMpi, MPI_COMM_WORLD, "ep", options);
  EXPECT_TRUE(comm.ok()) << comm.status();
  return std::move(comm).value();
}

// Rank r's tokens: 5 + r of them (uneven), hidden [r + 1, t, 1 + 0.5 t].
struct RankTokens {
  torch::Tensor hidden;      // [N, kHidden]
  torch::Tensor expert_ids;  // [N, kTopK]
  torch::Tensor weights;     // [N, kTopK]
};
RankTokens TokensOf(int rank, int64_t experts) {
  const int64_t n = 5 + rank;
  RankTokens out{torch::empty({n, kHidden}), torch::empty({n, kTopK}, torch::kLong),
                 torch::empty({n, kTopK})};
  for (int64_t t = 0; t < n; ++t) {
    out.hidden[t][0] = rank + 1.0;
    out.hidden[t][1] = static_cast<double>(t);
    out.hidden[t][2] = 1.0 + 0.5 * static_cast<double>(t);
    const int64_t first = (rank * 7 + t * 3) % experts;
    out.expert_ids[t][0] = first;
    out.expert_ids[t][1] = (first + 1 + t % (experts - 1)) % experts;  // distinct from first
    out.weights[t][0] = 0.1 + 0.01 * static_cast<double>(t);
    out.weights[t][1] = 0.2 + 0.01 * static_cast<double>(t);
  }
  return out;
}

TEST(AllToAllRowsTest, UnevenSplitsAndTheReverseExchangeInBackward) {
  auto comm = World();
  const int size = comm->size(), rank = comm->rank();
  // Rank r sends (r + s) % 3 rows to rank s; row i of that block = 100 r + 10 s + i.
  std::vector<int64_t> in_splits, out_splits;
  std::vector<float> rows;
  for (int s = 0; s < size; ++s) {
    in_splits.push_back((rank + s) % 3);
    out_splits.push_back((s + rank) % 3);
    for (int i = 0; i < (rank + s) % 3; ++i) rows.push_back(100.0f * rank + 10.0f * s + i);
  }
  const torch::Tensor x =
      torch::tensor(rows).reshape({-1, 1}).expand({-1, 2}).clone().requires_grad_(true);
  const torch::Tensor y = AllToAllRows(x, out_splits, in_splits, *comm);
  int64_t row = 0;
  for (int s = 0; s < size; ++s) {
    for (int i = 0; i < (s + rank) % 3; ++i, ++row) {
      EXPECT_FLOAT_EQ(y[row][1].item<float>(), 100.0f * s + 10.0f * rank + i);
    }
  }
  EXPECT_EQ(row, y.size(0));
  // Each received row's gradient is its value + 1: it must come back to the sender.
  y.backward(y.detach() + 1);
  EXPECT_TRUE(x.grad().equal(x.detach() + 1));
}

class TokenDispatcherTest : public ::testing::TestWithParam<bool> {};  // with the ep group?

TEST_P(TokenDispatcherTest, ExpertsGetTheirRowsAndCombineWeightsTheOutputs) {
  auto comm = World();
  const bool expert_parallel = GetParam();
  const int size = expert_parallel ? comm->size() : 1;
  const int rank = expert_parallel ? comm->rank() : 0;
  const int64_t experts = 2 * comm->size();
  const TokenDispatcher dispatcher(experts, expert_parallel ? comm.get() : nullptr);
  ASSERT_EQ(dispatcher.num_local_experts(), experts / size);
  ASSERT_EQ(dispatcher.first_local_expert(), rank * (experts / size));

  const RankTokens mine = TokensOf(comm->rank(), experts);
  const torch::Tensor hidden = mine.hidden.clone().requires_grad_(true);
  const torch::Tensor weights = mine.weights.clone().requires_grad_(true);
  const Dispatched d = dispatcher.Dispatch(hidden, mine.expert_ids, weights);

  // Expected rows, expert-major, then by source rank, then (token, choice).
  std::vector<torch::Tensor> expected;
  for (int64_t e = 0; e < dispatcher.num_local_experts(); ++e) {
    const int64_t global = dispatcher.first_local_expert() + e;
    int64_t count = 0;
    const int first_source = expert_parallel ? 0 : comm->rank();
    const int last_source = expert_parallel ? comm->size() - 1 : comm->rank();
    for (int source = first_source; source <= last_source; ++source) {
      const RankTokens theirs = TokensOf(source, experts);
      for (int64_t t = 0; t < theirs.hidden.size(0); ++t) {
        for (int64_t j = 0; j < kTopK; ++j) {
          if (theirs.expert_ids[t][j].item<int64_t>() != global) continue;
          expected.push_back(theirs.hidden[t]);
          ++count;
        }
      }
    }
    EXPECT_EQ(d.tokens_per_local_expert[static_cast<size_t>(e)], count) << "expert " << global;
  }
  ASSERT_EQ(d.expert_input.size(0), static_cast<int64_t>(expected.size()));
  if (!expected.empty()) {
    EXPECT_TRUE(d.expert_input.detach().equal(torch::stack(expected)));
  }

  // "Expert" g multiplies its rows by g + 1.
  std::vector<torch::Tensor> outputs;
  int64_t offset = 0;
  for (int64_t e = 0; e < dispatcher.num_local_experts(); ++e) {
    const int64_t rows = d.tokens_per_local_expert[static_cast<size_t>(e)];
    const double factor = static_cast<double>(dispatcher.first_local_expert() + e + 1);
    outputs.push_back(d.expert_input.narrow(0, offset, rows) * factor);
    offset += rows;
  }
  const torch::Tensor combined = dispatcher.Combine(torch::cat(outputs), d.handle);
  // out[t] = sum_j w_j (id_j + 1) x_t
  const torch::Tensor factors = (mine.weights * (mine.expert_ids + 1).to(torch::kFloat)).sum(1);
  EXPECT_TRUE(torch::allclose(combined, mine.hidden * factors.unsqueeze(1), 1e-6, 1e-6));

  combined.sum().backward();
  EXPECT_TRUE(
      torch::allclose(hidden.grad(), factors.unsqueeze(1).expand({-1, kHidden}), 1e-6, 1e-6));
  const torch::Tensor weight_grad =
      (mine.expert_ids + 1).to(torch::kFloat) * mine.hidden.sum(1, /*keepdim=*/true);
  EXPECT_TRUE(torch::allclose(weights.grad(), weight_grad, 1e-5, 1e-6));
}

INSTANTIATE_TEST_SUITE_P(Groups, TokenDispatcherTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "ExpertParallel" : "Local"; });

// Capacity slots of rank r's tokens, by hand: first choices in token order,
// then second choices; expert e's i-th is slot e * capacity + i if i <
// capacity, else dropped (experts * capacity).
torch::Tensor SlotsOf(const RankTokens& tokens, int64_t experts, int64_t capacity) {
  const int64_t n = tokens.expert_ids.size(0);
  torch::Tensor slots = torch::empty({n, kTopK}, torch::kLong);
  std::vector<int64_t> taken(static_cast<size_t>(experts), 0);
  for (int64_t c = 0; c < kTopK; ++c) {
    for (int64_t t = 0; t < n; ++t) {
      const int64_t e = tokens.expert_ids[t][c].item<int64_t>();
      const int64_t i = taken[static_cast<size_t>(e)]++;
      slots[t][c] = i < capacity ? e * capacity + i : experts * capacity;
    }
  }
  return slots;
}

class PaddedTokenDispatcherTest : public ::testing::TestWithParam<bool> {};  // with the ep group?

TEST_P(PaddedTokenDispatcherTest, ExpertsGetTheirSlotsAndCombineWeightsTheKeptOutputs) {
  auto comm = World();
  const bool expert_parallel = GetParam();
  const int size = expert_parallel ? comm->size() : 1;
  const int64_t experts = 2 * comm->size(), capacity = 2;
  const int64_t local = experts / size, first = (expert_parallel ? comm->rank() : 0) * local;
  const PaddedTokenDispatcher dispatcher(experts, expert_parallel ? comm.get() : nullptr);
  ASSERT_EQ(dispatcher.num_local_experts(), local);

  const RankTokens mine = TokensOf(comm->rank(), experts);
  const torch::Tensor slots = SlotsOf(mine, experts, capacity);
  const torch::Tensor hidden = mine.hidden.clone().requires_grad_(true);
  const torch::Tensor weights = mine.weights.clone().requires_grad_(true);
  const PaddedDispatch d = dispatcher.Dispatch(hidden, slots, weights, capacity);

  // Expert e's block: each source rank's `capacity` slots, zero rows empty.
  ASSERT_EQ(d.expert_input.sizes(), (std::vector<int64_t>{local, size * capacity, kHidden}));
  for (int64_t e = 0; e < local; ++e) {
    for (int s = 0; s < size; ++s) {
      const int source = expert_parallel ? s : comm->rank();
      const RankTokens theirs = TokensOf(source, experts);
      const torch::Tensor their_slots = SlotsOf(theirs, experts, capacity);
      for (int64_t i = 0; i < capacity; ++i) {
        torch::Tensor want = torch::zeros({kHidden});
        const int64_t slot = (first + e) * capacity + i;
        for (int64_t t = 0; t < theirs.hidden.size(0); ++t) {
          for (int64_t j = 0; j < kTopK; ++j) {
            if (their_slots[t][j].item<int64_t>() == slot) want = theirs.hidden[t];
          }
        }
        EXPECT_TRUE(d.expert_input[e][s * capacity + i].detach().equal(want))
            << "expert " << first + e << " source " << source << " slot " << i;
      }
    }
  }

  // "Expert" g multiplies its rows by g + 1; dropped choices add nothing.
  const torch::Tensor factor = (torch::arange(local) + first + 1).to(torch::kFloat);
  const torch::Tensor combined = dispatcher.Combine(d.expert_input * factor.view({-1, 1, 1}), d);
  const torch::Tensor kept = slots.ne(experts * capacity).to(torch::kFloat);
  const torch::Tensor per_choice = kept * (mine.expert_ids + 1).to(torch::kFloat);
  const torch::Tensor factors = (mine.weights * per_choice).sum(1);
  EXPECT_TRUE(torch::allclose(combined, mine.hidden * factors.unsqueeze(1), 1e-6, 1e-6));
  EXPECT_GT(kept.numel() - kept.sum().item<double>(), 0.0) << "no choice dropped: a weak test";

  combined.sum().backward();
  EXPECT_TRUE(
      torch::allclose(hidden.grad(), factors.unsqueeze(1).expand({-1, kHidden}), 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(weights.grad(), per_choice * mine.hidden.sum(1, /*keepdim=*/true),
                              1e-5, 1e-6));
}

INSTANTIATE_TEST_SUITE_P(Groups, PaddedTokenDispatcherTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "ExpertParallel" : "Local"; });

}  // namespace
}  // namespace fulcrum::parallel::expert
