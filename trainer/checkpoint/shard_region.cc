#include "trainer/checkpoint/shard_region.h"

#include <algorithm>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace fulcrum::checkpoint {
namespace {

int64_t Product(const std::vector<int64_t>& v) {
  int64_t n = 1;
  for (int64_t x : v) n *= x;
  return n;
}

// Row-major strides of a box.
std::vector<int64_t> Strides(const std::vector<int64_t>& lengths) {
  std::vector<int64_t> strides(lengths.size(), 1);
  for (int64_t d = static_cast<int64_t>(lengths.size()) - 2; d >= 0; --d) {
    strides[d] = strides[d + 1] * lengths[d + 1];
  }
  return strides;
}

}  // namespace

ShardRegion ShardRegion::Box(std::vector<int64_t> offsets, std::vector<int64_t> lengths) {
  ShardRegion region;
  region.offsets = std::move(offsets);
  region.lengths = std::move(lengths);
  region.flat_end = Product(region.lengths);
  return region;
}

ShardRegion ShardRegion::Whole(const std::vector<int64_t>& shape) {
  return Box(std::vector<int64_t>(shape.size(), 0), shape);
}

int64_t ShardRegion::box_numel() const { return Product(lengths); }

std::string ShardRegion::Invalid(const std::vector<int64_t>& shape) const {
  if (offsets.size() != shape.size() || lengths.size() != shape.size()) {
    return absl::StrCat("region of rank ", offsets.size(), "/", lengths.size(), " for shape [",
                        absl::StrJoin(shape, ", "), "]");
  }
  for (size_t d = 0; d < shape.size(); ++d) {
    if (offsets[d] < 0 || lengths[d] < 0 || offsets[d] + lengths[d] > shape[d]) {
      return absl::StrCat("dim ", d, ": [", offsets[d], ", ", offsets[d] + lengths[d],
                          ") is outside [0, ", shape[d], ")");
    }
  }
  if (flat_begin < 0 || flat_begin > flat_end || flat_end > box_numel()) {
    return absl::StrCat("flat range [", flat_begin, ", ", flat_end, ") is outside the box's ",
                        box_numel(), " elements");
  }
  return "";
}

bool ShardRegion::operator==(const ShardRegion& other) const {
  return offsets == other.offsets && lengths == other.lengths && flat_begin == other.flat_begin &&
         flat_end == other.flat_end;
}

bool ShardRegion::operator<(const ShardRegion& other) const {
  return std::tie(offsets, lengths, flat_begin, flat_end) <
         std::tie(other.offsets, other.lengths, other.flat_begin, other.flat_end);
}

std::vector<CopyRun> OverlapRuns(const ShardRegion& src, const ShardRegion& dst) {
  std::vector<CopyRun> runs;
  const size_t dims = dst.offsets.size();
  if (dims == 0) {  // a scalar: one element, flat index 0 in both
    if (src.flat_begin <= 0 && src.flat_end > 0 && dst.flat_begin <= 0 && dst.flat_end > 0) {
      runs.push_back({0, 0, 1});
    }
    return runs;
  }
  std::vector<int64_t> lo(dims), hi(dims);
  for (size_t d = 0; d < dims; ++d) {
    lo[d] = std::max(src.offsets[d], dst.offsets[d]);
    hi[d] = std::min(src.offsets[d] + src.lengths[d], dst.offsets[d] + dst.lengths[d]);
    if (lo[d] >= hi[d]) return runs;
  }
  const std::vector<int64_t> src_strides = Strides(src.lengths);
  const std::vector<int64_t> dst_strides = Strides(dst.lengths);
  const size_t last = dims - 1;
  const int64_t row = hi[last] - lo[last];
  // Odometer over the intersection's rows (every dim but the last).
  std::vector<int64_t> index(lo.begin(), lo.end());
  while (true) {
    int64_t s = 0, t = 0;
    for (size_t d = 0; d < dims; ++d) {
      s += (index[d] - src.offsets[d]) * src_strides[d];
      t += (index[d] - dst.offsets[d]) * dst_strides[d];
    }
    // Elements k of the row with s + k and t + k inside both flat ranges.
    const int64_t k_lo = std::max({int64_t{0}, src.flat_begin - s, dst.flat_begin - t});
    const int64_t k_hi = std::min({row, src.flat_end - s, dst.flat_end - t});
    if (k_lo < k_hi) {
      const CopyRun run{s + k_lo - src.flat_begin, t + k_lo - dst.flat_begin, k_hi - k_lo};
      if (!runs.empty() && runs.back().src + runs.back().count == run.src &&
          runs.back().dst + runs.back().count == run.dst) {
        runs.back().count += run.count;
      } else {
        runs.push_back(run);
      }
    }
    // Next row; done when every outer dim wrapped.
    int64_t d = static_cast<int64_t>(last) - 1;
    for (; d >= 0; --d) {
      if (++index[d] < hi[d]) break;
      index[d] = lo[d];
    }
    if (d < 0) break;
  }
  return runs;
}

}  // namespace fulcrum::checkpoint
