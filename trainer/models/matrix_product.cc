#include "trainer/models/matrix_product.h"

#include <ATen/record_function.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/check.h"

#if FULCRUM_WITH_DNNL
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace fulcrum::models {
namespace {

#if FULCRUM_WITH_DNNL

// A matrix as oneDNN reads it: row-major or column-major with a leading
// dimension, the stride of a size-1 dim (which LibTorch leaves arbitrary:
// a decoding step's [1, K] rows) made that of its layout. Anything else is
// copied first.
struct Readable {
  torch::Tensor tensor;
  int64_t stride0 = 0, stride1 = 0;
};

// A [rows, cols] matrix's strides as oneDNN reads them in place (one of
// them 1, the other its leading dimension), or {0, 0} where it cannot.
std::pair<int64_t, int64_t> MatrixStrides(int64_t rows, int64_t cols, int64_t s0, int64_t s1) {
  if ((s1 == 1 || cols == 1) && (rows == 1 || s0 >= std::max<int64_t>(1, cols))) {
    return {rows == 1 ? std::max<int64_t>(1, cols) : s0, 1};
  }
  if ((s0 == 1 || rows == 1) && (cols == 1 || s1 >= std::max<int64_t>(1, rows))) {
    return {1, cols == 1 ? std::max<int64_t>(1, rows) : s1};
  }
  return {0, 0};
}

Readable InPlaceReadable(const torch::Tensor& x) {
  const auto [s0, s1] = MatrixStrides(x.size(0), x.size(1), x.stride(0), x.stride(1));
  if (s0 > 0) return {x, s0, s1};
  return {x.contiguous(), std::max<int64_t>(1, x.size(1)), 1};
}

// What a primitive is built for: sizes, strides and the two scalars.
// `batch` empty for one matrix (2-D descriptors); else the leading dims of
// the three operands and each one's strides over them.
struct Shape {
  int64_t m, k, n;
  int64_t a0, a1, b0, b1, c0;
  float alpha;
  bool accumulate;
  std::vector<int64_t> batch, a_batch, b_batch, c_batch;
  // Field by field: memcmp would read the padding after `accumulate`.
  bool operator==(const Shape& o) const {
    return std::tie(m, k, n, a0, a1, b0, b1, c0, alpha, accumulate, batch, a_batch, b_batch,
                    c_batch) == std::tie(o.m, o.k, o.n, o.a0, o.a1, o.b0, o.b1, o.c0, o.alpha,
                                         o.accumulate, o.batch, o.a_batch, o.b_batch, o.c_batch);
  }
};

struct ShapeHash {
  size_t operator()(const Shape& s) const {
    size_t h = 0;
    const auto mix = [&](int64_t v) { h = h * 1000003u ^ std::hash<int64_t>()(v); };
    for (const int64_t v : {s.m, s.k, s.n, s.a0, s.a1, s.b0, s.b1, s.c0}) mix(v);
    for (const std::vector<int64_t>* dims : {&s.batch, &s.a_batch, &s.b_batch, &s.c_batch}) {
      for (const int64_t v : *dims) mix(v);
    }
    return h * 31u + std::hash<float>()(s.alpha) * 2u + (s.accumulate ? 1u : 0u);
  }
};

struct Built {
  dnnl::matmul primitive;
  dnnl::memory::desc a, b, c, scratch;
};

// The engine and the primitives built so far (a step repeats a few dozen
// shapes). Like oneDNN's own primitive cache it is process-wide; it only
// grows by shapes, and is emptied past kMaxShapes (MoE rows vary).
class PrimitiveCache {
 public:
  static PrimitiveCache& Get() {
    static PrimitiveCache* const cache = new PrimitiveCache();  // outlives every caller
    return *cache;
  }
  const dnnl::engine& engine() const { return engine_; }

  Built Find(const Shape& s) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = built_.find(s);
    if (it != built_.end()) return it->second;
    if (built_.size() >= kMaxShapes) built_.clear();
    using dt = dnnl::memory::data_type;
    const auto desc = [&](int64_t rows, int64_t cols, const std::vector<int64_t>& batch_strides,
                          int64_t s0, int64_t s1) {
      dnnl::memory::dims dims = s.batch, strides = batch_strides;
      dims.insert(dims.end(), {rows, cols});
      strides.insert(strides.end(), {s0, s1});
      return dnnl::memory::desc(dims, dt::f32, strides);
    };
    const dnnl::memory::desc a = desc(s.m, s.k, s.a_batch, s.a0, s.a1);
    const dnnl::memory::desc b = desc(s.k, s.n, s.b_batch, s.b0, s.b1);
    const dnnl::memory::desc c = desc(s.m, s.n, s.c_batch, s.c0, 1);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    if (s.alpha != 1.0f) attr.set_output_scales(0, {s.alpha});
    if (s.accumulate) {
      dnnl::post_ops ops;
      ops.append_sum(1.0f);
      attr.set_post_ops(ops);
    }
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, engine_);
    Built built{dnnl::matmul(pd), a, b, c, pd.scratchpad_desc()};
    built_.emplace(s, built);
    return built;
  }

 private:
  static constexpr size_t kMaxShapes = 512;
  PrimitiveCache() : engine_(dnnl::engine::kind::cpu, 0) {}
  dnnl::engine engine_;
  std::mutex mutex_;
  std::unordered_map<Shape, Built, ShapeHash> built_;
};

