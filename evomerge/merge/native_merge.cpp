// The fused task-vector merge of evomerge/merge/kernels.py (_body), in C++ for the CPU.
//
// Same per-entry formula, same order of float operations: d_i = E_i - B; keep rules (rank cut
// above a threshold, a second cut dropping outliers, DARE's counter-based hash mask); x_i =
// (w_i' d_i) * keep_i; then either the TIES election (one-sided sums P/N in expert order, sign
// of the plain sum, optional division by the agreeing weights) or a plain sum divided by W;
// out = B + lambda * merged. Entries are processed in blocks of BLOCK that stay in L1, each step a
// simple loop the compiler vectorizes; blocks are split over threads. Returns true when a value
// read (masking ops: every task vector) or written is NaN or inf.

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>  // streaming stores (x86 only; elsewhere stream_f32 is a plain copy)
#endif
#include <pthread.h>
#include <unistd.h>

namespace {

constexpr int64_t BLOCK = 512;
constexpr uint32_t MIX = 0x45D9F3Bu;
constexpr int64_t STREAM_NUMEL = int64_t(1) << 18;  // 1 MiB of float32: smaller outputs stay cached

enum Flags : int64_t {
  HAS_BASE = 1, RANK_LOW = 2, RANK_HIGH = 4, RANDOM = 8, CONSENSUS = 16, NORMALIZE = 32
};

enum class Kind { F32, BF16, F16, F64 };

Kind kind_of(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat32: return Kind::F32;
    case torch::kBFloat16: return Kind::BF16;
    case torch::kFloat16: return Kind::F16;
    case torch::kFloat64: return Kind::F64;
    default: TORCH_CHECK(false, "evomerge native merge: unsupported dtype ", t.scalar_type());
  }
}

struct Src {
  const void* ptr;
  Kind kind;
};

inline void load(const Src& s, int64_t start, int64_t len, float* dst) {
  switch (s.kind) {
    case Kind::F32: std::memcpy(dst, static_cast<const float*>(s.ptr) + start, len * sizeof(float)); break;
    case Kind::BF16: {
      const uint16_t* p = static_cast<const uint16_t*>(s.ptr) + start;
      for (int64_t j = 0; j < len; ++j) {
        uint32_t bits = static_cast<uint32_t>(p[j]) << 16;
        std::memcpy(dst + j, &bits, 4);
      }
      break;
    }
    case Kind::F16: {
      const c10::Half* p = static_cast<const c10::Half*>(s.ptr) + start;
      for (int64_t j = 0; j < len; ++j) dst[j] = static_cast<float>(p[j]);
      break;
    }
    case Kind::F64: {
      const double* p = static_cast<const double*>(s.ptr) + start;
      for (int64_t j = 0; j < len; ++j) dst[j] = static_cast<float>(p[j]);
      break;
    }
  }
}

inline uint32_t non_finite(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  return static_cast<uint32_t>((bits & 0x7F800000u) == 0x7F800000u);
}

// kernels.mix32: DARE keeps entry j of an expert when mix32(j ^ seed) < keep.
inline uint32_t mix32(uint32_t h) {
  h = ((h >> 16) ^ h) * MIX;
  h = ((h >> 16) ^ h) * MIX;
  return (h >> 16) ^ h;
}

// The optional base of a kernel call as a source: none (false), or checked against the expert's
// size and layout.
bool base_source(const c10::optional<torch::Tensor>& base, int64_t n, const char* fn, Src& out) {
  if (!base.has_value() || !base->defined()) return false;
  TORCH_CHECK(base->is_contiguous() && base->numel() == n && base->device().is_cpu(), fn,
              ": base must be flat, contiguous, on the CPU and of the expert's size");
  out = Src{base->data_ptr(), kind_of(*base)};
  return true;
}

// Writes len floats from an L1 block to dst with non-temporal (streaming) stores: a merged tensor
// far larger than the caches is written without first reading every destination line into
// the cache (write-allocate), the traffic a plain store adds on top of the bytes written.
// The head before a 64-byte boundary and the tail take plain stores; callers sfence once.
inline void stream_f32(float* __restrict dst, const float* __restrict src, int64_t len) {
  int64_t j = 0;
#if !(defined(__x86_64__) || defined(__i386__))
#elif defined(__AVX512F__)
  for (; j < len && (reinterpret_cast<uintptr_t>(dst + j) & 63) != 0; ++j) dst[j] = src[j];
  for (; j + 16 <= len; j += 16) _mm512_stream_ps(dst + j, _mm512_loadu_ps(src + j));
#elif defined(__AVX__)
  for (; j < len && (reinterpret_cast<uintptr_t>(dst + j) & 31) != 0; ++j) dst[j] = src[j];
  for (; j + 8 <= len; j += 8) _mm256_stream_ps(dst + j, _mm256_loadu_ps(src + j));
#elif defined(__SSE__)
  for (; j < len && (reinterpret_cast<uintptr_t>(dst + j) & 15) != 0; ++j) dst[j] = src[j];
  for (; j + 4 <= len; j += 4) _mm_stream_ps(dst + j, _mm_loadu_ps(src + j));
#endif
  for (; j < len; ++j) dst[j] = src[j];
}

inline void stream_fence() {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__SSE__)
  _mm_sfence();
#endif
}

// Stores the block and returns true if a stored value is NaN or inf (read back as float, so an
// overflow of a narrower output type counts).
inline bool store(void* out, Kind kind, int64_t start, int64_t len, const float* src) {
  uint32_t bad = 0;
  switch (kind) {
    case Kind::F32: {
      float* p = static_cast<float*>(out) + start;
      for (int64_t j = 0; j < len; ++j) {
        p[j] = src[j];
        bad |= non_finite(src[j]);
      }
      break;
    }
    case Kind::BF16: {
      c10::BFloat16* p = static_cast<c10::BFloat16*>(out) + start;
      for (int64_t j = 0; j < len; ++j) {
        p[j] = c10::BFloat16(src[j]);
        bad |= static_cast<uint32_t>((p[j].x & 0x7F80u) == 0x7F80u);
      }
      break;
    }
    case Kind::F16: {
      c10::Half* p = static_cast<c10::Half*>(out) + start;
      for (int64_t j = 0; j < len; ++j) {
        p[j] = c10::Half(src[j]);
        bad |= static_cast<uint32_t>((p[j].x & 0x7C00u) == 0x7C00u);
      }
      break;
    }
    case Kind::F64: {
      double* p = static_cast<double*>(out) + start;
      for (int64_t j = 0; j < len; ++j) {
        p[j] = static_cast<double>(src[j]);
        bad |= non_finite(src[j]);
      }
      break;
    }
  }
  return bad != 0;
}

