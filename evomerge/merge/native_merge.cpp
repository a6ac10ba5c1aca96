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
#include <mutex>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include <pthread.h>
#include <unistd.h>

namespace {

constexpr int64_t BLOCK = 512;
constexpr uint32_t MIX = 0x45D9F3Bu;

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
};


// Persistent helper threads (starting a thread per call costs ~80 us, as much as merging 64K
// entries). Never destroyed: joinable threads must not meet static destructors at exit. A forked
// child starts a fresh pool (pthread_atfork): the parent's threads do not exist there.
class Pool {
 public:
  static Pool& get() {
    static std::once_flag registered;
    std::call_once(registered, [] { pthread_atfork(nullptr, nullptr, [] { current() = nullptr; }); });
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
      ++generation_;
    }
    wake_.notify_all();
    std::exception_ptr mine;
    try {
      f(0);
    } catch (...) {
      mine = std::current_exception();
    }
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

  void loop(int id) {
    uint64_t seen = 0;
    for (;;) {
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
      uint32_t h = (first_index + static_cast<uint32_t>(j)) ^ seed;
      h = ((h >> 16) ^ h) * MIX;
      h = ((h >> 16) ^ h) * MIX;
      h = (h >> 16) ^ h;
      k = (h < keep) ? k : 0.0f;
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

inline void prefetch_ahead(const Job& job, int64_t s, int64_t end) {
  const int64_t at = s + PREFETCH_BLOCKS * BLOCK;
  if (at >= end) return;
  const int64_t len = std::min(BLOCK, end - at);
  if (job.has_base) prefetch_range(job.base.ptr, job.base.kind, at, len, false);
  for (const Expert& e : job.experts) prefetch_range(e.src.ptr, e.src.kind, at, len, false);
  prefetch_range(job.out, job.out_kind, at, len, true);
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
      uint32_t h0 = idx ^ seed0, h1 = idx ^ seed1;
      h0 = ((h0 >> 16) ^ h0) * MIX;
      h1 = ((h1 >> 16) ^ h1) * MIX;
      h0 = ((h0 >> 16) ^ h0) * MIX;
      h1 = ((h1 >> 16) ^ h1) * MIX;
      h0 = (h0 >> 16) ^ h0;
      h1 = (h1 >> 16) ^ h1;
      k0 = (h0 < keep0) ? k0 : 0.0f;
      k1 = (h1 < keep1) ? k1 : 0.0f;
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

bool run_range(const Job& job, int64_t begin, int64_t end) {
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
      prefetch_ahead(job, s, end);
      bad |= pair(job.experts[0], job.experts[1], e0 + s, e1 + s, bp + s, dst + s, len, static_cast<uint32_t>(s),
                  job.lam);
    }
    return bad != 0;
  }
  for (int64_t s = begin; s < end; s += BLOCK) {
    const int64_t len = std::min(BLOCK, end - s);
    prefetch_ahead(job, s, end);
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
      float* __restrict dst = static_cast<float*>(job.out) + s;
      uint32_t flag = 0;
      for (int64_t j = 0; j < len; ++j) {
        dst[j] = bp[j] + lam * merged[j];
        flag |= non_finite(dst[j]);
      }
      bad |= flag;
      continue;
    }
    if (job.has_base) {
      const float lam = job.lam;
      for (int64_t j = 0; j < len; ++j) out[j] = bp[j] + lam * merged[j];
      merged = out;
    }
    bad |= static_cast<uint32_t>(store(job.out, job.out_kind, s, len, merged));
  }
  return bad != 0;
}

}  // namespace