bool IsCpuFloatMatrix(const torch::Tensor& x) {
  return x.defined() && x.device().is_cpu() && x.scalar_type() == torch::kFloat && x.dim() == 2;
}

// Whether a size is one a training step repeats. oneDNN builds a primitive
// per shape (~140 us on the bench host, against a product of ~1 ms): the
// dense layers' rows (batch x sequence) and the model's dims are multiples
// of 64 (or below it: LoRA's rank, test models), and recur every step; the
// rows each expert receives change with routing, and would build one per
// call (the bench MoE lost 11% of its tokens/s): those split into a
// multiple of 64 through oneDNN and a rest below it through torch
// (OneDnnProduct), at most one new primitive per 64 rows of the largest
// expert's share. A rule on the sizes alone, so that a product's path, and
// its bits, do not depend on what ran before (exact resume).
constexpr int64_t kRepeatingMultiple = 64;
bool RepeatingSize(int64_t size) {
  return size < kRepeatingMultiple || size % kRepeatingMultiple == 0;
}

// Runs the primitive built for `shape` on these operands.
void Execute(const Shape& shape, const float* a, const float* b, float* out) {
  PrimitiveCache& cache = PrimitiveCache::Get();
  const Built built = cache.Find(shape);
  const dnnl::engine& engine = cache.engine();
  // Scratch from LibTorch's allocator: the caching host allocator keeps it
  // between calls (oneDNN's own would malloc and free it every call).
  const torch::Tensor scratch =
      torch::empty({static_cast<int64_t>(std::max<size_t>(1, built.scratch.get_size()))},
                   torch::TensorOptions().dtype(torch::kByte));
  dnnl::stream stream(engine);
  // oneDNN's memory objects take mutable handles; it only reads a and b.
  built.primitive.execute(
      stream, {{DNNL_ARG_SRC, dnnl::memory(built.a, engine, const_cast<float*>(a))},
               {DNNL_ARG_WEIGHTS, dnnl::memory(built.b, engine, const_cast<float*>(b))},
               {DNNL_ARG_DST, dnnl::memory(built.c, engine, out)},
               {DNNL_ARG_SCRATCHPAD, dnnl::memory(built.scratch, engine, scratch.data_ptr())}});
  stream.wait();
}

