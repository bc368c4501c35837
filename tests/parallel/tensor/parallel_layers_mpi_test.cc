// Tensor-parallel layers on 2, 3 and 4 ranks equal the unsharded computation
// done locally on every rank (same seed, same full tensors): a Column ->
// Row MLP with and without sequence parallelism, the vocab-parallel
// embedding and the vocab-parallel cross entropy.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <vector>

#include "parallel/tensor/parallel_layers.h"
#include "parallel/tensor/partial_gradients.h"
#include "parallel/tensor/tp_ops.h"
#include "parallel/tensor/vocab_parallel_cross_entropy.h"
#include "tests/parallel/tensor/tp_test_util.h"

namespace fulcrum::parallel::tensor {
namespace {

using testing::MakeGroup;
using testing::MaxAbsDiff;

constexpr double kTol = 1e-5;

class ParallelLayersTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    world_ = MakeGroup(MPI_COMM_WORLD, "tp");
    ASSERT_NE(world_, nullptr);
    r_ = world_->rank();
    s_ = world_->size();
    tp_.group = world_.get();
    tp_.sequence_parallel = GetParam();
    torch::manual_seed(0);
  }
  bool sp() const { return tp_.sequence_parallel; }
  // This rank's sequence chunk of a [B, T, ...] tensor under sp, else all of it.
  torch::Tensor SeqShard(const torch::Tensor& t) const {
    if (!sp()) return t;
    const int64_t chunk = t.size(1) / s_;
    return t.narrow(1, chunk * r_, chunk);
  }
  std::unique_ptr<Communicator> world_;
  TensorParallel tp_;
  int r_ = 0;
  int s_ = 1;
};

// The reference MLP: y = linear(gelu(linear(x, w1, b1)), w2, b2).
struct Mlp {
  torch::Tensor x, w1, b1, w2, b2;  // [B, T, d], [f, d], [f], [d, f], [d]
};

TEST_P(ParallelLayersTest, ColumnThenRowMlpEqualsUnshardedMlp) {
  const int64_t batch = 2, seq = 2 * s_, d = 6, f = 4 * s_;
  auto leaf = [](torch::Tensor t) { return t.requires_grad_(true); };
  const Mlp full{leaf(torch::randn({batch, seq, d})), leaf(torch::randn({f, d})),
                 leaf(torch::randn({f})), leaf(torch::randn({d, f})), leaf(torch::randn({d}))};
  const torch::Tensor upstream = torch::randn({batch, seq, d});  // dLoss/dy
  const torch::Tensor y_full =
      torch::linear(torch::gelu(torch::linear(full.x, full.w1, full.b1)), full.w2, full.b2);
  (y_full * upstream).sum().backward();

  ColumnParallelLinear column(d, f, /*bias=*/true, /*gather_output=*/false, tp_, torch::kFloat);
  RowParallelLinear row(f, d, /*bias=*/true, tp_, torch::kFloat);
  const ShardRange fs = EvenShard(f, r_, s_);
  {
    torch::NoGradGuard no_grad;
    column->weight.copy_(full.w1.narrow(0, fs.start, fs.length));
    column->bias.copy_(full.b1.narrow(0, fs.start, fs.length));
    row->weight.copy_(full.w2.narrow(1, fs.start, fs.length));
    row->bias.copy_(full.b2);
  }
  const torch::Tensor x = SeqShard(full.x.detach()).clone().requires_grad_(true);
  const torch::Tensor y = row(torch::gelu(column(x)));
  EXPECT_LT(MaxAbsDiff(y, SeqShard(y_full.detach())), kTol);
  (y * SeqShard(upstream)).sum().backward();
  // Under sp the replicated bias saw only this rank's sequence chunk.
  if (sp()) AllReducePartialGradients({row->bias.grad()}, *world_);

  EXPECT_LT(MaxAbsDiff(x.grad(), SeqShard(full.x.grad())), kTol);
  EXPECT_LT(MaxAbsDiff(AllGatherAlongDim(column->weight.grad(), 0, *world_), full.w1.grad()), kTol);
  EXPECT_LT(MaxAbsDiff(AllGatherAlongDim(column->bias.grad(), 0, *world_), full.b1.grad()), kTol);
  EXPECT_LT(MaxAbsDiff(AllGatherAlongDim(row->weight.grad(), 1, *world_), full.w2.grad()), kTol);
  EXPECT_LT(MaxAbsDiff(row->bias.grad(), full.b2.grad()), kTol);
}

