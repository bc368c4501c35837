// Cross entropy of fp32 logit rows on the CPU, loss and gradient in one
// visit of each row.
//
// The torch ops it replaces (loss.cc: log_softmax, gather, exp, a multiply
// and a scatter per chunk of 8 rows) read and wrote each [N, V] element ~5
// times with two exps, plus ~10 op dispatches per chunk: ~250 ms of the 55M
// bench Llama's step (2048 rows of 32000). Here a row is read for its max,
// exponentiated once into the gradient while summing, and scaled in place,
// while it is in cache.
//
// Numerics: exp is a vectorised Cephes-style polynomial (within 2 ulp of
// std::exp on [-87, 0]); sums run in another order than ATen's. Results
// differ from the torch ops' by rounding only. A row holding a NaN or +inf,
// or only -inf, gives a NaN loss and gradient, as log_softmax does; a -inf
// logit among finite ones has probability 0.
#pragma once

#include <cstdint>

namespace fulcrum::models {

// Rows [0, rows) of `logits` (v columns, rows `ld` apart). For each row r with
// targets[r] in [0, v): row_loss[r] = logsumexp(row) - row[targets[r]] and,
// when grad is not null, grad row r (v columns, `grad_ld` apart) =
// softmax(row) - onehot(targets[r]). A row whose target is `ignore` gets loss
// 0 and a zero gradient. grad may be logits itself (ld = grad_ld).
void CrossEntropyCpuKernel(const float* logits, int64_t ld, const int64_t* targets, int64_t rows,
                           int64_t v, int64_t ignore, float* row_loss, float* grad,
                           int64_t grad_ld);

}  // namespace fulcrum::models
