// Y[M, N] = X[M, K] @ W^T for few rows M (decode steps), with W packed once at load time into
// strips of 16 output features, [ceil(N / 16), K, 16] (`prosocial_jax.kernels.rows_matmul.pack`).
//
// Why: XLA:CPU (and MKL) run a product of 2 to 32 rows as a library GEMM that takes 1.8-2.4x
// the time of reading the weights once (benchmarks/row_products.py). Here each strip is one
// contiguous stream of K x 16 floats; for every group of up to 6 rows, 12 AVX2 accumulators hold
// the strip's 16 outputs while the stream passes, so the weights are read from memory once per
// product and from L1 for each further group (see RunStrips). Strips are split over XLA's
// intra-op thread pool. Built on first use by `rows_matmul.py` (g++ -O3 -mavx2 -mfma).
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kStrip = 16;  // output features per packed strip: two AVX2 registers

// One row's step: broadcast its input at k, accumulate into its two output registers.
#define PROSOCIAL_ROW_STEP(i)                                      \
  if constexpr (R > i) {                                           \
    const __m256 xr = _mm256_broadcast_ss(x + i * k_size + k);     \
    lo##i = _mm256_fmadd_ps(xr, w_lo, lo##i);                      \
    hi##i = _mm256_fmadd_ps(xr, w_hi, hi##i);                      \
  }
#define PROSOCIAL_ROW_LOAD(i)                                      \
  if constexpr (R > i) {                                           \
    if (!first) {                                                  \
      lo##i = _mm256_loadu_ps(y + i * n_size);                     \
      hi##i = _mm256_loadu_ps(y + i * n_size + 8);                 \
    }                                                              \
  }
