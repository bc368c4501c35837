// Open-addressing hash maps for the BPE hot path: string -> id (looked up by
// string_view without building a std::string, which C++17's unordered_map
// cannot do) and (id, id) pair -> merge.
//
// Defines: StringIdMap, PairMap.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace fulcrum::data {

// 64-bit FNV-1a, then a final mix so that the low bits spread well.
inline uint64_t HashBytes(std::string_view bytes) {
  uint64_t h = 1469598103934665603ull;
  for (const char c : bytes) {
    h ^= static_cast<uint8_t>(c);
    h *= 1099511628211ull;
  }
  h ^= h >> 32;
  h *= 0xd6e8feb86659fd93ull;
  h ^= h >> 32;
  return h;
}

inline uint64_t HashU64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

// Insert-only map from strings to int32 ids. Later inserts of a key replace
// the value (as the reference's HashMap does when a vocab repeats a key).
class StringIdMap {
 public:
  void Reserve(size_t n) {
    size_t capacity = 16;
    while (capacity < 2 * n) capacity *= 2;
    Rehash(capacity);
  }

  void Insert(std::string_view key, int32_t value) {
    if (2 * (entries_.size() + 1) > slots_.size()) Rehash(slots_.empty() ? 16 : slots_.size() * 2);
    const size_t mask = slots_.size() - 1;
    for (size_t i = HashBytes(key) & mask;; i = (i + 1) & mask) {
      if (slots_[i] < 0) {
        slots_[i] = static_cast<int32_t>(entries_.size());
        entries_.push_back(Entry{std::string(key), value});
        return;
      }
      if (entries_[slots_[i]].key == key) {
        entries_[slots_[i]].value = value;
        return;
      }
    }
  }

  // nullptr when absent.
  const int32_t* Find(std::string_view key) const {
    if (slots_.empty()) return nullptr;
    const size_t mask = slots_.size() - 1;
    for (size_t i = HashBytes(key) & mask;; i = (i + 1) & mask) {
      if (slots_[i] < 0) return nullptr;
      const Entry& entry = entries_[slots_[i]];
      if (entry.key == key) return &entry.value;
    }
  }

  size_t size() const { return entries_.size(); }
  template <typename Fn>
  void ForEach(Fn&& fn) const {
    for (const Entry& entry : entries_) fn(entry.key, entry.value);
  }

 private:
  struct Entry {
    std::string key;
    int32_t value;
  };

  void Rehash(size_t capacity) {
    slots_.assign(capacity, -1);
    const size_t mask = capacity - 1;
    for (size_t e = 0; e < entries_.size(); ++e) {
      size_t i = HashBytes(entries_[e].key) & mask;
      while (slots_[i] >= 0) i = (i + 1) & mask;
      slots_[i] = static_cast<int32_t>(e);
    }
  }

  std::vector<Entry> entries_;
  std::vector<int32_t> slots_;  // index into entries_, -1 when empty; size is a power of 2
};

// Map from a pair of token ids to a merge (rank, id of the merged token).
class PairMap {
 public:
  struct Merge {
    int32_t rank = -1;
    int32_t new_id = -1;
  };

  void Reserve(size_t n) {
    size_t capacity = 16;
    while (capacity < 2 * n) capacity *= 2;
    Rehash(capacity);
  }

  // A repeated pair takes the later value (the reference builds a HashMap).
  void Insert(int32_t a, int32_t b, Merge merge) {
    if (2 * (size_ + 1) > slots_.size()) Rehash(slots_.empty() ? 16 : slots_.size() * 2);
    const uint64_t key = Key(a, b);
    const size_t mask = slots_.size() - 1;
    for (size_t i = HashU64(key) & mask;; i = (i + 1) & mask) {
      if (slots_[i].merge.rank < 0) {
        slots_[i] = Slot{key, merge};
        ++size_;
        return;
      }
      if (slots_[i].key == key) {
        slots_[i].merge = merge;
        return;
      }
    }
  }

  const Merge* Find(int32_t a, int32_t b) const {
    if (slots_.empty()) return nullptr;
    const uint64_t key = Key(a, b);
    const size_t mask = slots_.size() - 1;
    for (size_t i = HashU64(key) & mask;; i = (i + 1) & mask) {
      if (slots_[i].merge.rank < 0) return nullptr;
      if (slots_[i].key == key) return &slots_[i].merge;
    }
  }

  size_t size() const { return size_; }

 private:
  struct Slot {
    uint64_t key = 0;
    Merge merge;  // rank < 0: empty slot
  };
  static uint64_t Key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  void Rehash(size_t capacity) {
    std::vector<Slot> old;
    old.swap(slots_);
    slots_.assign(capacity, Slot{});
    const size_t mask = capacity - 1;
    for (const Slot& slot : old) {
      if (slot.merge.rank < 0) continue;
      size_t i = HashU64(slot.key) & mask;
      while (slots_[i].merge.rank >= 0) i = (i + 1) & mask;
      slots_[i] = slot;
    }
  }

  std::vector<Slot> slots_;
  size_t size_ = 0;
};

}  // namespace fulcrum::data
