// UTF-8 validation for text entering the tokenizer.
//
// Defines: FindInvalidUtf8.
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>

namespace fulcrum::data {

// Byte offset of the first invalid UTF-8 sequence (overlong forms,
// surrogates and code points > U+10FFFF are invalid), or nullopt if valid.
std::optional<size_t> FindInvalidUtf8(std::string_view text);

}  // namespace fulcrum::data
