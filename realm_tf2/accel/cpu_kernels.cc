// realm_tf2's CPU kernels: fused masked softmax + inverted dropout for attention probabilities,
// and BERT's tanh-GELU, each with its gradient kernel.
//
// Why this exists: on a CPU the [B, heads, T, S] attention-probability tensor is the largest
// activation of a BERT step (18.9M elements per layer of the REALM step's 384-token joint encoder),
// and TensorFlow runs `softmax(scores + adder)` and its dropout as some eight separate passes over
// it (add, softmax, random bits, compare, cast, scale, multiply; casts under mixed bfloat16) plus
// four in the backward pass. These kernels do one pass each way, a row (one query's S keys) at a
// time while it sits in L1: forward reads the scores and writes the dropped-out probabilities z and
// the probabilities y; backward reads dz and y, regenerates the keep mask from the seed and writes
// ds = z·dz - y·Σ(z·dz). GELU likewise: TensorFlow runs its tanh form as about nine passes over
// the [tokens, intermediate] activations (with casts under mixed bfloat16); here one pass forward
// and one backward, in float32. Neither TensorFlow, Keras nor Model Garden has such kernels (XLA and
// TPUs fuse this themselves; the TensorFlow-op versions in realm_tf2/accel/fused_attention.py and
// float32_kernels.py run there and wherever these cannot be built).
//
// Dropout: element i of the flattened tensor is kept iff its 16-bit random value u_i >= threshold
// (threshold = round(rate·65536)), kept values are scaled by `scale` = 65536/(65536 - threshold).
// u_i is 16-bit lane (i mod 4) of splitmix64(key + (i div 4 + 1)·golden), key = splitmix64(seed):
// a counter-based generator, so the backward pass recomputes the same mask from the seed alone.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "Eigen/Core"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace realm_tf2 {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::errors::InvalidArgument;

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

inline uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// keep[j] = 1 iff element (first + j) is kept, j < n.
inline void KeepFlags(uint64_t key, int64_t first, int64_t n, int threshold, uint8_t* keep) {
  const int64_t w0 = first >> 2, w1 = (first + n + 3) >> 2;
  // Whole words into a scratch of 4·(w1 - w0) flags (a loop the compiler vectorizes), then the
  // row's slice of it.
  thread_local std::vector<uint8_t> scratch;
  scratch.resize(static_cast<size_t>(4 * (w1 - w0)));
  uint8_t* s = scratch.data();
  const uint16_t t = static_cast<uint16_t>(threshold);
  for (int64_t w = w0; w < w1; ++w) {
    const uint64_t r = Mix64(key + static_cast<uint64_t>(w + 1) * kGolden);
    uint8_t* o = s + 4 * (w - w0);
    o[0] = static_cast<uint16_t>(r) >= t;
    o[1] = static_cast<uint16_t>(r >> 16) >= t;
    o[2] = static_cast<uint16_t>(r >> 32) >= t;
    o[3] = static_cast<uint16_t>(r >> 48) >= t;
  }
  std::memcpy(keep, s + (first - 4 * w0), static_cast<size_t>(n));
}

// float <-> storage type. bfloat16 by its bits (round to nearest even, NaN kept quiet), so the
// loops stay plain integer/float code the compiler can vectorize.
template <typename T>
struct Io;
template <>
struct Io<float> {
  static float Load(const float* p, int64_t j) { return p[j]; }
  static void Store(float* p, int64_t j, float v) { p[j] = v; }
};
template <>
struct Io<Eigen::bfloat16> {
  static float Load(const Eigen::bfloat16* p, int64_t j) {
    uint16_t b;
    std::memcpy(&b, p + j, 2);
    const uint32_t u = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static void Store(Eigen::bfloat16* p, int64_t j, float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    // Integer select, not std::isnan, so the loop vectorizes.
    const uint16_t b = static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded);
    std::memcpy(p + j, &b, 2);
  }
};

struct DropoutAttrs {
  int threshold;
  float scale;
  explicit DropoutAttrs(OpKernelConstruction* ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("threshold", &threshold));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("scale", &scale));
    OP_REQUIRES(ctx, threshold >= 0 && threshold < 65536,
                InvalidArgument("threshold must be in [0, 65536), got ", threshold));
  }
};

inline uint64_t KeyFromSeed(OpKernelContext* ctx) {
  return Mix64(static_cast<uint64_t>(ctx->input(2).scalar<int64_t>()()) + kGolden);
}

