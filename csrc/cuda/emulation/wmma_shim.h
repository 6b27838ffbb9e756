// nvcuda::wmma on the host, for the tensor-core products of mma_gemm.cuh (16 x 16 x 16 for
// bf16 and fp16, 16 x 16 x 8 for TF32). A fragment holds its whole block in every lane (the GPU
// spreads it over the warp's registers, in a layout the API keeps opaque), so element-wise
// updates of `x` (the TF32 splits) act on every element, as on the GPU. What the emulation does
// check:
//  - the documented memory layouts of load/store_matrix_sync and the product's arithmetic
//    (16-bit or TF32 operands, fp32 accumulation);
//  - TF32 as the hardware has it: __float_to_tf32 rounds to 10 mantissa bits, to nearest with
//    ties away from zero (cvt.rna.tf32.f32), and the product reads only the upper 19 bits of
//    an operand (an fp32 value never rounded to TF32 is truncated);
//  - the alignment WMMA demands: 256-bit pointers, ldm a multiple of 16 bytes (aborts);
//  - the warp's synchronisation: store_matrix_sync writes only the lane's share of the block
//    (elements lane, lane + 32, ...), so reading the others' without __syncwarp races.
#pragma once

#include <bit>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace precision {
struct tf32 {};
}  // namespace precision

template <typename T>
struct storage {
  using type = T;
};
template <>
struct storage<precision::tf32> {
  using type = float;
};

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && (K == 16 || K == 8), "the emulation has 16 x 16 x 16/8");
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = rows * cols;
  typename storage<T>::type x[rows * cols];  // (i, j) at x[cols i + j]
};

inline float emulated_float(float v) { return v; }
inline float emulated_float(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float emulated_float(__half v) { return __half2float(v); }

// An fp32 value as a TF32 operand of the product: its upper 19 bits.
inline float tf32_operand(float v) {
  return std::bit_cast<float>(std::bit_cast<uint32_t>(v) & 0xffffe000u);
}

// cvt.rna.tf32.f32: to nearest, ties away from zero (the magnitude rounds half up); inf and
// NaN stay as they are.
inline float __float_to_tf32(float v) {
  const uint32_t u = std::bit_cast<uint32_t>(v);
  if ((u & 0x7f800000u) == 0x7f800000u) return v;
  return std::bit_cast<float>((u + 0x1000u) & 0xffffe000u);
}

inline void check_wmma_alignment(const void* ptr, unsigned ldm, size_t element_size) {
  if (reinterpret_cast<uintptr_t>(ptr) % 32 != 0 || (ldm * element_size) % 16 != 0) {
    std::fprintf(stderr, "wmma: pointer %p or ldm %u (x %zu bytes) misaligned\n", ptr, ldm,
                 element_size);
    std::abort();
  }
}

inline size_t element_at(int i, int j, unsigned ldm, bool row) {
  return row ? size_t(i) * ldm + j : i + size_t(j) * ldm;
}

template <typename Use, int K, typename T, typename Layout, typename S>
void load_matrix_sync(fragment<Use, 16, 16, K, T, Layout>& f, const S* ptr, unsigned ldm) {
  using F = fragment<Use, 16, 16, K, T, Layout>;
  static_assert(std::is_same_v<S, typename storage<T>::type>);
  check_wmma_alignment(ptr, ldm, sizeof(S));
  const bool row = std::is_same_v<Layout, row_major>;
  for (int i = 0; i < F::rows; ++i)
    for (int j = 0; j < F::cols; ++j) f.x[F::cols * i + j] = ptr[element_at(i, j, ldm, row)];
}

template <int K, typename T>
void fill_fragment(fragment<accumulator, 16, 16, K, T>& f, T value) {
  for (T& e : f.x) e = value;
}

template <int K, typename T, typename ALayout, typename BLayout>
void mma_sync(fragment<accumulator, 16, 16, K, float>& d,
              const fragment<matrix_a, 16, 16, K, T, ALayout>& a,
              const fragment<matrix_b, 16, 16, K, T, BLayout>& b,
              const fragment<accumulator, 16, 16, K, float>& c) {
  const auto operand = [](auto v) {
    if constexpr (std::is_same_v<T, precision::tf32>)
      return tf32_operand(v);
    else
      return emulated_float(v);
  };
  float out[16 * 16];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float sum = c.x[16 * i + j];
      for (int k = 0; k < K; ++k) sum += operand(a.x[K * i + k]) * operand(b.x[16 * k + j]);
      out[16 * i + j] = sum;
    }
  for (int e = 0; e < 16 * 16; ++e) d.x[e] = out[e];
}

template <int K>
void store_matrix_sync(float* ptr, const fragment<accumulator, 16, 16, K, float>& f, unsigned ldm,
                       layout_t layout) {
  check_wmma_alignment(ptr, ldm, sizeof(float));
  for (unsigned e = threadIdx.x % 32; e < 16 * 16; e += 32)
    ptr[element_at(e / 16, e % 16, ldm, layout == mem_row_major)] = f.x[e];
}

}  // namespace nvcuda::wmma
