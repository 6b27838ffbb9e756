// Warp-level tensor-core products through mma.sync (sm_80 and newer), with the fragment layouts
// the PTX ISA documents, for the fused kernels (fused_*.cuh): m16n8k8 TF32 for fp32 operands,
// m16n8k16 for bf16 and fp16, fp32 accumulation. Knowing the layouts lets an epilogue work on
// the accumulators in registers, and lets operands be converted as they are loaded: fp32 tiles
// in shared memory become TF32 pairs (3xTF32: a TF32 high part and a TF32 remainder) or 16-bit
// pairs (scaled by a power of two for fp16) in registers.
//
// Lane = 4 g + t (g = lane / 4, t = lane % 4). With op_t the operand type (float: TF32):
//   A (16 x kK, row-major)  TF32: a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4)
//                           16-bit pairs: a0 (g, 2t..2t+1), a1 (g + 8, ..), a2 (g, 2t+8..),
//                           a3 (g + 8, 2t+8..), the lower column in the low half
//   B (kK x 8)              TF32: b0 (t, g), b1 (t + 4, g); 16-bit pairs: b0 (2t..2t+1, g),
//                           b1 (2t+8..2t+9, g)
//   C (16 x 8, fp32)        c0, c1 (g, 2t..2t+1), c2, c3 (g + 8, 2t..2t+1)
// emulation/host_shim.h runs the same products on the host, lane by lane, from these layouts.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda/device_math.cuh"

namespace sobolev::cuda {

// k per mma.sync: 8 for TF32, 16 for bf16 and fp16.
template <typename op_t>
inline constexpr int kMmaK = std::is_same_v<op_t, float> ? 8 : 16;

// An operand fragment: `hi` is what the product reads; `lo`, the TF32 remainders of 3xTF32.
struct FragmentA {
  uint32_t hi[4], lo[4];
};
struct FragmentB {
  uint32_t hi[2], lo[2];
};

// fp32 -> TF32, to nearest with ties away from zero (cvt.rna.tf32.f32), in an fp32 register.
__device__ __forceinline__ uint32_t to_tf32(float v) {
#ifdef SK_HOST_EMULATION
  return std::bit_cast<uint32_t>(nvcuda::wmma::__float_to_tf32(v));
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
  return r;
#else
  return __float_as_uint(v);
#endif
}

__device__ __forceinline__ float tf32_value(uint32_t bits) {
#ifdef SK_HOST_EMULATION
  return std::bit_cast<float>(bits);
#else
  return __uint_as_float(bits);
#endif
}

// The bits of an fp32 value (tf32_value's inverse).
__device__ __forceinline__ uint32_t float_bits(float v) {
#ifdef SK_HOST_EMULATION
  return std::bit_cast<uint32_t>(v);
#else
  return __float_as_uint(v);
#endif
}

// Two fp32 values as one register of 16-bit operands (the first in the low half).
template <typename op_t>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
#ifdef SK_HOST_EMULATION
  const op_t l = from_acc<op_t>(lo), h = from_acc<op_t>(hi);
  uint16_t lb, hb;
  std::memcpy(&lb, &l, 2);
  std::memcpy(&hb, &h, 2);
  return uint32_t(lb) | (uint32_t(hb) << 16);
#else
  if constexpr (std::is_same_v<op_t, __nv_bfloat16>)
    return uint32_t(__bfloat16_as_ushort(__float2bfloat16(lo))) |
           (uint32_t(__bfloat16_as_ushort(__float2bfloat16(hi))) << 16);
  else
    return uint32_t(__half_as_ushort(__float2half(lo))) |
           (uint32_t(__half_as_ushort(__float2half(hi))) << 16);
#endif
}

// Two consecutive 16-bit operands of shared memory as one register (4-byte aligned).
template <typename op_t>
__device__ __forceinline__ uint32_t load_pair(const op_t* p) {
#ifdef SK_HOST_EMULATION
  uint32_t r;
  std::memcpy(&r, p, 4);
  return r;
#else
  return *reinterpret_cast<const uint32_t*>(p);
#endif
}

// Two consecutive fp32 values of shared memory (8-byte aligned) in one load.
__device__ __forceinline__ void load_two(const float* p, float& a, float& b) {
#ifdef SK_HOST_EMULATION
  a = p[0];
  b = p[1];
#else
  const float2 v = *reinterpret_cast<const float2*>(p);
  a = v.x;
  b = v.y;
#endif
}

