#include "trainer/checkpoint/dtype.h"

#include <array>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/check.h"

namespace fulcrum::checkpoint {
namespace {

struct DtypeInfo {
  const char* name;
  torch::ScalarType type;
  int64_t size;
};

// F8 rows carry kByte only as their storage type; they are special-cased.
constexpr std::array<DtypeInfo, 12> kDtypes = {{
    {"F64", torch::kFloat64, 8},
    {"F32", torch::kFloat32, 4},
    {"F16", torch::kFloat16, 2},
    {"BF16", torch::kBFloat16, 2},
    {"I64", torch::kInt64, 8},
    {"I32", torch::kInt32, 4},
    {"I16", torch::kInt16, 2},
    {"I8", torch::kInt8, 1},
    {"U8", torch::kUInt8, 1},
    {"BOOL", torch::kBool, 1},
    {"F8_E4M3", torch::kUInt8, 1},
    {"F8_E5M2", torch::kUInt8, 1},
}};

const DtypeInfo* FindDtype(const std::string& dtype) {
  for (const DtypeInfo& info : kDtypes) {
    if (dtype == info.name) return &info;
  }
  return nullptr;
}

// Value of one FP8 byte with `mantissa_bits` mantissa bits (3: e4m3fn, 2: e5m2).
float DecodeFloat8(uint8_t byte, int mantissa_bits) {
  const int exponent_bits = 7 - mantissa_bits;
  const int bias = (1 << (exponent_bits - 1)) - 1;  // 7 for e4m3, 15 for e5m2
  const bool negative = (byte & 0x80) != 0;
  const int exponent = (byte >> mantissa_bits) & ((1 << exponent_bits) - 1);
  const int mantissa = byte & ((1 << mantissa_bits) - 1);
  const int max_exponent = (1 << exponent_bits) - 1;
  float value;
  if (mantissa_bits == 3 && exponent == max_exponent && mantissa == 7) {
    value = std::numeric_limits<float>::quiet_NaN();  // e4m3fn: only NaN, no inf
  } else if (mantissa_bits == 2 && exponent == max_exponent) {
    value = mantissa == 0 ? std::numeric_limits<float>::infinity()
                          : std::numeric_limits<float>::quiet_NaN();
  } else if (exponent == 0) {  // subnormal: 0.m * 2^(1-bias)
    value = std::ldexp(static_cast<float>(mantissa), 1 - bias - mantissa_bits);
  } else {  // normal: 1.m * 2^(e-bias)
    value = std::ldexp(static_cast<float>((1 << mantissa_bits) + mantissa),
                       exponent - bias - mantissa_bits);
  }
  return negative ? -value : value;
}

}  // namespace

absl::StatusOr<torch::ScalarType> ScalarTypeFromSafetensors(const std::string& dtype) {
  if (IsFloat8(dtype)) {
    return absl::UnimplementedError(absl::StrCat(
        "dtype ", dtype, " has no LibTorch scalar type; readers return it as float32"));
  }
  const DtypeInfo* info = FindDtype(dtype);
  if (info == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("unknown safetensors dtype \"", dtype,
                                                   "\" (expected one of F64 F32 F16 BF16 "
                                                   "F8_E4M3 F8_E5M2 I64 I32 I16 I8 U8 BOOL)"));
  }
  return info->type;
}

bool HasSafetensorsName(torch::ScalarType type) {
  for (const DtypeInfo& info : kDtypes) {
    if (info.type == type) return true;
  }
  return false;
}

std::string SafetensorsDtypeName(torch::ScalarType type) {
  for (const DtypeInfo& info : kDtypes) {
    if (info.type == type) return info.name;  // U8 precedes the F8 rows
  }
  FULCRUM_CHECK(false, "scalar type ", c10::toString(type), " has no safetensors dtype");
  return "";
}

int64_t ElementSize(const std::string& dtype) {
  const DtypeInfo* info = FindDtype(dtype);
  return info == nullptr ? 0 : info->size;
}

bool IsFloat8(const std::string& dtype) { return dtype == "F8_E4M3" || dtype == "F8_E5M2"; }

absl::StatusOr<torch::ScalarType> ViewScalarType(const std::string& dtype) {
  if (IsFloat8(dtype)) return torch::kFloat32;
  return ScalarTypeFromSafetensors(dtype);
}

torch::Tensor DequantizeFloat8(const torch::Tensor& bytes, const std::string& dtype) {
  FULCRUM_CHECK(IsFloat8(dtype), "not an FP8 dtype: ", dtype);
  FULCRUM_CHECK(bytes.scalar_type() == torch::kUInt8, "FP8 bytes must be uint8, got ",
                c10::toString(bytes.scalar_type()));
  const int mantissa_bits = dtype == "F8_E4M3" ? 3 : 2;
  // A 256-entry table, then one gather: vectorised and exact.
  torch::Tensor table = torch::empty({256}, torch::kFloat32);
  float* out = table.data_ptr<float>();
  for (int b = 0; b < 256; ++b) out[b] = DecodeFloat8(static_cast<uint8_t>(b), mantissa_bits);
  const torch::Tensor index = bytes.to(torch::kCPU).reshape({-1}).to(torch::kInt64);
  return table.index_select(0, index).reshape(bytes.sizes());
}

}  // namespace fulcrum::checkpoint