// out = alpha a @ b, or out += alpha a @ b. False where oneDNN does not take
// these tensors (nothing written then).
bool OneDnnProduct(const torch::Tensor& out, const torch::Tensor& a_in, const torch::Tensor& b_in,
                   float alpha, bool accumulate) {
  if (!(IsCpuFloatMatrix(a_in) && IsCpuFloatMatrix(b_in) && IsCpuFloatMatrix(out) &&
        (out.stride(1) == 1 || out.size(1) == 1) &&
        (out.size(0) == 1 || out.stride(0) >= std::max<int64_t>(1, out.size(1))))) {
    return false;
  }
  // A size a step need not repeat (the rows an expert receives; a latent
  // projection's 128 + 64 columns): its whole 64s through oneDNN, the rest
  // below 64 through torch. oneDNN for the rest too would build a primitive
  // for each of 63 sizes and every head size (+45 MiB of JIT code and
  // caches on the bench MoE, no faster).
  const int64_t m = a_in.size(0), k = a_in.size(1), n = b_in.size(1);
  if (!RepeatingSize(m) || !RepeatingSize(n) || !RepeatingSize(k)) {
    // The product over [0, head) and over [head, size) of the ragged
    // dimension: rows and columns of out, or the inner dimension (whose
    // rest adds to the head's product).
    const int dim = !RepeatingSize(m) ? 0 : !RepeatingSize(n) ? 1 : 2;
    const int64_t size = dim == 0 ? m : dim == 1 ? n : k;
    const int64_t head = RepeatingSizeAtMost(size);
    // The dimension each operand is cut along for it (-1: whole).
    constexpr int kOutDim[] = {0, 1, -1}, kADim[] = {0, -1, 1}, kBDim[] = {-1, 1, 0};
    const auto part = [&](int64_t start, int64_t length) {
      const auto cut = [&](const torch::Tensor& t, int along) {
        return along < 0 ? t : t.narrow(along, start, length);
      };
      return std::make_tuple(cut(out, kOutDim[dim]), cut(a_in, kADim[dim]), cut(b_in, kBDim[dim]));
    };
    const auto [head_out, head_a, head_b] = part(0, head);
    // The head passes the checks above as the whole did.
    const bool head_done = OneDnnProduct(head_out, head_a, head_b, alpha, accumulate);
    FULCRUM_CHECK(head_done, "oneDNN refused the head of a ", m, "x", k, " by ", k, "x", n,
                  " product");
    const auto [rest_out, rest_a, rest_b] = part(head, size - head);
    // beta 0: the output's old values (NaN, say) are not read.
    const bool add = accumulate || dim == 2;
    torch::Tensor(rest_out).addmm_(rest_a, rest_b, add ? 1.0 : 0.0, alpha);
    return true;
  }
  if (out.numel() == 0) return true;
  if (a_in.size(1) == 0) {
    if (!accumulate) out.zero_();
    return true;
  }
  // Named in FULCRUM_PROFILE's traces, which see no aten op here.
  RECORD_FUNCTION("fulcrum::MatrixProduct", std::vector<c10::IValue>());
  const Readable a = InPlaceReadable(a_in), b = InPlaceReadable(b_in);
  const int64_t out_stride = out.size(0) == 1 ? out.size(1) : out.stride(0);
  Execute(Shape{a_in.size(0),
                a_in.size(1),
                b_in.size(1),
                a.stride0,
                a.stride1,
                b.stride0,
                b.stride1,
                out_stride,
                alpha,
                accumulate,
                {},
                {},
                {},
                {}},
          a.tensor.data_ptr<float>(), b.tensor.data_ptr<float>(), out.data_ptr<float>());
  return true;
}

#else

bool OneDnnProduct(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, float, bool) {
  return false;
}

#endif  // FULCRUM_WITH_DNNL

void CheckSizes(const torch::Tensor& a, const torch::Tensor& b) {
  FULCRUM_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0), "matrix product of ",
                c10::str(a.sizes()), " and ", c10::str(b.sizes()));
}

}  // namespace

