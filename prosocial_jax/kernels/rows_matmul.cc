// Y[M, N] = X[M, K] @ W^T for few rows M (decode steps), with W packed once at load time into
// strips of 16 output features, [ceil(N / 16), K, 16] (`prosocial_jax.kernels.rows_matmul.pack`).
//
// Why: XLA:CPU (and MKL) run a product of 2 to 32 rows as a library GEMM that takes 1.8-2.4x
// the time of reading the weights once (benchmarks/row_products.py). Here each strip is one
// contiguous stream of K x 16 floats; for every group of up to 4 rows, 8 AVX2 accumulators hold
// the strip's 16 outputs while the stream passes, so the weights are read from memory once per
// product and from L1/L2 for each further group. Strips are split over XLA's intra-op thread
// pool. Built on first use by `rows_matmul.py` (g++ -O3 -mavx2 -mfma).
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

template <int R>
inline void Group(const float* x, int64_t k_size, const float* strip, float* y, int64_t n_size) {
  __m256 lo[R], hi[R];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) lo[r] = hi[r] = _mm256_setzero_ps();
  const float* w = strip;
  for (int64_t k = 0; k < k_size; ++k, w += kStrip) {
    const __m256 w_lo = _mm256_loadu_ps(w), w_hi = _mm256_loadu_ps(w + 8);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256 xr = _mm256_broadcast_ss(x + r * k_size + k);
      lo[r] = _mm256_fmadd_ps(xr, w_lo, lo[r]);
      hi[r] = _mm256_fmadd_ps(xr, w_hi, hi[r]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_ps(y + r * n_size, lo[r]);
    _mm256_storeu_ps(y + r * n_size + 8, hi[r]);
  }
}

// Strips [first, last) of the output for all rows. Four rows per group: 8 accumulators, 2
// weight registers and a broadcast leave registers free (six rows per group spilled and ran
// slower).
void RunStrips(const float* x, int64_t m_size, int64_t k_size, const float* w, float* y,
               int64_t n_size, int64_t first, int64_t last) {
  for (int64_t s = first; s < last; ++s) {
    const float* strip = w + s * k_size * kStrip;
    float* out = y + s * kStrip;
    int64_t r = 0;
    for (; r + 4 <= m_size; r += 4) Group<4>(x + r * k_size, k_size, strip, out + r * n_size, n_size);
    switch (m_size - r) {
      case 3: Group<3>(x + r * k_size, k_size, strip, out + r * n_size, n_size); break;
      case 2: Group<2>(x + r * k_size, k_size, strip, out + r * n_size, n_size); break;
      case 1: Group<1>(x + r * k_size, k_size, strip, out + r * n_size, n_size); break;
      default: break;
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