// An fp32 value as a TF32 operand: rounded once (plain TF32) or as hi + lo (3xTF32).
__device__ __forceinline__ void tf32_parts(float v, bool split, uint32_t& hi, uint32_t& lo) {
  hi = to_tf32(v);
  if (split) lo = to_tf32(v - tf32_value(hi));
}

// tf32_parts by integer arithmetic (FAST; hi as the triton backend's tf32x3_split rounds it;
// CUTLASS's fast fp32 splits similarly): hi rounded as cvt.rna rounds (to nearest, ties away
// from zero) by an add and a mask, lo the exact rest, left for the product to truncate (mma.sync
// reads a TF32 operand's upper 19 bits). Three instructions where tf32_parts takes nine on
// sm_90 (cvt.rna.tf32 is four there). The products differ in lo's last bit: its error is at
// most 2^-21 |v| instead of 2^-22, beside the 2^-22 |v v'| that 3xTF32 drops (lo lo') either
// way. A NaN keeps its NaN lo (its hi wraps to a zero), an inf gives hi = inf and lo = NaN:
// the products are NaN, as tf32_parts makes them. Plain TF32 (no split) stays cvt.rna's.
template <bool FAST>
__device__ __forceinline__ void tf32_parts(float v, bool split, uint32_t& hi, uint32_t& lo) {
  if constexpr (FAST) {
    if (split) {
      hi = (float_bits(v) + 0x1000u) & 0xffffe000u;
      lo = float_bits(v - tf32_value(hi));
      return;
    }
  }
  tf32_parts(v, split, hi, lo);
}

// fp32 weights split once for every product that reads them (the fused kernels' staged
// weights, FusedShape's STAGED_SPLIT): their 3xTF32 parts, two words a weight: hi by cvt.rna
// (once per launch: its cost does not matter, and plain TF32, which reads hi alone, keeps a NaN
// weight NaN), lo the exact rest as tf32_parts<true> leaves it (the same bits for finite
// weights). Each group of 8 columns k0..k0+7 of a row is 16 words: the high parts of columns
// k0, k0 + 4, k0 + 1, k0 + 5, ..., k0 + 3, k0 + 7, then their remainders in the same order.
// A B fragment's two high parts (k0 + t, k0 + t + 4) are then one 8-byte load, and its two
// remainders another: as registers in the pairs mma.sync reads, without moves between them.
struct alignas(8) Tf32Parts {
  uint32_t word[2];  // (sizes the buffer; the words are laid out as above)
};

// Word w of a row of Tf32Parts: its column and whether it holds the remainder.
__device__ __forceinline__ int tf32_parts_column(int w, bool& remainder) {
  const int r = w & 7;
  remainder = (w & 15) >= 8;
  return (w >> 4) * 8 + (r >> 1) + (r & 1) * 4;
}

// That word for the column's value v.
__device__ __forceinline__ uint32_t tf32_parts_word(float v, bool remainder) {
  const uint32_t hi = to_tf32(v);
  return remainder ? float_bits(v - tf32_value(hi)) : hi;
}

// 16 bytes (16-byte aligned) as one load or one store.
struct alignas(16) Bytes16 {
  uint32_t word[4];
};
__device__ __forceinline__ Bytes16 load_16_bytes(const void* from) {
  Bytes16 v;
#ifdef SK_HOST_EMULATION
  std::memcpy(&v, from, 16);
#else
  const uint4 u = *reinterpret_cast<const uint4*>(from);
  v.word[0] = u.x, v.word[1] = u.y, v.word[2] = u.z, v.word[3] = u.w;
#endif
  return v;
}
__device__ __forceinline__ void store_16_bytes(void* to, const Bytes16& v) {
#ifdef SK_HOST_EMULATION
  std::memcpy(to, &v, 16);
#else
  *reinterpret_cast<uint4*>(to) = make_uint4(v.word[0], v.word[1], v.word[2], v.word[3]);
#endif
}

// Two consecutive words of shared memory (8-byte aligned) in one load.
__device__ __forceinline__ void load_word_pair(const uint32_t* p, uint32_t (&pair)[2]) {
#ifdef SK_HOST_EMULATION
  std::memcpy(pair, p, 8);
#else
  const uint2 v = *reinterpret_cast<const uint2*>(p);
  pair[0] = v.x;
  pair[1] = v.y;
#endif
}

