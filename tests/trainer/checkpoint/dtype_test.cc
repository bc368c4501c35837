#include "trainer/checkpoint/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace fulcrum::checkpoint {
namespace {

TEST(DtypeTest, RoundTripsEveryTorchType) {
  for (const char* name : {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"}) {
    absl::StatusOr<torch::ScalarType> type = ScalarTypeFromSafetensors(name);
    ASSERT_TRUE(type.ok()) << name << ": " << type.status();
    EXPECT_EQ(SafetensorsDtypeName(*type), name);
    EXPECT_EQ(ElementSize(name), c10::elementSize(*type)) << name;
    EXPECT_TRUE(HasSafetensorsName(*type));
  }
  EXPECT_EQ(*ScalarTypeFromSafetensors("BF16"), torch::kBFloat16);
  EXPECT_EQ(*ScalarTypeFromSafetensors("BOOL"), torch::kBool);
}

TEST(DtypeTest, UnknownDtypes) {
  EXPECT_EQ(ElementSize("F31"), 0);
  EXPECT_EQ(ElementSize(""), 0);
  absl::StatusOr<torch::ScalarType> bad = ScalarTypeFromSafetensors("f32");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("\"f32\""), std::string::npos) << bad.status();
  EXPECT_FALSE(HasSafetensorsName(torch::kComplexFloat));
}

TEST(DtypeTest, Float8HasSizeButNoTorchType) {
  for (const char* name : {"F8_E4M3", "F8_E5M2"}) {
    EXPECT_EQ(ElementSize(name), 1);
    EXPECT_TRUE(IsFloat8(name));
    EXPECT_FALSE(ScalarTypeFromSafetensors(name).ok());
    EXPECT_EQ(*ViewScalarType(name), torch::kFloat32);
  }
  EXPECT_FALSE(IsFloat8("U8"));
  EXPECT_EQ(*ViewScalarType("I32"), torch::kInt32);
}

torch::Tensor Bytes(const std::vector<int>& values) {
  torch::Tensor t = torch::empty({static_cast<int64_t>(values.size())}, torch::kUInt8);
  for (size_t i = 0; i < values.size(); ++i) t[i] = values[i];
  return t;
}

TEST(DtypeTest, DequantizesE4M3KnownBytes) {
  const torch::Tensor out = DequantizeFloat8(
      Bytes({0x38, 0x40, 0xB8, 0x7E, 0x01, 0x00, 0x80, 0x08, 0x3C, 0xFE, 0x07}), "F8_E4M3");
  ASSERT_EQ(out.scalar_type(), torch::kFloat32);
  const std::vector<float> expected = {1.0f,
                                       2.0f,
                                       -1.0f,
                                       448.0f,
                                       std::ldexp(1.0f, -9),
                                       0.0f,
                                       -0.0f,
                                       std::ldexp(1.0f, -6),
                                       1.5f,
                                       -448.0f,
                                       std::ldexp(7.0f, -9)};
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(out[i].item<float>(), expected[i]) << "byte index " << i;
  }
  EXPECT_TRUE(std::signbit(out[6].item<float>()));  // 0x80 is -0
  const torch::Tensor nans = DequantizeFloat8(Bytes({0x7F, 0xFF}), "F8_E4M3");
  EXPECT_TRUE(torch::isnan(nans).all().item<bool>());
  // e4m3fn has no infinity: 0x78 (exponent all ones, mantissa 0) is 256.
  EXPECT_EQ(DequantizeFloat8(Bytes({0x78}), "F8_E4M3")[0].item<float>(), 256.0f);
}

TEST(DtypeTest, DequantizesE5M2KnownBytes) {
  const torch::Tensor out =
      DequantizeFloat8(Bytes({0x3C, 0x40, 0xBC, 0x7B, 0x01, 0x7C, 0xFC}), "F8_E5M2");
  EXPECT_EQ(out[0].item<float>(), 1.0f);
  EXPECT_EQ(out[1].item<float>(), 2.0f);
  EXPECT_EQ(out[2].item<float>(), -1.0f);
  EXPECT_EQ(out[3].item<float>(), 57344.0f);
  EXPECT_EQ(out[4].item<float>(), std::ldexp(1.0f, -16));
  EXPECT_TRUE(std::isinf(out[5].item<float>()) && out[5].item<float>() > 0);
  EXPECT_TRUE(std::isinf(out[6].item<float>()) && out[6].item<float>() < 0);
  const torch::Tensor nans = DequantizeFloat8(Bytes({0x7D, 0x7E, 0x7F, 0xFF}), "F8_E5M2");
  EXPECT_TRUE(torch::isnan(nans).all().item<bool>());
}

TEST(DtypeTest, DequantizeKeepsShape) {
  const torch::Tensor bytes = Bytes({0x38, 0x40, 0xB8, 0x30, 0x00, 0x48}).view({2, 3});
  const torch::Tensor out = DequantizeFloat8(bytes, "F8_E4M3");
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(out[1][0].item<float>(), 0.5f);
  EXPECT_EQ(out[1][2].item<float>(), 4.0f);
}

}  // namespace
}  // namespace fulcrum::checkpoint
