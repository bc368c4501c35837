#include "parallel/pipeline/receive_buffer_pool.h"

#include <gtest/gtest.h>

namespace fulcrum::parallel::pipeline {
namespace {

const torch::TensorOptions kFloat = torch::TensorOptions().dtype(torch::kFloat);

TEST(ReceiveBufferPoolTest, ReusesABufferOnlyOnceNothingHoldsIt) {
  ReceiveBufferPool pool;
  torch::Tensor a = pool.Acquire({4, 8}, kFloat);
  torch::Tensor b = pool.Acquire({4, 8}, kFloat);
  EXPECT_NE(a.data_ptr(), b.data_ptr());  // a is still held
  EXPECT_EQ(pool.buffers(), 2u);
  EXPECT_EQ(pool.bytes(), 2 * 4 * 8 * 4);
  void* const a_data = a.data_ptr();
  a = torch::Tensor();
  torch::Tensor c = pool.Acquire({4, 8}, kFloat);
  EXPECT_EQ(c.data_ptr(), a_data);
  EXPECT_EQ(pool.buffers(), 2u);
  EXPECT_EQ(c.sizes(), (std::vector<int64_t>{4, 8}));
}

TEST(ReceiveBufferPoolTest, ShapeAndDtypeMustMatch) {
  ReceiveBufferPool pool;
  void* data = pool.Acquire({4, 8}, kFloat).data_ptr();
  torch::Tensor other_shape = pool.Acquire({8, 4}, kFloat);
  torch::Tensor other_dtype = pool.Acquire({4, 8}, kFloat.dtype(torch::kBFloat16));
  EXPECT_NE(other_shape.data_ptr(), data);
  EXPECT_NE(other_dtype.data_ptr(), data);
  EXPECT_EQ(other_dtype.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(pool.buffers(), 3u);
}

// A received activation becomes a leaf, its graph saves it, and the buffer
// stays taken until the graph and the leaf are gone.
TEST(ReceiveBufferPoolTest, AnAutogradGraphKeepsItsBufferTaken) {
  ReceiveBufferPool pool;
  torch::Tensor input = pool.Acquire({3, 3}, kFloat);
  input.copy_(torch::eye(3));
  input.requires_grad_(true);
  EXPECT_TRUE(input.is_leaf());
  const torch::Tensor w = torch::full({3, 3}, 2.0, kFloat.requires_grad(true));
  torch::Tensor loss = torch::mm(w, input).sum();  // saves input for w's gradient
  void* const data = input.data_ptr();
  input = torch::Tensor();
  EXPECT_NE(pool.Acquire({3, 3}, kFloat).data_ptr(), data);  // the graph holds it
  loss.backward();
  EXPECT_TRUE(torch::allclose(w.grad(), torch::ones({3, 3})));  // d/dw sum(w I)
  loss = torch::Tensor();
  EXPECT_EQ(pool.Acquire({3, 3}, kFloat).data_ptr(), data);
}

}  // namespace
}  // namespace fulcrum::parallel::pipeline
