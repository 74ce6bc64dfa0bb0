// C = op(A) @ op(B) (float32, row-major) through a single-threaded CBLAS sgemm (ILP64) per
// block: C is cut into `blocks` row (or column) blocks; all but the first are scheduled on
// XLA's own intra-op thread pool, the caller computes the first and then claims any block no
// pool thread has started (so no wait on a busy pool), then waits for the rest.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using Sgemm = void (*)(int, int, int, int64_t, int64_t, int64_t, float, const float*, int64_t,
                       const float*, int64_t, float, float*, int64_t);
using SetThreadsLocal = int (*)(int);
static Sgemm sgemm = nullptr;
static SetThreadsLocal set_threads_local = nullptr;

extern "C" void vae_jax_set_sgemm(void* fn, void* threads_fn) {
  sgemm = reinterpret_cast<Sgemm>(fn);
  set_threads_local = reinterpret_cast<SetThreadsLocal>(threads_fn);
}

struct Job {
  const float *pa, *pb;
  float* pc;
  bool ta, tb;
  int64_t batch, ra, ca, rb, cb, m, n, k, axis, blocks;
  std::unique_ptr<std::atomic<int>[]> claimed;
  std::atomic<int64_t> done{0};

  void Run(int64_t blk) {
    if (claimed[blk].exchange(1)) return;
    if (set_threads_local != nullptr) set_threads_local(1);
    int64_t size = axis == 0 ? m : n;
    int64_t lo = size * blk / blocks, hi = size * (blk + 1) / blocks;
    int64_t off_a = axis == 0 ? (ta ? lo : lo * ca) : 0;
    int64_t off_b = axis == 1 ? (tb ? lo * cb : lo) : 0;
    int64_t off_c = axis == 0 ? lo * n : lo;
    int64_t mp = axis == 0 ? hi - lo : m, np = axis == 1 ? hi - lo : n;
    for (int64_t i = 0; i < batch; ++i) {
      // CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112.
      sgemm(101, ta ? 112 : 111, tb ? 112 : 111, mp, np, k, 1.0f, pa + i * ra * ca + off_a, ca,
            pb + i * rb * cb + off_b, cb, 0.0f, pc + i * m * n + off_c, n);
    }
    done.fetch_add(1, std::memory_order_release);
  }
};

static ffi::Error GemmImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a,
                           ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> c, bool trans_a,
                           bool trans_b, int64_t blocks) {
  if (sgemm == nullptr) return ffi::Error::InvalidArgument("vae_jax gemm: no sgemm set");
  auto da = a.dimensions(), db = b.dimensions();
  size_t r = da.size();
  if (r < 2 || db.size() != r) return ffi::Error::InvalidArgument("gemm: equal ranks >= 2");
  auto job = std::make_shared<Job>();
  job->batch = 1;
  for (size_t i = 0; i + 2 < r; ++i) {
    if (da[i] != db[i]) return ffi::Error::InvalidArgument("gemm: batch dims differ");
    job->batch *= da[i];
  }
  job->pa = a.typed_data();
  job->pb = b.typed_data();
  job->pc = c->typed_data();
  job->ta = trans_a;
  job->tb = trans_b;
  job->ra = da[r - 2]; job->ca = da[r - 1]; job->rb = db[r - 2]; job->cb = db[r - 1];
  job->m = trans_a ? job->ca : job->ra;
  job->k = trans_a ? job->ra : job->ca;
  job->n = trans_b ? job->rb : job->cb;
  job->axis = job->m >= job->n ? 0 : 1;
  job->blocks = std::max<int64_t>(1, std::min<int64_t>(blocks, job->axis == 0 ? job->m : job->n));
  job->claimed.reset(new std::atomic<int>[job->blocks]);
  for (int64_t i = 0; i < job->blocks; ++i) job->claimed[i].store(0);
  for (int64_t i = 1; i < job->blocks; ++i) pool.Schedule([job, i] { job->Run(i); });
  for (int64_t i = 0; i < job->blocks; ++i) job->Run(i);
  while (job->done.load(std::memory_order_acquire) < job->blocks) std::this_thread::yield();
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(VaeJaxGemm, GemmImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b")
                                  .Attr<int64_t>("blocks"));