// Shards `rows` rows of `cols` elements over the CPU device's intra-op threads.
template <typename Fn>
void ForEachRowBlock(OpKernelContext* ctx, int64_t rows, int64_t cols, Fn fn) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(workers->num_threads, workers->workers, rows, 30 * cols, fn);
}

// Elementwise kernels: `n` elements in chunks of kChunk over the intra-op threads.
constexpr int64_t kChunk = 1024;
template <typename Fn>
void ForEachChunk(OpKernelContext* ctx, int64_t n, Fn fn) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  ::tensorflow::Shard(workers->num_threads, workers->workers, chunks, 40 * kChunk,
                      [&](int64_t b, int64_t e) { fn(b * kChunk, std::min(n, e * kChunk)); });
}

// z, y = dropout(softmax(scores + adder)), softmax over the last axis.
//   scores: [B, N, T, S] (T: float32 or bfloat16)
//   adder: float32, empty (no mask) or rank 4 with each dim 1 or equal to scores' (broadcast),
//          last dim S
//   seed: int64 scalar
template <typename T>
class MaskedSoftmaxDropoutOp : public OpKernel {
 public:
  explicit MaskedSoftmaxDropoutOp(OpKernelConstruction* ctx) : OpKernel(ctx), attrs_(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& scores = ctx->input(0);
    const Tensor& adder = ctx->input(1);
    OP_REQUIRES(ctx, scores.dims() == 4,
                InvalidArgument("scores must be [B, N, T, S], got ", scores.shape().DebugString()));
    OP_REQUIRES(ctx, ::tensorflow::TensorShapeUtils::IsScalar(ctx->input(2).shape()),
                InvalidArgument("seed must be a scalar"));
    const bool has_adder = adder.NumElements() > 0;
    int64_t astride[3] = {0, 0, 0};  // adder row strides for b, n, t (0 = broadcast)
    if (has_adder) {
      OP_REQUIRES(ctx, adder.dims() == 4 && adder.dim_size(3) == scores.dim_size(3),
                  InvalidArgument("adder must be rank 4 with last dim ", scores.dim_size(3),
                                  ", got ", adder.shape().DebugString()));
      int64_t stride = adder.dim_size(3);
      for (int d = 2; d >= 0; --d) {
        OP_REQUIRES(ctx, adder.dim_size(d) == 1 || adder.dim_size(d) == scores.dim_size(d),
                    InvalidArgument("adder dim ", d, " (", adder.dim_size(d),
                                    ") must be 1 or ", scores.dim_size(d)));
        astride[d] = adder.dim_size(d) == 1 ? 0 : stride;
        stride *= adder.dim_size(d);
      }
    }
    Tensor* z_out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, scores.shape(), &z_out));
    const bool dropout = attrs_.threshold > 0;
    Tensor* y_out = z_out;
    if (dropout) {
      OP_REQUIRES_OK(ctx, ctx->allocate_output(1, scores.shape(), &y_out));
    } else {
      ctx->set_output(1, *z_out);  // no dropout (inference): z is y, one buffer, one write
    }
    const int64_t heads = scores.dim_size(1), queries = scores.dim_size(2);
    const int64_t cols = scores.dim_size(3);
    const int64_t rows = cols == 0 ? 0 : scores.NumElements() / cols;
    const T* s = scores.flat<T>().data();
    const float* a = has_adder ? adder.flat<float>().data() : nullptr;
    T* z = z_out->flat<T>().data();
    T* y = y_out->flat<T>().data();
    const uint64_t key = KeyFromSeed(ctx);
    const int threshold = attrs_.threshold;
    const float scale = attrs_.scale;

    ForEachRowBlock(ctx, rows, cols, [&](int64_t begin, int64_t end) {
      // Eigen's own (aligned) storage: its vectorized reductions then sum in one fixed order,
      // whatever the address, so results are deterministic.
      Eigen::ArrayXf row(cols);
      float* buf = row.data();
      std::vector<uint8_t> keep(cols);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t base = r * cols;
        const T* sr = s + base;
        if (a != nullptr) {
          const int64_t t = r % queries, n = (r / queries) % heads, b = r / (queries * heads);
          const float* ar = a + b * astride[0] + n * astride[1] + t * astride[2];
          for (int64_t j = 0; j < cols; ++j) buf[j] = Io<T>::Load(sr, j) + ar[j];
        } else {
          for (int64_t j = 0; j < cols; ++j) buf[j] = Io<T>::Load(sr, j);
        }
        const float mx = row.maxCoeff();
        row = (row - mx).exp();  // Eigen's vectorized exp
        const float inv = 1.0f / row.sum();
        T* zr = z + base;
        if (!dropout) {
          for (int64_t j = 0; j < cols; ++j) Io<T>::Store(zr, j, buf[j] * inv);
          continue;
        }
        KeepFlags(key, base, cols, threshold, keep.data());
        T* yr = y + base;
        for (int64_t j = 0; j < cols; ++j) {
          const float p = buf[j] * inv;
          Io<T>::Store(yr, j, p);
          Io<T>::Store(zr, j, p * (static_cast<float>(keep[j]) * scale));
        }
      }
    });
  }

 private:
  DropoutAttrs attrs_;
};

