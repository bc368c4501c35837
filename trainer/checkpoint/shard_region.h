// Which elements of a logical tensor one saved (or wanted) shard holds, and
// the element runs two shards share: the arithmetic that lets a rank build
// its new shards from the saved ones of any other layout.
//
// A region is a box of the global tensor (a tp shard, a kv head, the whole
// tensor), optionally restricted to a contiguous range of the box's
// row-major elements (a ZeRO-1 segment of that box). Its elements are stored
// in that order, so element e of the stored piece is the box's flat element
// flat_begin + e.
//
// Defines: ShardRegion, CopyRun, OverlapRuns.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace fulcrum::checkpoint {

struct ShardRegion {
  std::vector<int64_t> offsets;  // per dim, into the global shape
  std::vector<int64_t> lengths;  // per dim: the box's shape
  int64_t flat_begin = 0;        // the stored range of the box's flat elements
  int64_t flat_end = 0;

  // The whole box [offsets, offsets + lengths).
  static ShardRegion Box(std::vector<int64_t> offsets, std::vector<int64_t> lengths);
  // The whole of a tensor of `shape`.
  static ShardRegion Whole(const std::vector<int64_t>& shape);
  int64_t box_numel() const;
  int64_t numel() const { return flat_end - flat_begin; }
  // Within `shape`, flat range inside the box: empty when valid, else why not.
  std::string Invalid(const std::vector<int64_t>& shape) const;
  bool operator==(const ShardRegion& other) const;
  bool operator<(const ShardRegion& other) const;
};

// `count` elements starting at element `src` of the source's stored piece
// and at element `dst` of the destination's.
struct CopyRun {
  int64_t src = 0;
  int64_t dst = 0;
  int64_t count = 0;
};

// Every element both regions hold (of the same global tensor), as runs
// contiguous in both, in the destination's order; adjacent runs merged.
std::vector<CopyRun> OverlapRuns(const ShardRegion& src, const ShardRegion& dst);

}  // namespace fulcrum::checkpoint