TEST_P(ParallelLayersTest, ColumnParallelLinearGatheredOutputEqualsLinear) {
  const int64_t d = 5, f = 3 * s_;
  const torch::Tensor x_full = torch::randn({2, 2 * s_, d}, torch::requires_grad());
  const torch::Tensor w = torch::randn({f, d}, torch::requires_grad());
  const torch::Tensor upstream = torch::randn({2, 2 * s_, f});
  const torch::Tensor y_full = torch::linear(x_full, w);
  (y_full * upstream).sum().backward();

  ColumnParallelLinear column(d, f, /*bias=*/false, /*gather_output=*/true, tp_, torch::kFloat);
  EXPECT_FALSE(column->bias.defined());
  EXPECT_EQ(column->named_parameters().size(), 1u);
  const ShardRange fs = EvenShard(f, r_, s_);
  {
    torch::NoGradGuard no_grad;
    column->weight.copy_(w.narrow(0, fs.start, fs.length));
  }
  const torch::Tensor x = SeqShard(x_full.detach()).clone().requires_grad_(true);
  const torch::Tensor y = column(x);
  ASSERT_EQ(y.sizes(), y_full.sizes());  // the whole sequence and every output feature
  EXPECT_LT(MaxAbsDiff(y, y_full.detach()), kTol);
  // Every rank computes the same loss of the whole output; the gather's
  // backward keeps this rank's chunk of that (replicated) gradient.
  (y * upstream).sum().backward();
  EXPECT_LT(MaxAbsDiff(column->weight.grad(), w.grad().narrow(0, fs.start, fs.length)), kTol);
  EXPECT_LT(MaxAbsDiff(x.grad(), SeqShard(x_full.grad())), kTol);
}

TEST_P(ParallelLayersTest, VocabParallelEmbeddingEqualsEmbedding) {
  const int64_t vocab = 3 * s_, hidden = 4;
  const torch::Tensor table = torch::randn({vocab, hidden}, torch::requires_grad());
  // Every id at least once (every shard is hit), some twice.
  const torch::Tensor ids =
      torch::cat({torch::arange(vocab), torch::randint(vocab, {4 * s_ - vocab})})
          .reshape({2, 2 * s_});
  const torch::Tensor upstream = torch::randn({2, 2 * s_, hidden});
  const torch::Tensor y_full = torch::embedding(table, ids);
  (y_full * upstream).sum().backward();

  VocabParallelEmbedding embedding(vocab, hidden, tp_, torch::kFloat);
  const ShardRange vs = EvenShard(vocab, r_, s_);
  EXPECT_EQ(embedding->vocab_start(), vs.start);
  {
    torch::NoGradGuard no_grad;
    embedding->weight.copy_(table.narrow(0, vs.start, vs.length));
  }
  const torch::Tensor y = embedding(ids);
  EXPECT_LT(MaxAbsDiff(y, SeqShard(y_full.detach())), kTol);
  (y * SeqShard(upstream)).sum().backward();
  EXPECT_LT(MaxAbsDiff(embedding->weight.grad(), table.grad().narrow(0, vs.start, vs.length)),
            kTol);
}

// Reference: models::CrossEntropySum on the full logits.
torch::Tensor FullCrossEntropySum(const torch::Tensor& logits, const torch::Tensor& labels) {
  const int64_t t = logits.size(1), v = logits.size(2);
  return torch::nn::functional::cross_entropy(
      logits.narrow(1, 0, t - 1).reshape({-1, v}), labels.narrow(1, 1, t - 1).reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum));
}

TEST_P(ParallelLayersTest, VocabParallelCrossEntropyEqualsCrossEntropyOfFullLogits) {
  const int64_t vocab = 5 * s_;
  // Large logits: the max subtraction must keep exp finite.
  const torch::Tensor logits = (torch::randn({2, 6, vocab}) * 30).requires_grad_(true);
  torch::Tensor labels = torch::randint(vocab, {2, 6});
  labels[0][3] = -100;  // ignored target
  labels[1][5] = -100;
  labels[1][0] = -100;       // position 0 is never a target anyway
  labels[0][1] = vocab - 1;  // the last shard's last id
  labels[0][2] = 0;
  const torch::Tensor loss_full = FullCrossEntropySum(logits, labels);
  loss_full.backward();

  const ShardRange vs = EvenShard(vocab, r_, s_);
  const torch::Tensor shard =
      logits.detach().narrow(2, vs.start, vs.length).clone().requires_grad_(true);
  const torch::Tensor loss = VocabParallelCrossEntropySum(shard, labels, vs.start, tp_);
  EXPECT_EQ(loss.dim(), 0);
  EXPECT_EQ(loss.scalar_type(), torch::kFloat);
  EXPECT_NEAR(loss.item<double>(), loss_full.item<double>(),
              1e-5 * std::abs(loss_full.item<double>()));
  loss.backward();
  EXPECT_LT(MaxAbsDiff(shard.grad(), logits.grad().narrow(2, vs.start, vs.length)), kTol);
  // The same loss on every rank.
  torch::Tensor spread = torch::stack({loss.detach(), -loss.detach()});
  world_->AllReduce(spread, ReduceOp::kMax);
  EXPECT_EQ(spread[0].item<float>(), -spread[1].item<float>());
}

