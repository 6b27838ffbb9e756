#include "cpu/gemm.h"

#include "cpu/vectorize.h"

// The Fortran BLAS entry points that libtorch_cpu exports (MKL on x86-64 wheels, OpenBLAS on
// others). Weak, so a torch built without BLAS still loads this extension and takes the loop.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace sobolev::cpu {
namespace {

// Column-major BLAS call: C' (m x n) = op(a) op(b) + beta C'. A row-major matrix is the
// transpose of the column-major one with the same leading dimension, so each row-major
// product below is the transposed column-major product with the operands swapped.
void blas_gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
               const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const int mi = m, ni = n, ki = k, la = lda, lb = ldb, lc = ldc;
  const float one = 1.0f;
  sgemm_(&ta, &tb, &mi, &ni, &ki, &one, a, &la, b, &lb, &beta, c, &lc);
}

void blas_gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, const double* a, int64_t lda,
               const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  const int mi = m, ni = n, ki = k, la = lda, lb = ldb, lc = ldc;
  const double one = 1.0;
  dgemm_(&ta, &tb, &mi, &ni, &ki, &one, a, &la, b, &lb, &beta, c, &lc);
}

template <typename T>
bool has_blas();
template <>
bool has_blas<float>() {
  return sgemm_ != nullptr;
}
template <>
bool has_blas<double>() {
  return dgemm_ != nullptr;
}

// beta * C without reading C when beta == 0 (C may be uninitialised).
template <typename T>
inline T scaled(T beta, T c) {
  return beta == T(0) ? T(0) : beta * c;
}

template <typename T>
SK_CPU_CLONES void loop_nt(int64_t M, int64_t N, int64_t K, const T* SK_RESTRICT A, int64_t lda,
                           const T* SK_RESTRICT B, int64_t ldb, T beta, T* SK_RESTRICT C,
                           int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      T acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t k = 0; k < K; ++k) acc += A[i * lda + k] * B[j * ldb + k];
      C[i * ldc + j] = scaled(beta, C[i * ldc + j]) + acc;
    }
  }
}

template <typename T>
SK_CPU_CLONES void loop_nn(int64_t M, int64_t N, int64_t K, const T* SK_RESTRICT A, int64_t lda,
                           const T* SK_RESTRICT B, int64_t ldb, T beta, T* SK_RESTRICT C,
                           int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) {
    T* c = C + i * ldc;
    for (int64_t j = 0; j < N; ++j) c[j] = scaled(beta, c[j]);
    for (int64_t k = 0; k < K; ++k) {
      const T a = A[i * lda + k];
      const T* b = B + k * ldb;
      for (int64_t j = 0; j < N; ++j) c[j] += a * b[j];
    }
  }
}

template <typename T>
SK_CPU_CLONES void loop_tn(int64_t M, int64_t N, int64_t K, const T* SK_RESTRICT A, int64_t lda,
                           const T* SK_RESTRICT B, int64_t ldb, T beta, T* SK_RESTRICT C,
                           int64_t ldc) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = scaled(beta, C[i * ldc + j]);
  for (int64_t k = 0; k < K; ++k) {
    const T* b = B + k * ldb;
    for (int64_t i = 0; i < M; ++i) {
      const T a = A[k * lda + i];
      T* c = C + i * ldc;
      for (int64_t j = 0; j < N; ++j) c[j] += a * b[j];
    }
  }
}

}  // namespace

bool blas_available() {
  return has_blas<float>() && has_blas<double>();
}

// C = A B^T (row-major) is C^T = B A^T (column-major): op(a) = B^T stored as B -> 'T'.
template <typename T>
void gemm_nt(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T beta, T* C, int64_t ldc, bool use_blas) {
  if (use_blas && has_blas<T>()) return blas_gemm('T', 'N', N, M, K, B, ldb, A, lda, beta, C, ldc);
  loop_nt(M, N, K, A, lda, B, ldb, beta, C, ldc);
}

// C = A B is C^T = B^T A^T: both operands already stored as their column-major transposes.
template <typename T>
void gemm_nn(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T beta, T* C, int64_t ldc, bool use_blas) {
  if (use_blas && has_blas<T>()) return blas_gemm('N', 'N', N, M, K, B, ldb, A, lda, beta, C, ldc);
  loop_nn(M, N, K, A, lda, B, ldb, beta, C, ldc);
}

// C = A^T B is C^T = B^T A: B as stored, A transposed back -> 'T'.
template <typename T>
void gemm_tn(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T beta, T* C, int64_t ldc, bool use_blas) {
  if (use_blas && has_blas<T>()) return blas_gemm('N', 'T', N, M, K, B, ldb, A, lda, beta, C, ldc);
  loop_tn(M, N, K, A, lda, B, ldb, beta, C, ldc);
}

#define SK_INSTANTIATE_GEMM(T)                                                                \
  template void gemm_nt<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, T, \
                           T*, int64_t, bool);                                                \
  template void gemm_nn<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, T, \
                           T*, int64_t, bool);                                                \
  template void gemm_tn<T>(int64_t, int64_t, int64_t, const T*, int64_t, const T*, int64_t, T, \
                           T*, int64_t, bool);
SK_INSTANTIATE_GEMM(float)
SK_INSTANTIATE_GEMM(double)
#undef SK_INSTANTIATE_GEMM

}  // namespace sobolev::cpu
