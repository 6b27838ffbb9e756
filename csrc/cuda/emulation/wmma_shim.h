// nvcuda::wmma on the host, for the tensor-core products of mma_gemm.cuh (16 x 16 x 16 only).
// A fragment holds its whole 16 x 16 block in every lane (the GPU spreads it over the warp's
// registers, in a layout the API keeps opaque). What the emulation does check:
//  - the documented memory layouts of load/store_matrix_sync and the product's arithmetic
//    (16-bit operands, fp32 accumulation);
//  - the alignment WMMA demands: 256-bit pointers, ldm a multiple of 16 bytes (aborts);
//  - the warp's synchronisation: store_matrix_sync writes only the lane's share of the block
//    (elements lane, lane + 32, ...), so reading the others' without __syncwarp races.
#pragma once

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

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulation has 16 x 16 x 16 only");
  T x[16 * 16];  // (i, j) at x[16 i + j]
};

inline float emulated_float(float v) { return v; }
inline float emulated_float(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float emulated_float(__half v) { return __half2float(v); }

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

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* ptr, unsigned ldm) {
  check_wmma_alignment(ptr, ldm, sizeof(T));
  const bool row = std::is_same_v<Layout, row_major>;
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) f.x[16 * i + j] = ptr[element_at(i, j, ldm, row)];
}

template <typename T>
void fill_fragment(fragment<accumulator, 16, 16, 16, T>& f, T value) {
  for (T& e : f.x) e = value;
}

template <typename T, typename ALayout, typename BLayout>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
              const fragment<matrix_a, 16, 16, 16, T, ALayout>& a,
              const fragment<matrix_b, 16, 16, 16, T, BLayout>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[16 * 16];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float sum = c.x[16 * i + j];
      for (int k = 0; k < 16; ++k)
        sum += emulated_float(a.x[16 * i + k]) * emulated_float(b.x[16 * k + j]);
      out[16 * i + j] = sum;
    }
  for (int e = 0; e < 16 * 16; ++e) d.x[e] = out[e];
}

inline void store_matrix_sync(float* ptr, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout) {
  check_wmma_alignment(ptr, ldm, sizeof(float));
  for (unsigned e = threadIdx.x % 32; e < 16 * 16; e += 32)
    ptr[element_at(e / 16, e % 16, ldm, layout == mem_row_major)] = f.x[e];
}

}  // namespace nvcuda::wmma
