// Internal helpers shared by the normalizers, pre-tokenizers and added
// vocabulary: UTF-8 stepping and the character classes of Rust's `char`
// methods that the reference library calls (is_whitespace, is_numeric, ...).
//
// Defines: NextCodePoint, PrevCodePoint, AppendUtf8, IsWhitespace, IsNumeric,
// IsPunctuation, IsWordChar.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace fulcrum::data::internal {

// Decodes the code point starting at text[*pos] (valid UTF-8) and advances
// *pos past it.
inline char32_t NextCodePoint(std::string_view text, size_t* pos) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char lead = byte(*pos);
  if (lead < 0x80) {
    *pos += 1;
    return lead;
  }
  if (lead < 0xE0) {
    const char32_t cp = ((lead & 0x1Fu) << 6) | (byte(*pos + 1) & 0x3Fu);
    *pos += 2;
    return cp;
  }
  if (lead < 0xF0) {
    const char32_t cp =
        ((lead & 0x0Fu) << 12) | ((byte(*pos + 1) & 0x3Fu) << 6) | (byte(*pos + 2) & 0x3Fu);
    *pos += 3;
    return cp;
  }
  const char32_t cp = ((lead & 0x07u) << 18) | ((byte(*pos + 1) & 0x3Fu) << 12) |
                      ((byte(*pos + 2) & 0x3Fu) << 6) | (byte(*pos + 3) & 0x3Fu);
  *pos += 4;
  return cp;
}

// Moves *pos (> 0, on a character boundary) back to the start of the
// previous character and returns that character.
inline char32_t PrevCodePoint(std::string_view text, size_t* pos) {
  size_t start = *pos - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  *pos = start;
  size_t cursor = start;
  return NextCodePoint(text, &cursor);
}

void AppendUtf8(char32_t code_point, std::string* out);

// Rust char::is_whitespace (Unicode White_Space).
bool IsWhitespace(char32_t c);
// Rust char::is_numeric (general categories Nd, Nl, No).
bool IsNumeric(char32_t c);
// The reference's Punctuation pre-tokenizer: ASCII punctuation or any P*.
bool IsPunctuation(char32_t c);
// Rust regex `\w`: Alphabetic, M*, Nd, Pc, Join_Control.
bool IsWordChar(char32_t c);

}  // namespace fulcrum::data::internal
