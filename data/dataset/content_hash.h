// Fast non-cryptographic 64-bit content hashes (XXH64, Yann Collet's xxHash
// algorithm, re-implemented here) for telling whether a prepared data cache is
// still fresh: inputs, tokenizer files and options are fingerprinted by these.
//
// Defines: ContentHasher, HashBytes, HashFile, HashToHex.
//
// NOTE: not for security. Collisions are astronomically unlikely for the
// accidental changes this guards against (an edited data file), not for an
// adversary.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace fulcrum::data {

// Streaming XXH64: Update() any number of times, Digest() any time.
// HashBytes(a + b) == (Update(a), Update(b), Digest()) for every split.
class ContentHasher {
 public:
  explicit ContentHasher(uint64_t seed = 0);
  void Update(std::string_view bytes);
  uint64_t Digest() const;

 private:
  void ConsumeStripe(const unsigned char* stripe);  // 32 bytes

  uint64_t seed_;
  std::array<uint64_t, 4> acc_;
  std::array<unsigned char, 32> buffer_{};
  size_t buffered_ = 0;
  uint64_t total_ = 0;
};

uint64_t HashBytes(std::string_view bytes, uint64_t seed = 0);

// Streams the file in 1 MiB chunks. Errors name the file.
absl::StatusOr<uint64_t> HashFile(const std::string& path);

// 16 lower-case hex digits.
std::string HashToHex(uint64_t hash);

}  // namespace fulcrum::data