// A (16 x kK) at column k0 of 16 fp32 rows (row stride ld), times `scale` (16-bit operands);
// FAST_SPLIT: TF32 parts by tf32_parts<true>.
template <typename op_t, bool FAST_SPLIT = false>
__device__ __forceinline__ FragmentA load_a(const float* rows, int ld, int k0, float scale,
                                            bool split) {
  const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  FragmentA f;
  if constexpr (std::is_same_v<op_t, float>) {
    const float* p = rows + g * ld + k0 + t;
    tf32_parts<FAST_SPLIT>(p[0], split, f.hi[0], f.lo[0]);
    tf32_parts<FAST_SPLIT>(p[8 * ld], split, f.hi[1], f.lo[1]);
    tf32_parts<FAST_SPLIT>(p[4], split, f.hi[2], f.lo[2]);
    tf32_parts<FAST_SPLIT>(p[8 * ld + 4], split, f.hi[3], f.lo[3]);
  } else {
    const float* p = rows + g * ld + k0 + 2 * t;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      float lo, hi;
      load_two(p + (r & 1) * 8 * ld + (r >> 1) * 8, lo, hi);
      f.hi[r] = pack_pair<op_t>(lo * scale, hi * scale);
    }
  }
  return f;
}

// B (kK x 8) with B(k, n) = rows[n][k0 + k]: 8 fp32 rows (row stride ld), times `scale`.
template <typename op_t>
__device__ __forceinline__ FragmentB load_b(const float* rows, int ld, int k0, float scale,
                                            bool split) {
  const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  FragmentB f;
  if constexpr (std::is_same_v<op_t, float>) {
    const float* p = rows + g * ld + k0 + t;
    tf32_parts(p[0], split, f.hi[0], f.lo[0]);
    tf32_parts(p[4], split, f.hi[1], f.lo[1]);
  } else {
    const float* p = rows + g * ld + k0 + 2 * t;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float lo, hi;
      load_two(p + 8 * r, lo, hi);
      f.hi[r] = pack_pair<op_t>(lo * scale, hi * scale);
    }
  }
  return f;
}

// B (kK x 8) with B(k, n) = staged[n][k0 + k]: 8 rows of staged weights in the operand type
// (fp32 for TF32, split here; 16-bit as they are).
template <typename op_t>
__device__ __forceinline__ FragmentB load_b_staged(const op_t* rows, int ld, int k0, bool split) {
  if constexpr (std::is_same_v<op_t, float>) {
    return load_b<float>(rows, ld, k0, 1.0f, split);
  } else {
    const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
    const op_t* p = rows + g * ld + k0 + 2 * t;
    FragmentB f;
    f.hi[0] = load_pair(p);
    f.hi[1] = load_pair(p + 8);
    return f;
  }
}

// load_b_staged of weights staged as Tf32Parts: the fragment load_b<float> would split (the
// remainders only for 3xTF32, `split`).
__device__ __forceinline__ FragmentB load_b_staged(const Tf32Parts* rows, int ld, int k0,
                                                   bool split) {
  const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  const uint32_t* p = reinterpret_cast<const uint32_t*>(rows + g * ld) + 2 * k0 + 2 * t;
  FragmentB f;  // (lo unset for plain TF32, which never reads it; as load_b leaves it)
  load_word_pair(p, f.hi);
  if (split) load_word_pair(p + 8, f.lo);
  return f;
}

// One mma.sync: d += a b.
template <typename op_t>
__device__ __forceinline__ void mma_sync(float (&d)[4], const uint32_t (&a)[4],
                                         const uint32_t (&b)[2]) {
#ifdef SK_HOST_EMULATION
  constexpr EmulatedMma kind = std::is_same_v<op_t, float>           ? EmulatedMma::kTf32
                               : std::is_same_v<op_t, __nv_bfloat16> ? EmulatedMma::kBf16
                                                                     : EmulatedMma::kFp16;
  emulated_mma_sync(kind, d, a, b);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<op_t, float>)
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  else if constexpr (std::is_same_v<op_t, __nv_bfloat16>)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();  // the plans run the fused kernels from sm_80 on only
#endif
}

// d += a b on tensor cores; 3xTF32 adds the two cross terms first (the small ones).
template <typename op_t>
__device__ __forceinline__ void mma(float (&d)[4], const FragmentA& a, const FragmentB& b,
                                    bool split) {
  if constexpr (std::is_same_v<op_t, float>) {
    if (split) {
      mma_sync<op_t>(d, a.lo, b.hi);
      mma_sync<op_t>(d, a.hi, b.lo);
    }
  }
  mma_sync<op_t>(d, a.hi, b.hi);
}

}  // namespace sobolev::cuda
