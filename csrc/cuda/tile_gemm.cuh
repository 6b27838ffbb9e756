// Block-wide matrix products on a tile of stacked rows (the CUDA counterpart of cpu/gemm.h):
// FMA products here for fp32 and fp64 (and bf16/fp16 before sm_80), tensor-core products
// (mma_gemm.cuh) for bf16/fp16 on sm_80 and newer, and for fp32 where the kernel asks (TF32);
// tile_gemm_* at the end pick one.
//
// FMA products: tiles live in shared memory (or a block's slice of global scratch when too
// large; the code only sees pointers). Weights are read from global memory in panels staged
// through shared memory, Ws[k * nc + n], so a warp reads consecutive addresses. Each thread
// owns up to kMicro x kMicro outputs at rows tm + i * tiles_m and columns tn + j * tiles_n:
// threads of a warp share tm (broadcast reads of A) and take consecutive columns (no bank
// conflicts). Every thread of the block must call these functions (they synchronise).
#pragma once

#include "cuda/device_math.cuh"
#include "cuda/mma_gemm.cuh"
#include "cuda/tile_plan.cuh"

namespace sobolev::cuda {

constexpr int kMicro = 4;

// C (M x nc) = A (M x K, row stride lda) Ws (K x nc), Ws in shared memory; epi(m, n, value)
// receives each result once.
template <typename acc_t, typename Epilogue>
__device__ __forceinline__ void panel_product(int M, int nc, int K, const acc_t* A, int lda,
                                              const acc_t* Ws, Epilogue epi) {
  const int tiles_m = (M + kMicro - 1) / kMicro, tiles_n = (nc + kMicro - 1) / kMicro;
  for (int t = threadIdx.x; t < tiles_m * tiles_n; t += blockDim.x) {
    const int tm = t / tiles_n, tn = t % tiles_n;
    acc_t acc[kMicro][kMicro] = {};
    for (int k = 0; k < K; ++k) {
      acc_t a[kMicro], w[kMicro];
#pragma unroll
      for (int i = 0; i < kMicro; ++i) {
        const int m = tm + i * tiles_m;
        a[i] = m < M ? A[m * lda + k] : acc_t(0);
      }
#pragma unroll
      for (int j = 0; j < kMicro; ++j) {
        const int n = tn + j * tiles_n;
        w[j] = n < nc ? Ws[k * nc + n] : acc_t(0);
      }
#pragma unroll
      for (int i = 0; i < kMicro; ++i)
#pragma unroll
        for (int j = 0; j < kMicro; ++j) acc[i][j] = fma(a[i], w[j], acc[i][j]);
    }
#pragma unroll
    for (int i = 0; i < kMicro; ++i)
#pragma unroll
      for (int j = 0; j < kMicro; ++j) {
        const int m = tm + i * tiles_m, n = tn + j * tiles_n;
        if (m < M && n < nc) epi(m, n, acc[i][j]);
      }
  }
}

// C (M x N) = A (M x K) W^T (W: N x K) or A W (W: K x N), W row-major in global memory and
// staged panel by panel as Ws[k nc + n] (stage_capacity >= K elements).
template <WeightProduct op, typename acc_t, typename scalar_t, typename Epilogue>
__device__ void fma_gemm_weights(int M, int N, int K, const acc_t* A, int lda, const scalar_t* W,
                                 acc_t* Ws, int stage_capacity, Epilogue epi) {
  const int panel = max(1, min(N, stage_capacity / K));
  for (int n0 = 0; n0 < N; n0 += panel) {
    const int nc = min(panel, N - n0);
    __syncthreads();  // the previous panel is no longer read
    for (int e = threadIdx.x; e < nc * K; e += blockDim.x) {  // coalesced reads of W's rows
      if constexpr (op == WeightProduct::kTransposed) {
        const int n = e / K, k = e % K;
        Ws[k * nc + n] = to_acc<acc_t>(W[static_cast<int64_t>(n0 + n) * K + k]);
      } else {
        const int k = e / nc, n = e % nc;
        Ws[e] = to_acc<acc_t>(W[static_cast<int64_t>(k) * N + n0 + n]);
      }
    }
    __syncthreads();
    panel_product(M, nc, K, A, lda, Ws, [&](int m, int n, acc_t v) { epi(m, n0 + n, v); });
  }
  __syncthreads();
}

// C (N1 x N2) = A^T H, A (M x N1) and H (M x N2) tiles: dW = [a_z; a_tz]^T [h; t] over the
// tile's stacked rows, summed in row order. epi(i, j, value) receives each result once.
template <typename acc_t, typename Epilogue>
__device__ void fma_gemm_tn(int N1, int N2, int M, const acc_t* A, int lda, const acc_t* H,
                            int ldh, Epilogue epi) {
  const int tiles_i = (N1 + kMicro - 1) / kMicro, tiles_j = (N2 + kMicro - 1) / kMicro;
  for (int t = threadIdx.x; t < tiles_i * tiles_j; t += blockDim.x) {
    const int ti = t / tiles_j, tj = t % tiles_j;
    acc_t acc[kMicro][kMicro] = {};
    for (int r = 0; r < M; ++r) {
      acc_t a[kMicro], h[kMicro];
#pragma unroll
      for (int p = 0; p < kMicro; ++p) {
        const int i = ti + p * tiles_i;
        a[p] = i < N1 ? A[r * lda + i] : acc_t(0);
      }
#pragma unroll
      for (int q = 0; q < kMicro; ++q) {
        const int j = tj + q * tiles_j;
        h[q] = j < N2 ? H[r * ldh + j] : acc_t(0);
      }
#pragma unroll
      for (int p = 0; p < kMicro; ++p)
#pragma unroll
        for (int q = 0; q < kMicro; ++q) acc[p][q] = fma(a[p], h[q], acc[p][q]);
    }
#pragma unroll
    for (int p = 0; p < kMicro; ++p)
#pragma unroll
      for (int q = 0; q < kMicro; ++q) {
        const int i = ti + p * tiles_i, j = tj + q * tiles_j;
        if (i < N1 && j < N2) epi(i, j, acc[p][q]);
      }
  }
  __syncthreads();
}

// The products the kernels call. `stage` is the block's weight stage in shared memory
// (plan.stage_elems accumulation-type elements); scalar_t, the storage type, and TF32 (fp32 on
// tensor cores, the variant kTiledTensorCores) pick the tensor cores or FMA.
template <WeightProduct op, bool TF32, typename scalar_t, typename acc_t, typename Epilogue>
__device__ void tile_gemm_weights(int M, int N, int K, const acc_t* A, int lda,
                                  const scalar_t* W, unsigned char* stage, const TilePlan& plan,
                                  Epilogue epi) {
  if constexpr (kTensorCores<scalar_t, TF32>)
    mma_gemm_weights<op>(M, N, K, A, lda, W, mma_stage<scalar_t>(stage, plan), epi);
  else
    fma_gemm_weights<op>(M, N, K, A, lda, W, reinterpret_cast<acc_t*>(stage), plan.stage_elems,
                         epi);
}

template <typename scalar_t, bool TF32, typename acc_t, typename Epilogue>
__device__ void tile_gemm_tn(int N1, int N2, int M, const acc_t* A, int lda, const acc_t* H,
                             int ldh, unsigned char* stage, const TilePlan& plan, Epilogue epi) {
  if constexpr (kTensorCores<scalar_t, TF32>)
    mma_gemm_tn(N1, N2, M, A, lda, H, ldh, mma_stage<scalar_t>(stage, plan), epi);
  else
    fma_gemm_tn(N1, N2, M, A, lda, H, ldh, epi);
}

}  // namespace sobolev::cuda
