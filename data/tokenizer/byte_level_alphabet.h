// GPT-2's byte-to-unicode table shared by the ByteLevel pre-tokenizer and
// decoder: every byte maps to a printable code point so that BPE vocabularies
// can be written as JSON strings.
//
// Defines: ByteLevelAlphabet.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace fulcrum::data {

class ByteLevelAlphabet {
 public:
  // The table is immutable; the instance is a function-local constant.
  static const ByteLevelAlphabet& Get();

  // UTF-8 of the code point that stands for `byte`.
  const std::string& Encode(uint8_t byte) const { return byte_to_utf8_[byte]; }
  // Appends the mapped form of every byte of `bytes` to `out`.
  void EncodeBytes(std::string_view bytes, std::string* out) const;
  // Inverse of EncodeBytes; characters outside the alphabet are copied as-is
  // (the reference decoder does the same with unknown chars).
  std::string DecodeToBytes(std::string_view mapped) const;

 private:
  ByteLevelAlphabet();
  std::array<std::string, 256> byte_to_utf8_;
  std::array<int16_t, 324> code_point_to_byte_;  // code points < 324, -1 when unmapped
};

}  // namespace fulcrum::data
