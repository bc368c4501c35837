// Reading safetensors into maps and comparing against the HF fixtures with
// the tolerances their README states.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>
#include <string>

#include "trainer/checkpoint/safetensors_reader.h"

namespace fulcrum::testing {

using Tensors = std::map<std::string, torch::Tensor>;

inline Tensors ReadTensors(const std::string& path) {
  Tensors out;
  auto reader = checkpoint::SafetensorsReader::Open(path);
  EXPECT_TRUE(reader.ok()) << reader.status();
  if (!reader.ok()) return out;
  for (const std::string& name : (*reader)->Names()) {
    auto view = (*reader)->View(name);
    EXPECT_TRUE(view.ok()) << view.status();
    if (view.ok()) out[name] = view->clone();
  }
  return out;
}

// |got - ref| <= 1e-4 + 1e-4 |ref| where attention_mask == 1.
inline void ExpectLogitsClose(const torch::Tensor& got, const torch::Tensor& ref,
                              const torch::Tensor& attention_mask, double tol = 1e-4) {
  ASSERT_EQ(got.sizes(), ref.sizes());
  const torch::Tensor valid = attention_mask.to(torch::kBool).unsqueeze(-1).expand_as(ref);
  const torch::Tensor excess = ((got - ref).abs() - (tol + tol * ref.abs())).masked_select(valid);
  EXPECT_LE(excess.max().item<double>(), 0.0)
      << "max |diff| " << (got - ref).abs().masked_select(valid).max().item<double>();
}

// max|got - ref| <= 1e-8 + 1e-4 max|ref| per tensor.
inline void ExpectGradClose(const torch::Tensor& got, const torch::Tensor& ref,
                            const std::string& name) {
  ASSERT_EQ(got.sizes(), ref.sizes()) << name;
  const double diff = (got.to(torch::kFloat) - ref).abs().max().item<double>();
  const double bound = 1e-8 + 1e-4 * ref.abs().max().item<double>();
  EXPECT_LE(diff, bound) << name;
}

}  // namespace fulcrum::testing
