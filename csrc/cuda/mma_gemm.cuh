// Tile products on tensor cores (WMMA, fp32 accumulation) for bf16 and fp16 (16 x 16 x 16), and
// for fp32 in the variant kTiledTensorCores (16 x 16 x 8 TF32, 3xTF32 unless allow_tf32): the
// counterparts of tile_gemm.cuh's FMA products, which dispatch here on sm_80 and newer.
//
// The fp32 tile operands are rounded to the storage type in shared memory (as torch's bf16 and
// fp16 GEMMs see their inputs; fp32 ones are staged as they are and split per fragment),
// zero-padded to multiples of 16 (rows kMmaSkew longer, see tile_plan.cuh); weights are staged
// panel by panel. Each warp computes 16 x 16 blocks of the result and hands them, through its
// own 16 x 16 fp32 block in shared memory, to the epilogue one element per call.
// fp16 tile operands are scaled by a power of two per product (exact, undone in the
// epilogue): the backward's adjoints are O(1/B) and would otherwise fall below fp16's range.
#pragma once

#include <type_traits>

#ifndef SK_HOST_EMULATION  // emulation/wmma_shim.h stands in for <mma.h>
#include <mma.h>
#endif

#include "cuda/device_math.cuh"
#include "cuda/tile_plan.cuh"

namespace sobolev::cuda {

namespace wmma = nvcuda::wmma;

// bf16 and fp16 run on tensor cores where WMMA has them both (sm_80: A100, H100), and fp32 too
// where a kernel asks for it (TF32: the variant kTiledTensorCores); the host pass sees the
// device code too and only needs it to parse.
template <typename scalar_t, bool TF32 = false>
inline constexpr bool kTensorCores = false;
#if defined(SK_HOST_EMULATION) || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
template <bool TF32>
inline constexpr bool kTensorCores<__nv_bfloat16, TF32> = true;
template <bool TF32>
inline constexpr bool kTensorCores<__half, TF32> = true;
template <>
inline constexpr bool kTensorCores<float, true> = true;
#endif

// The block's tensor-core stage (sizes in TilePlan, see make_plan), in shared memory.
template <typename mma_t>
struct MmaStage {
  mma_t* a;        // a tile operand, up to mma_tile_elems
  mma_t* b;        // a weight panel or a second tile operand, up to b_elems
  int b_elems;
  float* results;  // a 16 x 16 block per warp
  unsigned* amax;  // two words: max |operand| of a product's first and second tile operand
  bool plain_tf32;  // fp32: one TF32 product (allow_tf32) instead of three (3xTF32)
};

template <typename mma_t>
__device__ __forceinline__ MmaStage<mma_t> mma_stage(unsigned char* stage, const TilePlan& plan) {
  auto* a = reinterpret_cast<mma_t*>(stage);
  auto* results = reinterpret_cast<float*>(a + plan.mma_tile_elems + plan.mma_panel_elems);
  return {a, a + plan.mma_tile_elems, plan.mma_panel_elems, results,
          reinterpret_cast<unsigned*>(results + kMmaResultBytes / sizeof(float)),
          plan.plain_tf32};
}

// The power of two that brings max |src| into [2^13, 2^14) for fp16 (room for fp16's 65504),
// 1 for bf16, which has fp32's range. Every thread of the block calls it, after the product's
// first barrier: the previous product's reads of *amax are behind it, and a product's two
// operands use different words.
template <typename mma_t, typename acc_t>
__device__ float operand_scale(const acc_t* src, int ld, int rows, int cols, unsigned* amax) {
  if constexpr (!std::is_same_v<mma_t, __half>) {
    return 1.0f;
  } else {
    if (threadIdx.x == 0) *amax = 0;
    __syncthreads();
    float local = 0;
    for (int e = threadIdx.x; e < rows * cols; e += blockDim.x)
      local = fmaxf(local, fabsf(static_cast<float>(src[(e / cols) * ld + e % cols])));
    atomicMax(amax, __float_as_uint(local));  // non-negative floats order as their bits
    __syncthreads();
    const float largest = __uint_as_float(*amax);
    if (!(largest > 0) || !isfinite(largest)) return 1.0f;
    int exponent = 0;
    frexpf(largest, &exponent);  // largest < 2^exponent
    return ldexpf(1.0f, max(-100, min(100, 14 - exponent)));
  }
}

// dst (pad16(rows) x pad16(cols), row stride mma_lead(cols)) = scale src (rows x cols, row
// stride ld), zeros around it.
template <typename mma_t, typename acc_t>
__device__ void stage_operand(const acc_t* src, int ld, int rows, int cols, float scale,
                              mma_t* dst) {
  const int rows_p = pad16(rows), cols_p = pad16(cols), ld_dst = mma_lead(cols);
  for (int e = threadIdx.x; e < rows_p * cols_p; e += blockDim.x) {
    const int r = e / cols_p, c = e % cols_p;
    const float v = r < rows && c < cols ? static_cast<float>(src[r * ld + c]) * scale : 0.0f;
    dst[r * ld_dst + c] = from_acc<mma_t>(v);
  }
}

template <typename Layout>
__device__ __forceinline__ int element_offset(int i, int j, int ld) {
  return std::is_same_v<Layout, wmma::row_major> ? i * ld + j : i + j * ld;
}

// fp32 operands on tensor cores: each element split into a TF32 high part and a TF32
// remainder (3xTF32: hi hi + hi lo + lo hi, fp32-accurate), or rounded once (plain TF32).
template <typename Fragment>
__device__ __forceinline__ void split_tf32(Fragment& hi, Fragment& lo) {
  for (int i = 0; i < hi.num_elements; ++i) {
    const float v = hi.x[i];
    hi.x[i] = wmma::__float_to_tf32(v);
    lo.x[i] = wmma::__float_to_tf32(v - hi.x[i]);
  }
}

template <typename Fragment>
__device__ __forceinline__ void round_tf32(Fragment& f) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = wmma::__float_to_tf32(f.x[i]);
}

