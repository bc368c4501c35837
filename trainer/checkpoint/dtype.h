// Safetensors dtype strings <-> LibTorch scalar types, element sizes, and the
// FP8 (OCP e4m3fn / e5m2) decoding that LibTorch 1.13 cannot do itself.
//
// Defines: ScalarTypeFromSafetensors, SafetensorsDtypeName, HasSafetensorsName,
// ElementSize, IsFloat8, ViewScalarType, DequantizeFloat8.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace fulcrum::checkpoint {

// safetensors dtype strings: F64 F32 F16 BF16 F8_E4M3 F8_E5M2 I64 I32 I16 I8 U8 BOOL.
// NOTE: F8_E4M3 / F8_E5M2 have no scalar type in LibTorch 1.13: they return
// UnimplementedError here (use ViewScalarType for what a reader returns).
absl::StatusOr<torch::ScalarType> ScalarTypeFromSafetensors(const std::string& dtype);

// Inverse; FULCRUM_CHECK for types without a safetensors name.
std::string SafetensorsDtypeName(torch::ScalarType type);

// Whether SafetensorsDtypeName(type) is defined (writers test this first so
// that an unsupported tensor is a Status, not an abort).
bool HasSafetensorsName(torch::ScalarType type);

// Bytes per element; 0 when the dtype string is unknown.
int64_t ElementSize(const std::string& dtype);

// "F8_E4M3" or "F8_E5M2".
bool IsFloat8(const std::string& dtype);

// The scalar type of the tensors a reader returns for `dtype`: float32 for
// the FP8 types (dequantized), ScalarTypeFromSafetensors otherwise.
absl::StatusOr<torch::ScalarType> ViewScalarType(const std::string& dtype);

// Decodes FP8 bit patterns: `bytes` is a uint8 tensor of any shape holding
// e4m3fn (dtype "F8_E4M3") or e5m2 ("F8_E5M2") values; returns float32 of the
// same shape. NaN encodings follow the OCP FP8 spec (e4m3fn: S.1111.111 is
// NaN and there is no infinity; e5m2: exponent 11111 is inf (mantissa 0) or
// NaN). FULCRUM_CHECK on a non-uint8 tensor or a non-FP8 dtype.
torch::Tensor DequantizeFloat8(const torch::Tensor& bytes, const std::string& dtype);

}  // namespace fulcrum::checkpoint