struct Expert {
  Src src;
  float scale, weight, low_t, high_t;
  int64_t low_cut, high_cut;  // rank cuts' index bounds at their thresholds (used by tie fix-ups)
  uint32_t seed, keep;
  bool keep_all;  // keep >= 2**32: the DARE mask keeps everything
};

struct Job {
  Src base;
  bool has_base;
  std::vector<Expert> experts;
  int64_t flags;
  float lam, divisor;
  void* out;
  Kind out_kind;
  bool stream = false;  // float32 output written with non-temporal stores (large tensors)
};


// Persistent helper threads (starting a thread per call costs ~80 us, as much as merging 64K
// entries). Never destroyed: joinable threads must not meet static destructors at exit. A forked
// child starts a fresh pool (pthread_atfork): the parent's threads do not exist there.
class Pool {
 public:
  static Pool& get() {
    static std::once_flag registered;
    std::call_once(registered, [] { pthread_atfork(nullptr, nullptr, [] { current() = nullptr; }); });
    static std::mutex creating;  // two threads' first calls (a merge, an index build) make one pool
    std::lock_guard<std::mutex> one(creating);
    Pool*& pool = current();
    if (pool == nullptr) pool = new Pool();  // a forked child's old pool leaks on purpose
    return *pool;
  }

  // Runs f(0) .. f(n - 1), f(0) on the caller's thread; one caller at a time. Waits for every
  // part even when one throws, then rethrows the first exception.
  void run(int n, const std::function<void(int)>& f) {
    std::lock_guard<std::mutex> one_caller(calls_);
    {
      std::unique_lock<std::mutex> lock(m_);
      while (static_cast<int>(workers_.size()) < n - 1) {
        const int id = static_cast<int>(workers_.size()) + 1;
        workers_.emplace_back([this, id] { loop(id); });
      }
      task_ = &f;
      error_ = nullptr;
      active_ = n;
      pending_ = n - 1;
      left_.store(n - 1, std::memory_order_relaxed);
      ++generation_;
      published_.store(generation_, std::memory_order_release);
    }
    wake_.notify_all();
    std::exception_ptr mine;
    try {
      f(0);
    } catch (...) {
      mine = std::current_exception();
    }
    for (int spin = 0; spin < SPINS && left_.load(std::memory_order_acquire) != 0; ++spin) pause();
    std::unique_lock<std::mutex> lock(m_);
    done_.wait(lock, [this] { return pending_ == 0; });
    task_ = nullptr;
    if (mine) std::rethrow_exception(mine);
    if (error_) std::rethrow_exception(error_);
  }

 private:
  Pool() = default;

  static Pool*& current() {
    static Pool* pool = nullptr;
    return pool;
  }

  // A helper spins briefly before sleeping, and so does the caller before waiting: a search merges
  // one tensor after another with a few tens of microseconds of Python between them, about what a
  // condition-variable wake-up costs here.
  static constexpr int SPINS = 4096;

  static inline void pause() {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#endif
  }

  void loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      for (int spin = 0; spin < SPINS && published_.load(std::memory_order_acquire) == seen; ++spin) pause();
      std::unique_lock<std::mutex> lock(m_);
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (id >= active_) continue;
      const std::function<void(int)>* f = task_;
      lock.unlock();
      std::exception_ptr err;
      try {
        (*f)(id);
      } catch (...) {
        err = std::current_exception();
      }
      lock.lock();
      if (err && !error_) error_ = err;
      left_.fetch_sub(1, std::memory_order_release);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::mutex calls_, m_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* task_ = nullptr;
  std::exception_ptr error_;
  int active_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  std::atomic<uint64_t> published_{0};  // generation_, readable without the lock (spinning)
  std::atomic<int> left_{0};  // pending_, likewise
};

// Accumulators of one block: the TIES one-sided sums and weights, or the plain sum.
struct Acc {
  alignas(64) float pos[BLOCK], neg[BLOCK], total[BLOCK], wpos[BLOCK], wneg[BLOCK];
  float* merged = pos;  // plain sums reuse the first array
};

// One expert's contribution to a block, fused into one loop: d = e - b, the keep rules, x = (w'd) k,
// then the accumulation. Flags are template arguments so each combination is a branch-free loop.
template <bool BASE, bool LOW, bool HIGH, bool RAND, bool CONS, bool NORM, bool FIRST>
uint32_t step(const Expert& ex, const float* __restrict e, const float* __restrict b, int64_t len,
              uint32_t first_index, Acc& acc) {
  constexpr bool MASKED = LOW || HIGH || RAND;
  const float scale = ex.scale, weight = ex.weight, lt = ex.low_t, ht = ex.high_t;
  const uint32_t seed = ex.seed, keep = ex.keep;
  float* __restrict pos = acc.pos;
  float* __restrict neg = acc.neg;
  float* __restrict total = acc.total;
  float* __restrict wpos = acc.wpos;
  float* __restrict wneg = acc.wneg;
  uint32_t bad = 0;
  for (int64_t j = 0; j < len; ++j) {
    const float d = BASE ? e[j] - b[j] : e[j];
    if (MASKED) bad |= non_finite(d);
    float k = 1.0f;
    if (LOW) k = (std::fabs(d) < lt) ? 0.0f : 1.0f;  // NaN stays in (as ~(a < t))
    if (HIGH) k = (std::fabs(d) >= ht) ? 0.0f : k;
    if (RAND) {
      k = (mix32((first_index + static_cast<uint32_t>(j)) ^ seed) < keep) ? k : 0.0f;
    }
    const float x = MASKED ? (d * scale) * k : d * scale;
    if (CONS) {
      const float p = x < 0.0f ? 0.0f : x, n = x > 0.0f ? 0.0f : x;
      pos[j] = FIRST ? p : pos[j] + p;
      neg[j] = FIRST ? n : neg[j] + n;
      total[j] = FIRST ? x : total[j] + x;
      if (NORM) {
        const float wp = x > 0.0f ? weight : 0.0f, wn = x < 0.0f ? weight : 0.0f;
        wpos[j] = FIRST ? wp : wpos[j] + wp;
        wneg[j] = FIRST ? wn : wneg[j] + wn;
      }
    } else if (!BASE && !MASKED) {  // linear: mergekit's float32 addcmul, a fused multiply-add per model
      pos[j] = FIRST ? x : std::fma(e[j], scale, pos[j]);
    } else {
      pos[j] = FIRST ? x : pos[j] + x;
    }
  }
  return bad;
}