// A vocabulary shard of 2^16 fp32 columns is 256 KiB a row: the 1 MiB CPU
// chunks take 4 rows, so the 12 rows run in 3 chunks. Also without grad
// (evaluation), where no gradient is written.
TEST_P(ParallelLayersTest, VocabParallelCrossEntropySpansSeveralChunks) {
  const int64_t vocab = (int64_t{1} << 16) * s_;
  const torch::Tensor logits = (torch::randn({2, 6, vocab}) * 10).requires_grad_(true);
  torch::Tensor labels = torch::randint(vocab, {2, 6});
  labels[1][2] = -100;
  const torch::Tensor loss_full = FullCrossEntropySum(logits, labels);
  loss_full.backward();
  const ShardRange vs = EvenShard(vocab, r_, s_);
  const torch::Tensor shard =
      logits.detach().narrow(2, vs.start, vs.length).clone().requires_grad_(true);
  const torch::Tensor loss = VocabParallelCrossEntropySum(shard, labels, vs.start, tp_);
  EXPECT_NEAR(loss.item<double>(), loss_full.item<double>(),
              1e-5 * std::abs(loss_full.item<double>()));
  (loss * 0.5).backward();
  EXPECT_LT(MaxAbsDiff(shard.grad(), 0.5 * logits.grad().narrow(2, vs.start, vs.length)), kTol);
  torch::NoGradGuard no_grad;
  const torch::Tensor eval_loss = VocabParallelCrossEntropySum(shard, labels, vs.start, tp_);
  EXPECT_FALSE(eval_loss.requires_grad());
  EXPECT_EQ(eval_loss.item<float>(), loss.item<float>());
}

TEST_P(ParallelLayersTest, VocabParallelCrossEntropyOfBf16LogitsIsComputedInFp32) {
  const int64_t vocab = 4 * s_;
  const torch::Tensor logits = torch::randn({1, 4, vocab}).to(torch::kBFloat16);
  const torch::Tensor labels = torch::randint(vocab, {1, 4});
  const double expected = FullCrossEntropySum(logits.to(torch::kFloat), labels).item<double>();
  const ShardRange vs = EvenShard(vocab, r_, s_);
  const torch::Tensor shard = logits.narrow(2, vs.start, vs.length).clone().requires_grad_(true);
  const torch::Tensor loss = VocabParallelCrossEntropySum(shard, labels, vs.start, tp_);
  EXPECT_EQ(loss.scalar_type(), torch::kFloat);
  EXPECT_NEAR(loss.item<double>(), expected, 1e-5 * std::abs(expected));
  loss.backward();
  EXPECT_EQ(shard.grad().scalar_type(), torch::kBFloat16);
}

TEST_P(ParallelLayersTest, VocabParallelCrossEntropyOfOnlyIgnoredLabelsIsZero) {
  const int64_t vocab = 2 * s_;
  const ShardRange vs = EvenShard(vocab, r_, s_);
  const torch::Tensor shard = torch::randn({2, 3, vs.length}, torch::requires_grad());
  const torch::Tensor loss =
      VocabParallelCrossEntropySum(shard, torch::full({2, 3}, -100, torch::kLong), vs.start, tp_);
  EXPECT_EQ(loss.item<float>(), 0.0f);
  loss.backward();
  EXPECT_EQ(shard.grad().abs().sum().item<float>(), 0.0f);
}

INSTANTIATE_TEST_SUITE_P(SequenceParallel, ParallelLayersTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Sp" : "NoSp";
                         });

}  // namespace
}  // namespace fulcrum::parallel::tensor
