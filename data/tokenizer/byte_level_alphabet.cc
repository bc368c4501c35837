#include "data/tokenizer/byte_level_alphabet.h"

namespace fulcrum::data {
namespace {

void AppendUtf8(uint32_t code_point, std::string* out) {
  // Only code points < 0x800 occur in this table.
  if (code_point < 0x80) {
    out->push_back(static_cast<char>(code_point));
  } else {
    out->push_back(static_cast<char>(0xC0 | (code_point >> 6)));
    out->push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  }
}

bool IsPrintableLatin1(int byte) {
  return (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) ||
         (byte >= 0xAE && byte <= 0xFF);
}

}  // namespace

const ByteLevelAlphabet& ByteLevelAlphabet::Get() {
  static const ByteLevelAlphabet alphabet;
  return alphabet;
}

ByteLevelAlphabet::ByteLevelAlphabet() {
  code_point_to_byte_.fill(-1);
  // Printable bytes stand for themselves; the others take 256, 257, ... in
  // byte order (GPT-2's bytes_to_unicode).
  uint32_t next = 256;
  for (int byte = 0; byte < 256; ++byte) {
    const uint32_t code_point = IsPrintableLatin1(byte) ? byte : next++;
    AppendUtf8(code_point, &byte_to_utf8_[byte]);
    code_point_to_byte_[code_point] = static_cast<int16_t>(byte);
  }
}

void ByteLevelAlphabet::EncodeBytes(std::string_view bytes, std::string* out) const {
  for (const char c : bytes) out->append(byte_to_utf8_[static_cast<uint8_t>(c)]);
}

std::string ByteLevelAlphabet::DecodeToBytes(std::string_view mapped) const {
  std::string bytes;
  bytes.reserve(mapped.size());
  size_t i = 0;
  while (i < mapped.size()) {
    const auto lead = static_cast<uint8_t>(mapped[i]);
    size_t length = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
    if (i + length > mapped.size()) length = mapped.size() - i;
    uint32_t code_point = 0x110000;
    if (length == 1) {
      code_point = lead;
    } else if (length == 2) {
      code_point = ((lead & 0x1F) << 6) | (static_cast<uint8_t>(mapped[i + 1]) & 0x3F);
    }
    if (code_point < code_point_to_byte_.size() && code_point_to_byte_[code_point] >= 0) {
      bytes.push_back(static_cast<char>(code_point_to_byte_[code_point]));
    } else {
      bytes.append(mapped.substr(i, length));
    }
    i += length;
  }
  return bytes;
}

}  // namespace fulcrum::data