using StepFn = uint32_t (*)(const Expert&, const float*, const float*, int64_t, uint32_t, Acc&);

template <bool BASE, bool LOW, bool HIGH, bool RAND, bool CONS, bool NORM>
StepFn pick_first(bool first) {
  return first ? &step<BASE, LOW, HIGH, RAND, CONS, NORM, true> : &step<BASE, LOW, HIGH, RAND, CONS, NORM, false>;
}

template <bool LOW, bool HIGH, bool RAND>
StepFn pick_combine(bool cons, bool norm, bool first) {
  if (!cons) return pick_first<true, LOW, HIGH, RAND, false, false>(first);
  if (!norm) return pick_first<true, LOW, HIGH, RAND, true, false>(first);
  return pick_first<true, LOW, HIGH, RAND, true, true>(first);
}

// The loop for one expert: no base only for plain sums (linear), which never mask.
StepFn pick(bool base, bool low, bool high, bool rand, bool cons, bool norm, bool first) {
  if (!base) return pick_first<false, false, false, false, false, false>(first);
  if (high) return rand ? pick_combine<true, true, true>(cons, norm, first) : pick_combine<true, true, false>(cons, norm, first);
  if (low) return rand ? pick_combine<true, false, true>(cons, norm, first) : pick_combine<true, false, false>(cons, norm, first);
  return rand ? pick_combine<false, false, true>(cons, norm, first) : pick_combine<false, false, false>(cons, norm, first);
}

// Prefetch the block PREFETCH_BLOCKS ahead in every stream (sources and output), so all of them are
// in flight at once: each step loop reads only one expert, and with the hardware prefetcher alone
// two threads reached ~1.3x one thread's bandwidth here (2x with this; the distance measured).
constexpr int64_t PREFETCH_BLOCKS = 4;

inline size_t elem_size(Kind k) {
  return k == Kind::F32 ? 4 : k == Kind::F64 ? 8 : 2;
}

inline void prefetch_range(const void* base, Kind kind, int64_t start, int64_t len, bool write) {
  const size_t es = elem_size(kind);
  const char* p = static_cast<const char*>(base) + static_cast<size_t>(start) * es;
  const size_t bytes = static_cast<size_t>(len) * es;
  for (size_t off = 0; off < bytes; off += 64) {
    if (write) __builtin_prefetch(p + off, 1, 3); else __builtin_prefetch(p + off, 0, 3);
  }
}

inline void prefetch_ahead(const Job& job, int64_t s, int64_t end, int64_t shift) {
  const int64_t at = s + PREFETCH_BLOCKS * BLOCK;
  if (at >= end) return;
  const int64_t len = std::min(BLOCK, end - at);
  if (job.has_base) prefetch_range(job.base.ptr, job.base.kind, at, len, false);
  for (const Expert& e : job.experts) prefetch_range(e.src.ptr, e.src.kind, at, len, false);
  if (!job.stream) prefetch_range(job.out, job.out_kind, at - shift, len, true);
}

// The TIES election of two experts, float32 throughout, in one loop per block: both task
// vectors, the one-sided sums, the election and the output per entry, with no accumulator
// round-trips (the common case of a search over two experts). Same operations, same order as
// the per-expert steps.
template <bool LOW, bool HIGH, bool RAND, bool NORM>
uint32_t pair_block(const Expert& x0, const Expert& x1, const float* __restrict e0, const float* __restrict e1,
                    const float* __restrict b, float* __restrict dst, int64_t len, uint32_t first, float lam) {
  constexpr bool MASKED = LOW || HIGH || RAND;
  const float lt0 = x0.low_t, lt1 = x1.low_t, ht0 = x0.high_t, ht1 = x1.high_t;
  const float s0 = x0.scale, s1 = x1.scale, w0 = x0.weight, w1 = x1.weight;
  const uint32_t seed0 = x0.seed, seed1 = x1.seed, keep0 = x0.keep, keep1 = x1.keep;
  uint32_t bad = 0;
  for (int64_t j = 0; j < len; ++j) {
    const float d0 = e0[j] - b[j], d1 = e1[j] - b[j];
    if (MASKED) bad |= non_finite(d0) | non_finite(d1);
    float k0 = 1.0f, k1 = 1.0f;
    if (LOW) {
      k0 = (std::fabs(d0) < lt0) ? 0.0f : 1.0f;
      k1 = (std::fabs(d1) < lt1) ? 0.0f : 1.0f;
    }
    if (HIGH) {
      k0 = (std::fabs(d0) >= ht0) ? 0.0f : k0;
      k1 = (std::fabs(d1) >= ht1) ? 0.0f : k1;
    }
    if (RAND) {
      const uint32_t idx = first + static_cast<uint32_t>(j);
      k0 = (mix32(idx ^ seed0) < keep0) ? k0 : 0.0f;
      k1 = (mix32(idx ^ seed1) < keep1) ? k1 : 0.0f;
    }
    const float y0 = MASKED ? (d0 * s0) * k0 : d0 * s0;
    const float y1 = MASKED ? (d1 * s1) * k1 : d1 * s1;
    const float pos = (y0 < 0.0f ? 0.0f : y0) + (y1 < 0.0f ? 0.0f : y1);
    const float neg = (y0 > 0.0f ? 0.0f : y0) + (y1 > 0.0f ? 0.0f : y1);
    const bool up = (y0 + y1) >= 0.0f;
    float m = up ? pos : neg;
    if (NORM) {
      const float wp = (y0 > 0.0f ? w0 : 0.0f) + (y1 > 0.0f ? w1 : 0.0f);
      const float wn = (y0 < 0.0f ? w0 : 0.0f) + (y1 < 0.0f ? w1 : 0.0f);
      const float div = up ? wp : wn;
      m = m / (div + (div == 0.0f ? 1.0f : 0.0f));
    }
    const float r = b[j] + lam * m;
    dst[j] = r;
    bad |= non_finite(r);
  }
  return bad;
}