torch::Tensor MatrixProduct(const torch::Tensor& a, const torch::Tensor& b) {
  CheckSizes(a, b);
  torch::Tensor out = torch::empty({a.size(0), b.size(1)}, a.options());
  if (OneDnnProduct(out, a, b, 1.0f, /*accumulate=*/false)) return out;
  return torch::mm(a, b);
}

void MatrixProductInto(const torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b) {
  CheckSizes(a, b);
  FULCRUM_CHECK(out.dim() == 2 && out.size(0) == a.size(0) && out.size(1) == b.size(1),
                "matrix product into ", c10::str(out.sizes()));
  if (OneDnnProduct(out, a, b, 1.0f, /*accumulate=*/false)) return;
  at::mm_out(const_cast<torch::Tensor&>(out), a, b);
}

void AddMatrixProduct(const torch::Tensor& out, const torch::Tensor& a, const torch::Tensor& b,
                      double alpha) {
  CheckSizes(a, b);
  FULCRUM_CHECK(out.dim() == 2 && out.size(0) == a.size(0) && out.size(1) == b.size(1),
                "matrix product into ", c10::str(out.sizes()));
  if (OneDnnProduct(out, a, b, static_cast<float>(alpha), /*accumulate=*/true)) return;
  out.addmm_(a, b, 1, alpha);
}

bool BatchedMatrixProductInto(const torch::Tensor& out, const torch::Tensor& a,
                              const torch::Tensor& b, bool accumulate) {
  const int64_t dims = a.dim();
  FULCRUM_CHECK(dims >= 3 && b.dim() == dims && out.dim() == dims &&
                    a.sizes().slice(0, dims - 2) == b.sizes().slice(0, dims - 2) &&
                    out.sizes().slice(0, dims - 2) == a.sizes().slice(0, dims - 2) &&
                    a.size(-1) == b.size(-2) && out.size(-2) == a.size(-2) &&
                    out.size(-1) == b.size(-1),
                "batched matrix product of ", c10::str(a.sizes()), " and ", c10::str(b.sizes()),
                " into ", c10::str(out.sizes()));
#if FULCRUM_WITH_DNNL
  const auto is_float = [](const torch::Tensor& x) {
    return x.device().is_cpu() && x.scalar_type() == torch::kFloat;
  };
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  if (!is_float(a) || !is_float(b) || !is_float(out) || !RepeatingSize(m) || !RepeatingSize(k) ||
      !RepeatingSize(n) || dims > DNNL_MAX_NDIMS) {
    return false;
  }
  const auto [a0, a1] = MatrixStrides(m, k, a.stride(-2), a.stride(-1));
  const auto [b0, b1] = MatrixStrides(k, n, b.stride(-2), b.stride(-1));
  const auto [c0, c1] = MatrixStrides(m, n, out.stride(-2), out.stride(-1));
  if (a0 == 0 || b0 == 0 || c1 != 1) return false;
  if (out.numel() == 0) return true;
  if (k == 0) {
    if (!accumulate) out.zero_();
    return true;
  }
  const auto leading = [&](const torch::Tensor& x) {
    return std::vector<int64_t>(x.strides().begin(), x.strides().end() - 2);
  };
  RECORD_FUNCTION("fulcrum::MatrixProduct", std::vector<c10::IValue>());
  Execute(Shape{m, k, n, a0, a1, b0, b1, c0, 1.0f, accumulate,
                std::vector<int64_t>(a.sizes().begin(), a.sizes().end() - 2), leading(a),
                leading(b), leading(out)},
          a.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<float>());
  return true;
#else
  return false;
#endif
}

int64_t RepeatingSizeAtMost(int64_t size) {
  if (size < kRepeatingMultiple) return std::max<int64_t>(1, size);
  return size - size % kRepeatingMultiple;
}

bool MatrixProductUsesOneDnn() {
#if FULCRUM_WITH_DNNL
  return true;
#else
  return false;
#endif
}

}  // namespace fulcrum::models
