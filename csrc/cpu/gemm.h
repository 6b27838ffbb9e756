// Row-major matrix products on raw pointers for the per-block GEMMs of the CPU kernels.
//
// Leading dimensions are row strides. Each computes C = product + beta * C:
//   gemm_nt: C (M x N) = A (M x K) B^T, B (N x K)       forward   z = [h; t] W^T
//   gemm_nn: C (M x N) = A (M x K) B,   B (K x N)       backward  [a_h; a_t] = [a_z; a_tz] W
//   gemm_tn: C (M x N) = A^T B, A (K x M), B (K x N)    weights   dW += [a_z; a_tz]^T [h; t]
// They call the BLAS that libtorch carries (sgemm_/dgemm_, single-threaded inside our
// parallel region) when it exports one and `use_blas` is set, and otherwise a plain loop
// (vectorised by the compiler). Both are deterministic: the summation order depends only on
// the sizes and the operands' alignment, which the callers fix.
#pragma once

#include <cstdint>

namespace sobolev::cpu {

// Whether libtorch exports a BLAS sgemm_/dgemm_ this build can call.
bool blas_available();

template <typename T>
void gemm_nt(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T beta, T* C, int64_t ldc, bool use_blas);

template <typename T>
void gemm_nn(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T beta, T* C, int64_t ldc, bool use_blas);

template <typename T>
void gemm_tn(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T beta, T* C, int64_t ldc, bool use_blas);

}  // namespace sobolev::cpu