// acc += A B for one k step (16 for bf16/fp16, 8 for fp32 as TF32), A and B in shared memory.
template <typename ALayout, typename BLayout, typename mma_t, typename Acc>
__device__ __forceinline__ void mma_step(Acc& acc, const mma_t* A, int lda, const mma_t* B,
                                         int ldb, bool plain_tf32) {
  constexpr int n = kMmaBlock;
  if constexpr (std::is_same_v<mma_t, float>) {
    using tf32 = wmma::precision::tf32;
    wmma::fragment<wmma::matrix_a, n, n, 8, tf32, ALayout> a, a_lo;
    wmma::fragment<wmma::matrix_b, n, n, 8, tf32, BLayout> b, b_lo;
    wmma::load_matrix_sync(a, A, lda);
    wmma::load_matrix_sync(b, B, ldb);
    if (plain_tf32) {
      round_tf32(a);
      round_tf32(b);
    } else {
      split_tf32(a, a_lo);
      split_tf32(b, b_lo);
      wmma::mma_sync(acc, a_lo, b, acc);  // the small terms first
      wmma::mma_sync(acc, a, b_lo, acc);
    }
    wmma::mma_sync(acc, a, b, acc);
  } else {
    wmma::fragment<wmma::matrix_a, n, n, n, mma_t, ALayout> a;
    wmma::fragment<wmma::matrix_b, n, n, n, mma_t, BLayout> b;
    wmma::load_matrix_sync(a, A, lda);
    wmma::load_matrix_sync(b, B, ldb);
    wmma::mma_sync(acc, a, b, acc);
  }
}

// C (16 blocks_m x 16 blocks_n) = A B over 16 k_blocks, A and B in shared memory in the given
// layouts. Warp w computes result blocks w, w + warps, ...; epi(i, j, value) receives every
// element of the padded result once (the caller drops the padding).
template <typename ALayout, typename BLayout, typename mma_t, typename Epilogue>
__device__ void warp_products(int blocks_m, int blocks_n, int k_blocks, const mma_t* A, int lda,
                              const mma_t* B, int ldb, float* results, bool plain_tf32,
                              Epilogue epi) {
  constexpr int n = kMmaBlock;
  constexpr int k_step = std::is_same_v<mma_t, float> ? 8 : n;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  float* block = results + warp * n * n;
  for (int t = warp; t < blocks_m * blocks_n; t += warps) {  // uniform across the warp
    const int i0 = t / blocks_n * n, j0 = t % blocks_n * n;
    wmma::fragment<wmma::accumulator, n, n, k_step, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int k0 = 0; k0 < k_blocks * n; k0 += k_step)
      mma_step<ALayout, BLayout>(acc, A + element_offset<ALayout>(i0, k0, lda), lda,
                                 B + element_offset<BLayout>(k0, j0, ldb), ldb, plain_tf32);
    wmma::store_matrix_sync(block, acc, n, wmma::mem_row_major);
    __syncwarp();
    for (int e = lane; e < n * n; e += 32) epi(i0 + e / n, j0 + e % n, block[e]);
    __syncwarp();  // the warp's next result overwrites the block
  }
}

