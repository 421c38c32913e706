// The one source of randomness: Philox4x32-10 (Salmon et al., SC'11), the
// generator of ATen's at::Philox4_32 and cuRAND, as __host__ __device__ code
// used by the CPU and CUDA kernels alike.
//
// Element -> counter mapping (the contract every kernel and fastreg.reference
// follow): the random 32-bit word of element i of a draw is
//
//     philox4x32_10(counter = {lo32(i / 4), hi32(i / 4), stream, offset},
//                   key     = {lo32(seed), hi32(seed)})[i % 4]
//
// where i is the element's position in the dense memory order of the tensor
// (per-element draws) or the sample index (per-sample draws), `seed` is the
// op's int64 seed tensor, `stream` separates the independent draws of one op
// (kStream* below) and `offset` is 0 (reserved). Nothing else enters: the bits
// do not depend on threads, blocks, vector width, dtype or device.
//
// A shard of a larger tensor draws the words of its elements' places in the whole
// tensor: its seed tensor is then "positioned", [seed, base, seg_1, gap_1, ...,
// seg_m, gap_m] (IndexMap below), and element i of the shard draws the word of
// IndexMap(i) of the whole.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FASTREG_PHILOX_HD __host__ __device__ __forceinline__
#else
#define FASTREG_PHILOX_HD inline __attribute__((always_inline))
#endif

namespace fastreg::philox {

// Stream ids: one per independent draw.
constexpr uint32_t kStreamElement = 0;     // dropout-style per-element keep decisions
constexpr uint32_t kStreamSample = 1;      // drop path: one keep decision per sample
constexpr uint32_t kStreamSubset = 2;      // stochastic depth (row): each sample's rank key
constexpr uint32_t kStreamBox = 3;         // cutout: per-sample coin and box centre
constexpr uint32_t kStreamErase = 4;       // random erasing: coin (counter 1 = 0), attempts (1 + a)
constexpr uint32_t kStreamEraseValue = 5;  // random erasing, value='random': per-element normals
constexpr uint32_t kStreamMix = 6;         // mixup/cutmix: coin, switch, box centre / min-max box
constexpr uint32_t kStreamMixupBeta = 8;   // mixup lambda: Gamma draws on streams 8 and 9
constexpr uint32_t kStreamCutmixBeta = 10;  // cutmix lambda: Gamma draws on streams 10 and 11

constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;

struct Word4 { uint32_t v[4]; };

FASTREG_PHILOX_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// The ten round keys of a seed: kernels compute them once per thread and
// reuse them for every counter block they draw.
struct Key { uint32_t k0[10], k1[10]; };

FASTREG_PHILOX_HD Key key_schedule(uint64_t seed) {
  Key key;
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    key.k0[round] = k0;
    key.k1[round] = k1;
    k0 += kW0;
    k1 += kW1;
  }
  return key;
}

FASTREG_PHILOX_HD Word4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                      const Key& key) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kM0, c0, hi0, lo0);
    mulhilo(kM1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ key.k0[round], n2 = hi0 ^ c3 ^ key.k1[round];
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
  return {{c0, c1, c2, c3}};
}

// The four words of counter block `block` (elements 4*block .. 4*block+3).
FASTREG_PHILOX_HD Word4 block_words(const Key& key, uint32_t stream, uint64_t block) {
  return philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), stream, 0u,
                       key);
}

// The word of element (or sample) i.
FASTREG_PHILOX_HD uint32_t word(const Key& key, uint32_t stream, uint64_t i) {
  return block_words(key, stream, i >> 2).v[i & 3];
}

FASTREG_PHILOX_HD uint32_t word(uint64_t seed, uint32_t stream, uint64_t i) {
  return word(key_schedule(seed), stream, i);
}

// Local index -> index in the whole tensor: i + base + sum_j (i / seg_j) * gap_j.
// A shard along one dimension d of a row-major [outer, G, inner] tensor holding rows
// [off, off + L) has base = off * inner, seg = L * inner, gap = (G - L) * inner; each
// further sharded dimension adds a level. A one-element seed is the identity
// (levels = -1). seg <= 0 is treated as no level (never a division by zero).
constexpr int kMaxLevels = 4;
constexpr int64_t kMaxSeedLength = 2 + 2 * kMaxLevels;

struct IndexMap {
  int levels = -1;
  int64_t base = 0;
  int64_t seg[kMaxLevels] = {};
  int64_t gap[kMaxLevels] = {};

  FASTREG_PHILOX_HD bool identity() const { return levels < 0; }

  FASTREG_PHILOX_HD uint64_t operator()(uint64_t i) const {
    if (levels < 0) return i;
    int64_t g = static_cast<int64_t>(i) + base;
    for (int j = 0; j < levels; ++j)
      if (seg[j] > 0) g += (static_cast<int64_t>(i) / seg[j]) * gap[j];
    return static_cast<uint64_t>(g);
  }

  // From a seed tensor's values s[0 .. len): len 1 is the identity, len 2 + 2m has m levels.
  FASTREG_PHILOX_HD static IndexMap load(const int64_t* s, int64_t len) {
    IndexMap m;
    if (len < 2) return m;
    m.levels = static_cast<int>((len - 2) / 2 < kMaxLevels ? (len - 2) / 2 : kMaxLevels);
    m.base = s[1];
    for (int j = 0; j < m.levels; ++j) {
      m.seg[j] = s[2 + 2 * j];
      m.gap[j] = s[3 + 2 * j];
    }
    return m;
  }
};

// An element is kept when its word is at or above round(p * 2^32): p = 0 keeps
// everything, p = 1 (threshold 2^32) nothing. The threshold is an integer so
// that every device and the reference agree bit for bit.
inline uint64_t keep_threshold(double p) { return static_cast<uint64_t>(p * 4294967296.0 + 0.5); }

// The keep test of every kernel: word >= threshold, with p = 1 (threshold 2^32,
// which does not fit 32 bits) keeping nothing.
struct KeepRule {
  uint32_t threshold;
  bool none;
  explicit KeepRule(uint64_t t)
      : threshold(t > 0xffffffffull ? 0u : static_cast<uint32_t>(t)), none(t > 0xffffffffull) {}
  FASTREG_PHILOX_HD bool operator()(uint32_t w) const { return !none && w >= threshold; }
};

}  // namespace fastreg::philox