// out, base (undefined: none) and experts are flat and contiguous; fp: [E, 4] float32 (scale,
// weight, low threshold, high threshold), ip: [E, 5] int64 (low cut, high cut, keep, seed lo,
// seed hi; cuts ignored: tie fix-ups run separately); threads <= 1 runs on the caller's thread.
bool merge(torch::Tensor out, c10::optional<torch::Tensor> base, std::vector<torch::Tensor> experts,
           torch::Tensor fp, torch::Tensor ip, double lam, double divisor, int64_t flags, int64_t threads) {
  const int64_t n = out.numel();
  TORCH_CHECK(out.is_contiguous() && out.device().is_cpu(), "out must be contiguous on the CPU");
  TORCH_CHECK(n < (int64_t(1) << 32), "tensors of 2**32 entries or more take the Python kernels");
  TORCH_CHECK(fp.scalar_type() == torch::kFloat32 && ip.scalar_type() == torch::kInt64, "fp/ip dtypes");
  TORCH_CHECK(fp.size(0) == static_cast<int64_t>(experts.size()) && ip.size(0) == fp.size(0), "one row per expert");
  Job job;
  job.has_base = base.has_value() && base->defined();
  if (job.has_base) {
    TORCH_CHECK(base->is_contiguous() && base->numel() == n && base->device().is_cpu(), "base must be flat, contiguous, out's size, on the CPU");
    job.base = Src{base->data_ptr(), kind_of(*base)};
  }
  auto f = fp.contiguous();
  auto g = ip.contiguous();
  const float* fr = f.data_ptr<float>();
  const int64_t* ir = g.data_ptr<int64_t>();
  for (size_t i = 0; i < experts.size(); ++i) {
    const auto& e = experts[i];
    TORCH_CHECK(e.is_contiguous() && e.numel() == n && e.device().is_cpu(), "experts must be flat, contiguous, out's size, on the CPU");
    Expert x;
    x.src = Src{e.data_ptr(), kind_of(e)};
    x.scale = fr[4 * i];
    x.weight = fr[4 * i + 1];
    x.low_t = fr[4 * i + 2];
    x.high_t = fr[4 * i + 3];
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
  const int64_t blocks = (n + BLOCK - 1) / BLOCK;
  const int64_t t = std::max<int64_t>(1, std::min<int64_t>(threads, blocks / 64));
  if (t == 1) {
    pybind11::gil_scoped_release release;
    return run_range(job, 0, n);
  }
  std::atomic<bool> bad{false};
  {
    pybind11::gil_scoped_release release;
    const int64_t per = (blocks + t - 1) / t;
    Pool::get().run(static_cast<int>(t), [&](int w) {
      const int64_t lo = std::min(n, w * per * BLOCK), hi = std::min(n, (w + 1) * per * BLOCK);
      if (lo < hi && run_range(job, lo, hi)) bad = true;
    });
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
  const bool has_base = base.has_value() && base->defined();
  if (has_base) {
    TORCH_CHECK(base->is_contiguous() && base->numel() == n, "bracket: base must match the expert");
    bs = Src{base->data_ptr(), kind_of(*base)};
  }
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

// sparsify._cut_among over the entries at flat positions order[start:end) (ascending, every entry
// equal to the result among them): the need-th largest |e - b| (NaN ranks lowest), the count
// strictly above it, and the tie members in index order. Returns (threshold, cut, outside ties):
// cut = -1 when the whole tie group is in (ALL_TIES), else one past the last tie member taken.
std::tuple<double, int64_t, torch::Tensor> cut_in_group(torch::Tensor expert, c10::optional<torch::Tensor> base,
                                                        torch::Tensor order, int64_t start, int64_t end,
                                                        int64_t need) {
  TORCH_CHECK(expert.is_contiguous() && order.is_contiguous() && order.scalar_type() == torch::kInt32,
              "cut_in_group: contiguous expert and int32 order");
  const int64_t m = end - start;
  TORCH_CHECK(0 < need && need <= m && start >= 0 && end <= order.numel() && order.numel() == expert.numel(),
              "cut_in_group: bad group");
  const Src e{expert.data_ptr(), kind_of(expert)};
  const bool has_base = base.has_value() && base->defined();
  if (has_base)
    TORCH_CHECK(base->is_contiguous() && base->numel() == expert.numel(), "cut_in_group: base must match the expert");
  const Src b = has_base ? Src{base->data_ptr(), kind_of(*base)} : Src{};
  const int32_t* pos = order.data_ptr<int32_t>() + start;
  std::vector<float> v(static_cast<size_t>(m));
  for (int64_t j = 0; j < m; ++j) {
    float ev, bv = 0.0f;
    load(e, pos[j], 1, &ev);
    if (has_base) load(b, pos[j], 1, &bv);
    const float a = std::fabs(has_base ? ev - bv : ev);
    v[j] = std::isnan(a) ? -1.0f : a;
  }
  std::vector<float> w(v);
  std::nth_element(w.begin(), w.begin() + (need - 1), w.end(), std::greater<float>());
  const float t = w[need - 1];
  int64_t above = 0, ties = 0;
  for (int64_t j = 0; j < m; ++j) {
    above += v[j] > t;
    ties += v[j] == t;
  }
  const int64_t take = need - above;  // >= 1
  if (take == ties) return {t, -1, torch::Tensor()};
  std::vector<int64_t> members;
  members.reserve(static_cast<size_t>(ties));
  for (int64_t j = 0; j < m; ++j)
    if (v[j] == t) members.push_back(pos[j]);
  auto outside = torch::empty({ties - take}, torch::kInt64);
  std::copy(members.begin() + take, members.end(), outside.data_ptr<int64_t>());
  return {t, members[take - 1] + 1, outside};
}

// rank_index.build as a counting sort: key = float32 bits of |e - b| >> 16 (NaN -> 0), positions
// grouped by ascending key, ascending index within a key. Returns (order int32, ends int64: the
// cumulative sizes of the non-empty groups).
std::tuple<torch::Tensor, torch::Tensor> rank_order(torch::Tensor expert, c10::optional<torch::Tensor> base) {
  const int64_t n = expert.numel();
  TORCH_CHECK(expert.is_contiguous() && n < (int64_t(1) << 31), "rank_order: contiguous, below 2**31 entries");
  const Src e{expert.data_ptr(), kind_of(expert)};
  const bool has_base = base.has_value() && base->defined();
  if (has_base) TORCH_CHECK(base->is_contiguous() && base->numel() == n, "rank_order: base must match");
  const Src b = has_base ? Src{base->data_ptr(), kind_of(*base)} : Src{};
  constexpr int64_t KEYS = 1 << 15;
  std::vector<uint16_t> key(static_cast<size_t>(n));
  std::vector<int64_t> count(KEYS, 0);
  auto order = torch::empty({n}, torch::kInt32);
  {
    pybind11::gil_scoped_release release;
    alignas(64) float eb[BLOCK], bb[BLOCK];
    for (int64_t s = 0; s < n; s += BLOCK) {
      const int64_t len = std::min(BLOCK, n - s);
      load(e, s, len, eb);
      if (has_base) load(b, s, len, bb);
      for (int64_t j = 0; j < len; ++j) {
        const float a = std::fabs(has_base ? eb[j] - bb[j] : eb[j]);
        uint32_t bits;
        std::memcpy(&bits, &a, 4);
        key[s + j] = std::isnan(a) ? 0 : static_cast<uint16_t>(bits >> 16);
      }
    }
    for (int64_t j = 0; j < n; ++j) ++count[key[j]];
    std::vector<int64_t> head(KEYS, 0);
    for (int64_t k = 1; k < KEYS; ++k) head[k] = head[k - 1] + count[k - 1];
    int32_t* op = order.data_ptr<int32_t>();
    for (int64_t j = 0; j < n; ++j) op[head[key[j]]++] = static_cast<int32_t>(j);
  }
  std::vector<int64_t> ends;
  int64_t total = 0;
  for (int64_t k = 0; k < KEYS; ++k) {
    if (count[k] == 0) continue;
    total += count[k];
    ends.push_back(total);
  }
  auto ends_t = torch::empty({static_cast<int64_t>(ends.size())}, torch::kInt64);
  std::copy(ends.begin(), ends.end(), ends_t.data_ptr<int64_t>());
  return {order, ends_t};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("merge", &merge, "evomerge fused task-vector merge (see kernels._body)");
  m.def("rank_order", &rank_order, "rank-index order and group ends (see rank_index.build)");
  m.def("cut_in_group", &cut_in_group, "exact rank cut within one rank-index group (see sparsify._cut_among)");
  m.def("bracket", &bracket, "magnitude sub-bracket codes and counts (see kernels._bracket_body)");
}