// ds = z·dz - y·Σ(z·dz) over the last axis, z = y·keep·scale with the forward pass' mask.
template <typename T>
class MaskedSoftmaxDropoutGradOp : public OpKernel {
 public:
  explicit MaskedSoftmaxDropoutGradOp(OpKernelConstruction* ctx) : OpKernel(ctx), attrs_(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dz = ctx->input(0);
    const Tensor& y = ctx->input(1);
    OP_REQUIRES(ctx, dz.shape() == y.shape() && y.dims() >= 1,
                InvalidArgument("dz ", dz.shape().DebugString(), " and y ",
                                y.shape().DebugString(), " must have one shape of rank >= 1"));
    OP_REQUIRES(ctx, ::tensorflow::TensorShapeUtils::IsScalar(ctx->input(2).shape()),
                InvalidArgument("seed must be a scalar"));
    Tensor* ds_out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, y.shape(), &ds_out));
    const int64_t cols = y.dim_size(y.dims() - 1);
    const int64_t rows = cols == 0 ? 0 : y.NumElements() / cols;
    const T* g = dz.flat<T>().data();
    const T* p = y.flat<T>().data();
    T* ds = ds_out->flat<T>().data();
    const uint64_t key = KeyFromSeed(ctx);
    const int threshold = attrs_.threshold;
    const float scale = attrs_.scale;

    ForEachRowBlock(ctx, rows, cols, [&](int64_t begin, int64_t end) {
      Eigen::ArrayXf zdz(cols);  // aligned, as in the forward pass: a deterministic sum
      float* buf = zdz.data();
      std::vector<uint8_t> keep(cols);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t base = r * cols;
        KeepFlags(key, base, cols, threshold, keep.data());
        const T* gr = g + base;
        const T* pr = p + base;
        for (int64_t j = 0; j < cols; ++j) {  // z·dz
          buf[j] = Io<T>::Load(pr, j) * (static_cast<float>(keep[j]) * scale) * Io<T>::Load(gr, j);
        }
        const float total = zdz.sum();
        T* dr = ds + base;
        for (int64_t j = 0; j < cols; ++j) {
          Io<T>::Store(dr, j, buf[j] - Io<T>::Load(pr, j) * total);
        }
      }
    });
  }

 private:
  DropoutAttrs attrs_;
};

// GELU, tanh form (BERT's): y = 0.5·x·(1 + tanh(c·(x + 0.044715·x³))), c = √(2/π), computed in
// float32 one element at a time (TensorFlow runs it as ~9 passes over [tokens, intermediate] with
// casts under mixed bfloat16). The gradient kernel takes dy and x and recomputes tanh.
constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kCubic = 0.044715f;

// c·(x + 0.044715·x³), the argument of GELU's tanh, as an Eigen expression.
template <typename A>
auto TanhArgument(const A& a) {
  return a * (kSqrt2OverPi + (kSqrt2OverPi * kCubic) * a.square());
}

template <typename T>
class GeluTanhOp : public OpKernel {
 public:
  explicit GeluTanhOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& x = ctx->input(0);
    Tensor* y_out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &y_out));
    const T* in = x.flat<T>().data();
    T* out = y_out->flat<T>().data();
    ForEachChunk(ctx, x.NumElements(), [&](int64_t begin, int64_t end) {
      Eigen::ArrayXf v(kChunk), t(kChunk), r(kChunk);  // per thread, reused by every chunk
      for (int64_t c = begin; c < end; c += kChunk) {
        const int64_t n = std::min<int64_t>(kChunk, end - c);
        for (int64_t j = 0; j < n; ++j) v[j] = Io<T>::Load(in + c, j);
        auto a = v.head(n);
        t.head(n) = TanhArgument(a).tanh();
        r.head(n) = 0.5f * a * (1.0f + t.head(n));
        for (int64_t j = 0; j < n; ++j) Io<T>::Store(out + c, j, r[j]);
      }
    });
  }
};