// C (M x N) = A (M x K) W^T (W: N x K) or A W (W: K x N), W row-major in global memory. The
// panel is staged as a K x nc operand: W^T column-major ((k, n) at n mma_lead(K) + k) or W
// row-major ((k, n) at k mma_lead(nc) + n), both read along W's rows (coalesced).
template <WeightProduct op, typename scalar_t, typename acc_t, typename Epilogue>
__device__ void mma_gemm_weights(int M, int N, int K, const acc_t* A, int lda, const scalar_t* W,
                                 const MmaStage<scalar_t>& st, Epilogue epi) {
  constexpr bool transposed = op == WeightProduct::kTransposed;
  using BLayout = std::conditional_t<transposed, wmma::col_major, wmma::row_major>;
  __syncthreads();  // A may have just been written (the FMA products allow that too)
  const int Kp = pad16(K), lda_st = mma_lead(K);
  const float scale = operand_scale<scalar_t>(A, lda, M, K, st.amax), unscale = 1.0f / scale;
  stage_operand(A, lda, M, K, scale, st.a);
  // columns per panel: ncp mma_lead(K) (W^T) and K mma_lead(ncp) (W) both within b_elems
  const int fit = st.b_elems / lda_st - kMmaSkew;
  const int panel = max(kMmaBlock, fit / kMmaBlock * kMmaBlock);
  for (int n0 = 0; n0 < N; n0 += panel) {
    const int nc = min(panel, N - n0), ncp = pad16(nc);
    const int ldb = transposed ? lda_st : mma_lead(nc);
    __syncthreads();  // the previous panel is no longer read
    for (int e = threadIdx.x; e < ncp * Kp; e += blockDim.x) {
      const int k = transposed ? e % Kp : e / ncp, n = transposed ? e / Kp : e % ncp;
      const int64_t at = transposed ? int64_t(n0 + n) * K + k : int64_t(k) * N + n0 + n;
      st.b[transposed ? n * ldb + k : k * ldb + n] =
          k < K && n < nc ? W[at] : from_acc<scalar_t>(0.0f);
    }
    __syncthreads();
    warp_products<wmma::row_major, BLayout>(
        pad16(M) / kMmaBlock, ncp / kMmaBlock, Kp / kMmaBlock, st.a, lda_st, st.b, ldb,
        st.results, st.plain_tf32, [&](int m, int n, float v) {
          if (m < M && n < nc) epi(m, n0 + n, static_cast<acc_t>(v * unscale));
        });
  }
  __syncthreads();
}

// C (N1 x N2) = A^T H over the tile's M stacked rows, A (M x N1) and H (M x N2) tiles:
// dW = [a_z; a_tz]^T [h; t]. A is staged row-major and read as A^T column-major.
template <typename scalar_t, typename acc_t, typename Epilogue>
__device__ void mma_gemm_tn(int N1, int N2, int M, const acc_t* A, int lda, const acc_t* H,
                            int ldh, const MmaStage<scalar_t>& st, Epilogue epi) {
  __syncthreads();
  const float scale_a = operand_scale<scalar_t>(A, lda, M, N1, st.amax);
  const float scale_h = operand_scale<scalar_t>(H, ldh, M, N2, st.amax + 1);
  const float unscale = 1.0f / scale_a / scale_h;  // powers of two: exact
  stage_operand(A, lda, M, N1, scale_a, st.a);
  stage_operand(H, ldh, M, N2, scale_h, st.b);
  __syncthreads();
  warp_products<wmma::col_major, wmma::row_major>(
      pad16(N1) / kMmaBlock, pad16(N2) / kMmaBlock, pad16(M) / kMmaBlock, st.a, mma_lead(N1),
      st.b, mma_lead(N2), st.results, st.plain_tf32,
      [&](int i, int j, float v) {
        if (i < N1 && j < N2) epi(i, j, static_cast<acc_t>(v * unscale));
      });
  __syncthreads();
}

}  // namespace sobolev::cuda