using PairFn = uint32_t (*)(const Expert&, const Expert&, const float*, const float*, const float*, float*, int64_t,
                            uint32_t, float);

template <bool LOW, bool HIGH>
PairFn pick_pair_rand(bool rand, bool norm) {
  if (rand) return norm ? &pair_block<LOW, HIGH, true, true> : &pair_block<LOW, HIGH, true, false>;
  return norm ? &pair_block<LOW, HIGH, false, true> : &pair_block<LOW, HIGH, false, false>;
}

// The fused two-expert loop when it applies (float32 base, experts and output; TIES election;
// DARE either on for both or off for both), else nullptr.
PairFn pick_pair(const Job& job) {
  if (!(job.flags & CONSENSUS) || !job.has_base || job.experts.size() != 2 || job.out_kind != Kind::F32 ||
      job.base.kind != Kind::F32)
    return nullptr;
  const Expert &a = job.experts[0], &b = job.experts[1];
  if (a.src.kind != Kind::F32 || b.src.kind != Kind::F32) return nullptr;
  const bool rand = job.flags & RANDOM;
  if (rand && (a.keep_all || b.keep_all)) return nullptr;
  const bool norm = job.flags & NORMALIZE, low = job.flags & (RANK_LOW | RANK_HIGH), high = job.flags & RANK_HIGH;
  if (high) return pick_pair_rand<true, true>(rand, norm);
  if (low) return pick_pair_rand<true, false>(rand, norm);
  return pick_pair_rand<false, false>(rand, norm);
}

// Entries [begin, end) by their global indices (DARE bits, rank cuts), each written to the
// output at index - shift (0 for a whole tensor; a part's row lands at its place in the part).
bool run_range(const Job& job, int64_t begin, int64_t end, int64_t shift) {
  alignas(64) float b[BLOCK], conv[BLOCK], out[BLOCK];
  Acc acc;
  const bool consensus = job.flags & CONSENSUS, normalize = job.flags & NORMALIZE;
  const bool low = job.flags & RANK_LOW, high = job.flags & RANK_HIGH;
  const size_t n_exp = job.experts.size();
  std::vector<StepFn> steps;
  for (size_t i = 0; i < n_exp; ++i) {
    const bool rand = (job.flags & RANDOM) && !job.experts[i].keep_all;
    steps.push_back(pick(job.has_base, low || high, high, rand, consensus, normalize, i == 0));
  }
  uint32_t bad = 0;
  if (PairFn pair = pick_pair(job)) {
    const float* e0 = static_cast<const float*>(job.experts[0].src.ptr);
    const float* e1 = static_cast<const float*>(job.experts[1].src.ptr);
    const float* bp = static_cast<const float*>(job.base.ptr);
    float* dst = static_cast<float*>(job.out);
    for (int64_t s = begin; s < end; s += BLOCK) {
      const int64_t len = std::min(BLOCK, end - s);
      prefetch_ahead(job, s, end, shift);
      bad |= pair(job.experts[0], job.experts[1], e0 + s, e1 + s, bp + s, job.stream ? out : dst + (s - shift), len,
                  static_cast<uint32_t>(s), job.lam);
      if (job.stream) stream_f32(dst + (s - shift), out, len);
    }
    if (job.stream) stream_fence();
    return bad != 0;
  }
  for (int64_t s = begin; s < end; s += BLOCK) {
    const int64_t len = std::min(BLOCK, end - s);
    prefetch_ahead(job, s, end, shift);
    const float* bp = nullptr;
    if (job.has_base) {
      if (job.base.kind == Kind::F32) {
        bp = static_cast<const float*>(job.base.ptr) + s;
      } else {
        load(job.base, s, len, b);
        bp = b;
      }
    }
    for (size_t i = 0; i < n_exp; ++i) {
      const Src& src = job.experts[i].src;
      const float* ep = conv;
      if (src.kind == Kind::F32) {
        ep = static_cast<const float*>(src.ptr) + s;
      } else {
        load(src, s, len, conv);
      }
      bad |= steps[i](job.experts[i], ep, bp, len, static_cast<uint32_t>(s), acc);
    }
    float* merged = acc.pos;
    if (n_exp == 0) {
      for (int64_t j = 0; j < len; ++j) out[j] = 0.0f;
      merged = out;
    } else if (consensus) {
      if (normalize) {
        for (int64_t j = 0; j < len; ++j) {
          const bool up = acc.total[j] >= 0.0f;
          const float m = up ? acc.pos[j] : acc.neg[j], div = up ? acc.wpos[j] : acc.wneg[j];
          out[j] = m / (div + (div == 0.0f ? 1.0f : 0.0f));
        }
      } else {
        for (int64_t j = 0; j < len; ++j) out[j] = acc.total[j] >= 0.0f ? acc.pos[j] : acc.neg[j];
      }
      merged = out;
    } else if (job.divisor != 1.0f) {
      const float w = job.divisor;
      for (int64_t j = 0; j < len; ++j) out[j] = merged[j] / w;
      merged = out;
    }
    if (job.has_base && job.out_kind == Kind::F32) {  // straight into the output
      const float lam = job.lam;
      float* __restrict dst = job.stream ? conv : static_cast<float*>(job.out) + (s - shift);  // (conv: free by now)
      uint32_t flag = 0;
      for (int64_t j = 0; j < len; ++j) {
        dst[j] = bp[j] + lam * merged[j];
        flag |= non_finite(dst[j]);
      }
      bad |= flag;
      if (job.stream) stream_f32(static_cast<float*>(job.out) + (s - shift), conv, len);
      continue;
    }
    if (job.has_base) {
      const float lam = job.lam;
      for (int64_t j = 0; j < len; ++j) out[j] = bp[j] + lam * merged[j];
      merged = out;
    }
    if (job.stream) {
      uint32_t flag = 0;
      for (int64_t j = 0; j < len; ++j) flag |= non_finite(merged[j]);
      bad |= flag;
      stream_f32(static_cast<float*>(job.out) + (s - shift), merged, len);
      continue;
    }
    bad |= static_cast<uint32_t>(store(job.out, job.out_kind, s - shift, len, merged));
  }
  if (job.stream) stream_fence();
  return bad != 0;
}