template <typename T>
class GeluTanhGradOp : public OpKernel {
 public:
  explicit GeluTanhGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dy = ctx->input(0);
    const Tensor& x = ctx->input(1);
    OP_REQUIRES(ctx, dy.shape() == x.shape(),
                InvalidArgument("dy ", dy.shape().DebugString(), " and x ",
                                x.shape().DebugString(), " must have one shape"));
    Tensor* dx_out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, x.shape(), &dx_out));
    const T* g = dy.flat<T>().data();
    const T* in = x.flat<T>().data();
    T* out = dx_out->flat<T>().data();
    ForEachChunk(ctx, x.NumElements(), [&](int64_t begin, int64_t end) {
      // Per thread, reused by every chunk.
      Eigen::ArrayXf v(kChunk), d(kChunk), t(kChunk), r(kChunk);
      for (int64_t c = begin; c < end; c += kChunk) {
        const int64_t n = std::min<int64_t>(kChunk, end - c);
        for (int64_t j = 0; j < n; ++j) {
          v[j] = Io<T>::Load(in + c, j);
          d[j] = Io<T>::Load(g + c, j);
        }
        auto a = v.head(n);
        t.head(n) = TanhArgument(a).tanh();
        auto th = t.head(n);
        // d/dx = 0.5·(1 + t) + 0.5·x·(1 - t²)·c·(1 + 3·0.044715·x²)
        r.head(n) = d.head(n) * (0.5f + 0.5f * th + 0.5f * a * (1.0f - th.square()) *
                                 (kSqrt2OverPi + (3.0f * kSqrt2OverPi * kCubic) * a.square()));
        for (int64_t j = 0; j < n; ++j) Io<T>::Store(out + c, j, r[j]);
      }
    });
  }
};

}  // namespace

// Shape function: every output has the shape of input I.
template <int I>
::tensorflow::Status OutputsShapedLikeInput(::tensorflow::shape_inference::InferenceContext* c) {
  for (int o = 0; o < c->num_outputs(); ++o) c->set_output(o, c->input(I));
  return ::tensorflow::OkStatus();
}

REGISTER_OP("RealmMaskedSoftmaxDropout")
    .Input("scores: T")
    .Input("adder: float")
    .Input("seed: int64")
    .Output("z: T")
    .Output("y: T")
    .Attr("T: {float, bfloat16}")
    .Attr("threshold: int")
    .Attr("scale: float")
    .SetShapeFn(OutputsShapedLikeInput<0>);

REGISTER_OP("RealmMaskedSoftmaxDropoutGrad")
    .Input("dz: T")
    .Input("y: T")
    .Input("seed: int64")
    .Output("ds: T")
    .Attr("T: {float, bfloat16}")
    .Attr("threshold: int")
    .Attr("scale: float")
    .SetShapeFn(OutputsShapedLikeInput<1>);

REGISTER_OP("RealmGeluTanh")
    .Input("x: T")
    .Output("y: T")
    .Attr("T: {float, bfloat16}")
    .SetShapeFn(OutputsShapedLikeInput<0>);

REGISTER_OP("RealmGeluTanhGrad")
    .Input("dy: T")
    .Input("x: T")
    .Output("dx: T")
    .Attr("T: {float, bfloat16}")
    .SetShapeFn(OutputsShapedLikeInput<1>);

#define REALM_REGISTER(T)                                                                 \
  REGISTER_KERNEL_BUILDER(                                                                \
      Name("RealmMaskedSoftmaxDropout").Device(DEVICE_CPU).TypeConstraint<T>("T"),        \
      MaskedSoftmaxDropoutOp<T>);                                                         \
  REGISTER_KERNEL_BUILDER(                                                                \
      Name("RealmMaskedSoftmaxDropoutGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"),    \
      MaskedSoftmaxDropoutGradOp<T>);                                                     \
  REGISTER_KERNEL_BUILDER(Name("RealmGeluTanh").Device(DEVICE_CPU).TypeConstraint<T>("T"),  \
                          GeluTanhOp<T>);                                                   \
  REGISTER_KERNEL_BUILDER(                                                                \
      Name("RealmGeluTanhGrad").Device(DEVICE_CPU).TypeConstraint<T>("T"), GeluTanhGradOp<T>);
REALM_REGISTER(float)
REALM_REGISTER(Eigen::bfloat16)
#undef REALM_REGISTER

}  // namespace realm_tf2