#define PROSOCIAL_ROW_STORE(i)                                     \
  if constexpr (R > i) {                                           \
    _mm256_storeu_ps(y + i * n_size, lo##i);                       \
    _mm256_storeu_ps(y + i * n_size + 8, hi##i);                   \
  }

// Up to 6 rows against k in [k0, k1) of one strip: 12 accumulators, 2 weight registers and a
// broadcast, 15 of the 16 AVX2 registers. Named registers, not an array: gcc spills an array of
// 12. The accumulators start from zero at k0 == 0 and from the output's partial sums after.
// `ahead`, when set, is prefetched into L2 one cache line per k (see RunStrips).
template <int R>
inline void Group(const float* x, int64_t k_size, int64_t k0, int64_t k1, const float* strip,
                  float* y, int64_t n_size, const float* ahead) {
  const bool first = k0 == 0;
  __m256 lo0 = _mm256_setzero_ps(), hi0 = lo0, lo1 = lo0, hi1 = lo0, lo2 = lo0, hi2 = lo0,
         lo3 = lo0, hi3 = lo0, lo4 = lo0, hi4 = lo0, lo5 = lo0, hi5 = lo0;
  PROSOCIAL_ROW_LOAD(0) PROSOCIAL_ROW_LOAD(1) PROSOCIAL_ROW_LOAD(2)
  PROSOCIAL_ROW_LOAD(3) PROSOCIAL_ROW_LOAD(4) PROSOCIAL_ROW_LOAD(5)
  const float* w = strip + k0 * kStrip;
  for (int64_t k = k0; k < k1; ++k, w += kStrip) {
    const __m256 w_lo = _mm256_loadu_ps(w), w_hi = _mm256_loadu_ps(w + 8);
    if (ahead != nullptr) {
      _mm_prefetch(reinterpret_cast<const char*>(ahead + (k - k0) * kStrip), _MM_HINT_T1);
    }
    PROSOCIAL_ROW_STEP(0) PROSOCIAL_ROW_STEP(1) PROSOCIAL_ROW_STEP(2)
    PROSOCIAL_ROW_STEP(3) PROSOCIAL_ROW_STEP(4) PROSOCIAL_ROW_STEP(5)
  }
  PROSOCIAL_ROW_STORE(0) PROSOCIAL_ROW_STORE(1) PROSOCIAL_ROW_STORE(2)
  PROSOCIAL_ROW_STORE(3) PROSOCIAL_ROW_STORE(4) PROSOCIAL_ROW_STORE(5)
}

constexpr int64_t kGroup = 6;       // rows per group
constexpr int64_t kBlock = 64;      // k per block when there are several groups: 4 KB of strip
constexpr int64_t kAhead = 512;     // prefetch distance in k (32 KB of the weight stream)

// Strips [first, last) of the output for all rows. One group (up to 6 rows) streams each strip
// once, bound by memory; the hardware prefetcher keeps up. With several groups, each group's
// pass over a whole strip would leave memory idle while the later groups compute from cache,
// and the first group's pass would wait on memory: instead the strip is taken in blocks of 64 k
// that every group passes over while it is in L1, and the first group prefetches the stream
// 32 KB ahead, so reading and computing overlap (benchmarks/row_products.py: 8 rows from 1.5x
// to about 1.1x the read time of the weights, 16 rows from 2.0x to about 1.5x).
void RunStrips(const float* x, int64_t m_size, int64_t k_size, const float* w, float* y,
               int64_t n_size, int64_t first, int64_t last) {
  const bool blocked = m_size > kGroup;
  const int64_t block = blocked ? kBlock : k_size;
  const float* end = w + last * k_size * kStrip;  // this part's strips: prefetch stays within
  for (int64_t s = first; s < last; ++s) {
    const float* strip = w + s * k_size * kStrip;
    float* out = y + s * kStrip;
    for (int64_t k0 = 0; k0 < k_size; k0 += block) {
      const int64_t k1 = std::min(k_size, k0 + block);
      const float* ahead = strip + (k0 + kAhead) * kStrip;
      if (!blocked || ahead + (k1 - k0) * kStrip > end) ahead = nullptr;
      for (int64_t r = 0; r < m_size; r += kGroup) {
        const float* xr = x + r * k_size;
        float* yr = out + r * n_size;
        const float* prefetch = r == 0 ? ahead : nullptr;
        switch (std::min(kGroup, m_size - r)) {
          case 6: Group<6>(xr, k_size, k0, k1, strip, yr, n_size, prefetch); break;
          case 5: Group<5>(xr, k_size, k0, k1, strip, yr, n_size, prefetch); break;
          case 4: Group<4>(xr, k_size, k0, k1, strip, yr, n_size, prefetch); break;
          case 3: Group<3>(xr, k_size, k0, k1, strip, yr, n_size, prefetch); break;
          case 2: Group<2>(xr, k_size, k0, k1, strip, yr, n_size, prefetch); break;
          default: Group<1>(xr, k_size, k0, k1, strip, yr, n_size, prefetch); break;
        }
      }
    }
  }
}

ffi::Error RowsMatmulImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y) {
  const auto x_dims = x.dimensions(), w_dims = w.dimensions(), y_dims = y->dimensions();
  if (x_dims.size() != 2 || w_dims.size() != 3 || w_dims[2] != kStrip || w_dims[1] != x_dims[1] ||
      y_dims.size() != 2 || y_dims[0] != x_dims[0] || y_dims[1] != w_dims[0] * kStrip) {
    return ffi::Error::InvalidArgument(
        "rows_matmul: expected x [M, K], packed weights [S, K, 16] and output [M, S * 16]");
  }
  const int64_t m_size = x_dims[0], k_size = x_dims[1], strips = w_dims[0];
  const int64_t n_size = strips * kStrip;
  const float* xp = x.typed_data();
  const float* wp = w.typed_data();
  float* yp = y->typed_data();
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  if (threads == 1 || strips < 2) {
    RunStrips(xp, m_size, k_size, wp, yp, n_size, 0, strips);
    return ffi::Error::Success();
  }
  // Parts are claimed from a counter, by this thread and by pool tasks alike, and this thread
  // waits only for parts another thread has claimed (so is running). It never waits for a task
  // still queued: XLA runs independent products concurrently on the same pool, and a thread
  // blocked on a queued task behind them would deadlock. Tasks that start after every part is
  // claimed return at once; the state they touch is shared, not on this stack.
  struct Work {
    std::atomic<int64_t> next{0}, finished{0};
    std::mutex mutex;
    std::condition_variable done;
  };
  const int64_t parts = std::min<int64_t>(strips, 4 * threads);  // small parts balance the load
  auto work = std::make_shared<Work>();
  auto run = [=] {
    for (int64_t p; (p = work->next.fetch_add(1)) < parts;) {
      RunStrips(xp, m_size, k_size, wp, yp, n_size, strips * p / parts, strips * (p + 1) / parts);
      if (work->finished.fetch_add(1) + 1 == parts) {
        std::lock_guard<std::mutex> lock(work->mutex);
        work->done.notify_all();
      }
    }
  };
  for (int64_t t = 1; t < threads; ++t) pool.Schedule([run] { run(); });
  run();
  std::unique_lock<std::mutex> lock(work->mutex);
  work->done.wait(lock, [&] { return work->finished.load() == parts; });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ProsocialRowsMatmul, RowsMatmulImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// Whether this CPU runs the AVX2 / FMA instructions the kernel is built with.
extern "C" int prosocial_rows_matmul_supported() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