// One entry recomputed with the exact rank-cut rules (kernels._keep_top / _drop_top with flat
// indices: at a threshold, only indices below the cut are inside), the same float operations in
// the same order as the block loops. The main pass keeps whole tie groups; the entries of split
// groups (tie fix-ups) are rewritten with this. Returns true when a value read or written is
// NaN or inf.
bool fix_entry(const Job& job, int64_t j, int64_t at) {
  const bool masked = job.flags & (RANK_LOW | RANK_HIGH | RANDOM);
  const bool low = job.flags & RANK_LOW, high = job.flags & RANK_HIGH, rand = job.flags & RANDOM;
  float bv = 0.0f;
  if (job.has_base) load(job.base, j, 1, &bv);
  float pos = 0.0f, neg = 0.0f, total = 0.0f, wpos = 0.0f, wneg = 0.0f;
  uint32_t bad = 0;
  for (size_t i = 0; i < job.experts.size(); ++i) {
    const Expert& ex = job.experts[i];
    float ev;
    load(ex.src, j, 1, &ev);
    const float d = job.has_base ? ev - bv : ev;
    if (masked) bad |= non_finite(d);
    const float a = std::fabs(d);
    float k = 1.0f;
    if (low) k = (a < ex.low_t || (a == ex.low_t && j >= ex.low_cut)) ? 0.0f : 1.0f;
    if (high) k = (a > ex.high_t || (a == ex.high_t && j < ex.high_cut)) ? 0.0f : k;
    if (rand && !ex.keep_all) k = (mix32(static_cast<uint32_t>(j) ^ ex.seed) < ex.keep) ? k : 0.0f;
    const float x = masked ? (d * ex.scale) * k : d * ex.scale;
    const bool first = i == 0;
    if (job.flags & CONSENSUS) {
      const float p = x < 0.0f ? 0.0f : x, q = x > 0.0f ? 0.0f : x;
      pos = first ? p : pos + p;
      neg = first ? q : neg + q;
      total = first ? x : total + x;
      const float wp = x > 0.0f ? ex.weight : 0.0f, wn = x < 0.0f ? ex.weight : 0.0f;
      wpos = first ? wp : wpos + wp;
      wneg = first ? wn : wneg + wn;
    } else {
      pos = first ? x : pos + x;
    }
  }
  float merged = pos;
  if (job.experts.empty()) {
    merged = 0.0f;
  } else if (job.flags & CONSENSUS) {
    const bool up = total >= 0.0f;
    merged = up ? pos : neg;
    if (job.flags & NORMALIZE) {
      const float div = up ? wpos : wneg;
      merged = merged / (div + (div == 0.0f ? 1.0f : 0.0f));
    }
  } else if (job.divisor != 1.0f) {
    merged = merged / job.divisor;
  }
  const float r = job.has_base ? bv + job.lam * merged : merged;
  return (bad != 0) | store(job.out, job.out_kind, at, 1, &r);
}

}  // namespace

namespace {

// The job of one merge call: ``n`` is the sources' entry count (the output's too, but for a part).
Job make_job(const torch::Tensor& out, const c10::optional<torch::Tensor>& base, const std::vector<torch::Tensor>& experts,
             const std::vector<double>& fp, const std::vector<int64_t>& ip, double lam, double divisor, int64_t flags,
             int64_t n) {
  TORCH_CHECK(out.is_contiguous() && out.device().is_cpu(), "out must be contiguous on the CPU");
  TORCH_CHECK(n < (int64_t(1) << 32), "tensors of 2**32 entries or more take the Python kernels");
  TORCH_CHECK(fp.size() == 4 * experts.size() && ip.size() == 5 * experts.size(), "fp/ip: 4 and 5 values per expert");
  Job job;
  job.has_base = base_source(base, n, "merge", job.base);
  const double* fr = fp.data();
  const int64_t* ir = ip.data();
  for (size_t i = 0; i < experts.size(); ++i) {
    const auto& e = experts[i];
    TORCH_CHECK(e.is_contiguous() && e.numel() == n && e.device().is_cpu(), "experts must be flat, contiguous, of one size, on the CPU");
    Expert x;
    x.src = Src{e.data_ptr(), kind_of(e)};
    x.scale = static_cast<float>(fr[4 * i]);  // float32 rows, as the torch kernels take them
    x.weight = static_cast<float>(fr[4 * i + 1]);
    x.low_t = static_cast<float>(fr[4 * i + 2]);
    x.high_t = static_cast<float>(fr[4 * i + 3]);
    x.low_cut = ir[5 * i];
    x.high_cut = ir[5 * i + 1];
    const int64_t keep = ir[5 * i + 2];
    x.keep_all = keep >= (int64_t(1) << 32);
    x.keep = static_cast<uint32_t>(x.keep_all ? 0 : keep);
    x.seed = static_cast<uint32_t>(ir[5 * i + 3] & 0xFFFFFFFF);
    job.experts.push_back(x);
  }
  job.flags = flags;
  job.lam = static_cast<float>(lam);
  job.divisor = static_cast<float>(divisor);
  job.out = out.data_ptr();
  job.out_kind = kind_of(out);
  job.stream = job.out_kind == Kind::F32 && out.numel() >= STREAM_NUMEL;
  return job;
}

void check_fixups(const std::vector<torch::Tensor>& fixups, int64_t n) {
  for (const auto& f : fixups) {
    TORCH_CHECK(f.scalar_type() == torch::kInt64 && f.is_contiguous() && f.dim() == 1 && f.device().is_cpu(),
                "fixups: flat int64 indices on the CPU");
    const int64_t* idx = f.data_ptr<int64_t>();
    for (int64_t q = 0; q < f.numel(); ++q) TORCH_CHECK(idx[q] >= 0 && idx[q] < n, "fixups: index out of range");
  }
}

}  // namespace

