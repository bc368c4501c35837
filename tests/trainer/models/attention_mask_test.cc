// The additive attention mask and the causal-only test that lets CUDA run
// the fused attention's causal (flash) kernel without a mask.
#include "trainer/models/attention_mask.h"

#include <gtest/gtest.h>

#include <limits>

namespace fulcrum::models {
namespace {

TEST(AttentionMaskTest, CausalOnlyWithoutPaddingOrDocuments) {
  EXPECT_TRUE(IsCausalOnly(torch::Tensor(), torch::Tensor()));
  EXPECT_TRUE(IsCausalOnly(torch::ones({2, 5}, torch::kLong), torch::Tensor()));
  // One document per row (packing wrote a single id per row).
  const torch::Tensor docs = torch::tensor({0, 0, 0, 3, 3, 3}, torch::kLong).view({2, 3});
  EXPECT_TRUE(IsCausalOnly(torch::ones({2, 3}, torch::kLong), docs));
}

TEST(AttentionMaskTest, PaddingOrASecondDocumentNeedsTheMask) {
  torch::Tensor padded = torch::ones({2, 5}, torch::kLong);
  padded[1][4] = 0;
  EXPECT_FALSE(IsCausalOnly(padded, torch::Tensor()));
  const torch::Tensor packed = torch::tensor({0, 0, 1, 0, 0, 0}, torch::kLong).view({2, 3});
  EXPECT_FALSE(IsCausalOnly(torch::Tensor(), packed));
  const torch::Tensor padding_as_document =
      torch::tensor({4, 4, -1, 2, 2, 2}, torch::kLong).view({2, 3});
  EXPECT_FALSE(IsCausalOnly(torch::Tensor(), padding_as_document));
}

TEST(AttentionMaskTest, CausalOnlyBatchGetsTheCausalTriangle) {
  // What the flash kernel's is_causal computes must be what the mask says.
  const torch::Tensor mask =
      BuildAttentionMask(2, 4, torch::ones({2, 4}, torch::kLong),
                         torch::zeros({2, 4}, torch::kLong), torch::kFloat, torch::kCPU);
  const float lowest = std::numeric_limits<float>::lowest();
  const torch::Tensor causal = torch::full({4, 4}, lowest).triu(1).expand({2, 1, 4, 4});
  EXPECT_TRUE(torch::equal(mask, causal));
}

}  // namespace
}  // namespace fulcrum::models