// out, base (undefined: none) and experts are flat and contiguous; fp: 4 values per expert (scale,
// weight, low threshold, high threshold; rounded to float32), ip: 5 per expert (low cut, high
// cut, keep, seed lo, seed hi); threads <= 1 runs on the caller's thread. The pass over all entries keeps whole tie
// groups at the rank cuts' thresholds; ``fixups`` (int64 flat indices) are the entries of split
// groups, rewritten afterwards with the exact rule (cut index bounds).
bool merge(torch::Tensor out, c10::optional<torch::Tensor> base, std::vector<torch::Tensor> experts,
           std::vector<double> fp, std::vector<int64_t> ip, double lam, double divisor, int64_t flags,
           int64_t threads, std::vector<torch::Tensor> fixups) {
  const int64_t n = out.numel();
  const Job job = make_job(out, base, experts, fp, ip, lam, divisor, flags, n);
  const int64_t blocks = (n + BLOCK - 1) / BLOCK;
  const int64_t t = std::max<int64_t>(1, std::min<int64_t>(threads, blocks / 64));
  check_fixups(fixups, n);
  std::atomic<bool> bad{false};
  {
    pybind11::gil_scoped_release release;
    if (t == 1) {
      bad = run_range(job, 0, n, 0);
    } else {
      const int64_t per = (blocks + t - 1) / t;
      Pool::get().run(static_cast<int>(t), [&](int w) {
        const int64_t lo = std::min(n, w * per * BLOCK), hi = std::min(n, (w + 1) * per * BLOCK);
        if (lo < hi && run_range(job, lo, hi, 0)) bad = true;
      });
    }
    bool fix_bad = false;
    for (const auto& f : fixups) {
      const int64_t* idx = f.data_ptr<int64_t>();
      for (int64_t q = 0; q < f.numel(); ++q) fix_bad |= fix_entry(job, idx[q], idx[q]);
    }
    if (fix_bad) bad = true;
  }
  return bad.load();
}

// A part of the merge (a tensor-parallel rank's slice): the sources' entries first + o * stride
// + [0, block) for o in [0, outer), each computed by its global index (the whole tensor's DARE
// bits and rank cuts), written either contiguously into out (outer * block entries) or, when
// out has the sources' size, in place (the rest of out untouched). ``fixups`` are the whole
// tensor's; those inside the part are rewritten at their place.
bool merge_part(torch::Tensor out, c10::optional<torch::Tensor> base, std::vector<torch::Tensor> experts,
                std::vector<double> fp, std::vector<int64_t> ip, double lam, double divisor, int64_t flags,
                int64_t threads, std::vector<torch::Tensor> fixups, int64_t outer, int64_t block, int64_t stride,
                int64_t first) {
  TORCH_CHECK(!experts.empty() || base.has_value(), "merge_part needs a source");
  const int64_t n = experts.empty() ? base->numel() : experts[0].numel();
  TORCH_CHECK(outer >= 0 && block >= 0 && stride >= block && first >= 0 &&
              (outer == 0 || first + (outer - 1) * stride + block <= n), "merge_part: the part lies outside the sources");
  const bool in_place = out.numel() == n;
  TORCH_CHECK(in_place || out.numel() == outer * block, "merge_part: out must hold outer * block entries or all n");
  const Job job = make_job(out, base, experts, fp, ip, lam, divisor, flags, n);
  check_fixups(fixups, n);
  const int64_t t = std::max<int64_t>(1, std::min<int64_t>(threads, (outer * block / BLOCK) / 64));
  std::atomic<bool> bad{false};
  {
    pybind11::gil_scoped_release release;
    // run_range prefetches only inside its range: the rows of a column part are short and apart,
    // so the row ``ahead`` rows on is prefetched at each row's start (about PREFETCH_BLOCKS blocks
    // of entries ahead, as inside a range)
    const int64_t ahead = std::max<int64_t>(1, PREFETCH_BLOCKS * BLOCK / std::max<int64_t>(1, block));
    const int64_t pf_len = std::min(block, PREFETCH_BLOCKS * BLOCK);
    auto rows = [&](int64_t lo, int64_t hi) {  // rows o in [lo, hi)
      bool b = false;
      for (int64_t o = lo; o < hi; ++o) {
        const int64_t begin = first + o * stride;
        if (o + ahead < hi) {
          const int64_t at = begin + ahead * stride;
          if (job.has_base) prefetch_range(job.base.ptr, job.base.kind, at, pf_len, false);
          for (const Expert& e : job.experts) prefetch_range(e.src.ptr, e.src.kind, at, pf_len, false);
          if (!job.stream) prefetch_range(job.out, job.out_kind, in_place ? at : (o + ahead) * block, pf_len, true);
        }
        b |= run_range(job, begin, begin + block, in_place ? 0 : begin - o * block);
      }
      return b;
    };
    if (outer == 1 && t > 1) {  // one contiguous row (a row part): split it among the threads
      const int64_t blocks = (block + BLOCK - 1) / BLOCK, per = (blocks + t - 1) / t;
      Pool::get().run(static_cast<int>(t), [&](int w) {
        const int64_t lo = std::min(block, w * per * BLOCK), hi = std::min(block, (w + 1) * per * BLOCK);
        if (lo < hi && run_range(job, first + lo, first + hi, in_place ? 0 : first)) bad = true;
      });
    } else if (t > 1) {
      const int64_t per = (outer + t - 1) / t;
      Pool::get().run(static_cast<int>(t), [&](int w) {
        const int64_t lo = std::min(outer, w * per), hi = std::min(outer, (w + 1) * per);
        if (lo < hi && rows(lo, hi)) bad = true;
      });
    } else {
      bad = rows(0, outer);
    }
    bool fix_bad = false;
    for (const auto& f : fixups) {
      const int64_t* idx = f.data_ptr<int64_t>();
      for (int64_t q = 0; q < f.numel(); ++q) {
        const int64_t r = idx[q] - first;
        if (r < 0 || r / stride >= outer || r % stride >= block) continue;
        fix_bad |= fix_entry(job, idx[q], in_place ? idx[q] : (r / stride) * block + r % stride);
      }
    }
    if (fix_bad) bad = true;
  }
  return bad.load();
}

namespace {

// kernels._bracket_body for a range: code = [a >= q_0] + #{j >= 1: a > q_j} (0 when past q_S),
// counts[0] = #(a >= q_0), counts[j] = #(a > q_j).
void bracket_range(const Src& e, const Src* b, const float* q, int64_t edges, uint8_t* codes, int64_t begin,
                   int64_t end, int64_t* counts) {
  alignas(64) float eb[BLOCK], bb[BLOCK], a[BLOCK];
  alignas(64) int32_t code[BLOCK];
  for (int64_t s = begin; s < end; s += BLOCK) {
    const int64_t len = std::min(BLOCK, end - s);
    const float* ep = eb;
    if (e.kind == Kind::F32) ep = static_cast<const float*>(e.ptr) + s; else load(e, s, len, eb);
    if (b != nullptr) {
      const float* bp = bb;
      if (b->kind == Kind::F32) bp = static_cast<const float*>(b->ptr) + s; else load(*b, s, len, bb);
      for (int64_t j = 0; j < len; ++j) a[j] = std::fabs(ep[j] - bp[j]);
    } else {
      for (int64_t j = 0; j < len; ++j) a[j] = std::fabs(ep[j]);
    }
    int32_t c0 = 0;
    const float q0 = q[0];
    for (int64_t j = 0; j < len; ++j) {
      code[j] = a[j] >= q0 ? 1 : 0;
      c0 += code[j];
    }
    counts[0] += c0;
    for (int64_t k = 1; k < edges; ++k) {
      const float qk = q[k];
      int32_t ck = 0;
      for (int64_t j = 0; j < len; ++j) {
        const int32_t above = a[j] > qk ? 1 : 0;
        code[j] += above;
        ck += above;
      }
      counts[k] += ck;
    }
    for (int64_t j = 0; j < len; ++j) codes[s + j] = static_cast<uint8_t>(code[j] < edges ? code[j] : 0);
  }
}

}  // namespace

// Fills codes (uint8, at least numel) and returns the int64 counts (see kernels.bracket).
torch::Tensor bracket(torch::Tensor codes, torch::Tensor expert, c10::optional<torch::Tensor> base,
                      torch::Tensor edges, int64_t threads) {
  const int64_t n = expert.numel();
  TORCH_CHECK(expert.is_contiguous() && codes.is_contiguous() && codes.scalar_type() == torch::kUInt8 &&
              codes.numel() >= n, "bracket: contiguous expert and a uint8 codes buffer of its size");
  auto q = edges.to(torch::kFloat32).contiguous();
  const int64_t m = q.numel();
  TORCH_CHECK(m >= 1 && m < 255, "bracket: 1 to 254 edges");
  const Src e{expert.data_ptr(), kind_of(expert)};
  Src bs{};
  const bool has_base = base_source(base, n, "bracket", bs);
  const float* qp = q.data_ptr<float>();
  uint8_t* cp = codes.data_ptr<uint8_t>();
  const int64_t blocks = (n + BLOCK - 1) / BLOCK;
  const int64_t t = std::max<int64_t>(1, std::min<int64_t>(threads, blocks / 64));
  std::vector<int64_t> counts(static_cast<size_t>(t * m), 0);
  {
    pybind11::gil_scoped_release release;
    const int64_t per = (blocks + t - 1) / t;
    auto part = [&](int w) {
      const int64_t lo = std::min(n, w * per * BLOCK), hi = std::min(n, (w + 1) * per * BLOCK);
      if (lo < hi) bracket_range(e, has_base ? &bs : nullptr, qp, m, cp, lo, hi, counts.data() + w * m);
    };
    if (t == 1) part(0); else Pool::get().run(static_cast<int>(t), part);
  }
  auto out = torch::zeros({m}, torch::kInt64);
  int64_t* op = out.data_ptr<int64_t>();
  for (int64_t w = 0; w < t; ++w)
    for (int64_t k = 0; k < m; ++k) op[k] += counts[w * m + k];
  return out;
}

namespace {

// |e - b| (|e| without a base) at flat index j as the merge computes it, NaN mapped to -1 (it ranks
// below every magnitude, as in sparsify._cut_among).
inline float rank_magnitude(const Src& e, const Src* b, int64_t j) {
  float ev, bv = 0.0f;
  load(e, j, 1, &ev);
  if (b != nullptr) load(*b, j, 1, &bv);
  const float a = std::fabs(b != nullptr ? ev - bv : ev);
  return std::isnan(a) ? -1.0f : a;
}

}  // namespace

// The exact cut of the k largest magnitudes (1 <= k < numel) read from a rank order (rank_order:
// ascending magnitude, equal magnitudes by descending index): the k-th largest sits at slot
// n - k; the members of its tie group below that slot are the ties the cut leaves out (not
// listed when the threshold is 0: see sparsify.RankCut). Returns
// (threshold, cut, outside ties ascending): cut = -1 when the whole tie group is in (ALL_TIES),
// else one past the largest index taken.
std::tuple<double, int64_t, torch::Tensor> cut_sorted(torch::Tensor expert, c10::optional<torch::Tensor> base,
                                                      torch::Tensor order, int64_t k) {
  const int64_t n = expert.numel();
  TORCH_CHECK(expert.is_contiguous() && order.is_contiguous() && order.scalar_type() == torch::kInt32 &&
              order.numel() == n, "cut_sorted: contiguous expert and an int32 order of its size");
  TORCH_CHECK(0 < k && k < n, "cut_sorted: need 0 < k < numel");
  const Src e{expert.data_ptr(), kind_of(expert)};
  Src bs{};
  const Src* b = base_source(base, n, "cut_sorted", bs) ? &bs : nullptr;
  const int32_t* op = order.data_ptr<int32_t>();
  const int64_t slot = n - k;
  const float t = rank_magnitude(e, b, op[slot]);
  if (t == 0.0f) {  // ties of d = 0: kept or not they add nothing, so they are not listed (RankCut)
    const bool whole = slot == 0 || rank_magnitude(e, b, op[slot - 1]) != 0.0f;
    return {t, whole ? -1 : static_cast<int64_t>(op[slot]) + 1, torch::Tensor()};
  }
  int64_t lo = slot;
  while (lo > 0 && rank_magnitude(e, b, op[lo - 1]) == t) --lo;
  if (lo == slot) return {t, -1, torch::Tensor()};
  auto outside = torch::empty({slot - lo}, torch::kInt64);
  int64_t* dst = outside.data_ptr<int64_t>();
  for (int64_t j = slot - 1; j >= lo; --j) *dst++ = op[j];  // descending index in slot order
  return {t, static_cast<int64_t>(op[slot]) + 1, outside};
}

// rank_index.build: every flat position ordered by ascending |e - b| (NaN lowest), equal
// magnitudes by descending index, as two stable counting-sort passes (least significant digit
// first, 16 bits each) over a 32-bit key: 0 for NaN, else the float32 bits + 1 (monotone for
// non-negative floats). The first pass visits positions from the last down, which orders ties by
// descending index. Each pass is split over up to ``threads`` threads with per-thread digit
// offsets that keep it stable. Returns an int32 order.
torch::Tensor rank_order(torch::Tensor expert, c10::optional<torch::Tensor> base, int64_t threads) {
  const int64_t n = expert.numel();
  TORCH_CHECK(expert.is_contiguous() && n < (int64_t(1) << 31), "rank_order: contiguous, below 2**31 entries");
  const Src e{expert.data_ptr(), kind_of(expert)};
  Src b{};
  const bool has_base = base_source(base, n, "rank_order", b);
  auto order = torch::empty({n}, torch::kInt32);
  {
    pybind11::gil_scoped_release release;
    constexpr int64_t DIGITS = 1 << 16;
    const int t = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n / (1 << 18))));
    auto part = [&](int w) { return std::pair<int64_t, int64_t>{n * w / t, n * (w + 1) / t}; };
    auto run = [&](const std::function<void(int)>& f) {
      if (t == 1) f(0); else Pool::get().run(t, f);
    };
    std::unique_ptr<uint32_t[]> key(new uint32_t[n]);  // (not zero-filled: every slot is written)
    std::vector<std::vector<int64_t>> count(static_cast<size_t>(t), std::vector<int64_t>(DIGITS, 0));
    run([&](int w) {  // keys and the low-digit counts of each input part
      auto [lo, hi] = part(w);
      int64_t* c = count[w].data();
      alignas(64) float eb[BLOCK], bb[BLOCK];
      for (int64_t s = lo; s < hi; s += BLOCK) {
        const int64_t len = std::min(BLOCK, hi - s);
        load(e, s, len, eb);
        if (has_base) load(b, s, len, bb);
        for (int64_t j = 0; j < len; ++j) {
          const float a = std::fabs(has_base ? eb[j] - bb[j] : eb[j]);
          uint32_t bits;
          std::memcpy(&bits, &a, 4);
          const uint32_t kj = std::isnan(a) ? 0u : bits + 1u;
          key[s + j] = kj;
          ++c[kj & 0xFFFF];
        }
      }
    });
    // counts -> each part's first slot per digit, digits ascending and, within a digit, the parts
    // in the order the pass visits them (stability across parts)
    auto to_offsets = [&](bool parts_descending) {
      int64_t at = 0;
      for (int64_t d = 0; d < DIGITS; ++d) {
        for (int q = 0; q < t; ++q) {
          const int w = parts_descending ? t - 1 - q : q;
          const int64_t c = count[w][d];
          count[w][d] = at;
          at += c;
        }
      }
    };
    to_offsets(true);  // the first pass visits positions from the last down: the highest part first
    std::unique_ptr<int32_t[]> pos(new int32_t[n]);
    std::unique_ptr<uint16_t[]> top(new uint16_t[n]);
    run([&](int w) {
      auto [lo, hi] = part(w);
      int64_t* head = count[w].data();
      for (int64_t j = hi - 1; j >= lo; --j) {
        const uint32_t kj = key[j];
        const int64_t slot = head[kj & 0xFFFF]++;
        pos[slot] = static_cast<int32_t>(j);
        top[slot] = static_cast<uint16_t>(kj >> 16);
      }
    });
    key.reset();
    run([&](int w) {  // high-digit counts of each part of the first pass's output
      auto [lo, hi] = part(w);
      int64_t* c = count[w].data();
      std::fill(c, c + DIGITS, 0);
      for (int64_t j = lo; j < hi; ++j) ++c[top[j]];
    });
    to_offsets(false);
    int32_t* op = order.data_ptr<int32_t>();
    run([&](int w) {
      auto [lo, hi] = part(w);
      int64_t* head = count[w].data();
      for (int64_t j = lo; j < hi; ++j) op[head[top[j]]++] = pos[j];
    });
  }
  return order;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("merge", &merge, "evomerge fused task-vector merge (see kernels._body)");
  m.def("merge_part", &merge_part, "the fused merge of a strided part only (see kernels.run_part)");
  m.def("rank_order", &rank_order, "rank-index order: ascending magnitude, ties by descending index (see rank_index.build)");
  m.def("cut_sorted", &cut_sorted, "exact rank cut read from a rank order (see sparsify.rank_cut)");
  m.def("bracket", &bracket, "magnitude sub-bracket codes and counts (see kernels._bracket_body)");
}
