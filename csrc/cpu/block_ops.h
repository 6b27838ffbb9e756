// Elementwise steps of the fused CPU kernels on one block of stacked rows, everything between
// the GEMMs. A block buffer holds 1 + order K streams of R rows x n features, k-major: stream 0
// is the values (z or h), streams 1..K the tangents (tz_k or t_k) and, for order 2, streams
// K+1..2K the second-order tangents (ttz_k or tt_k), each R * n contiguous.
// T is the accumulation type (float or double); loops are vectorised (see vectorize.h).
#pragma once

#include <cstdint>

namespace sobolev::cpu {

// h = s(z), s1 = s'(z) over n elements.
template <typename T>
void activation_values(int act, T slope, const T* z, int64_t n, T* h, T* s1);

// h = s(z), s1 = s'(z) and, when s2 is not null, s2 = s''(z) and, when s3 is not null too,
// s3 = s'''(z) over n elements.
template <typename T>
void activation_series(int act, T slope, const T* z, int64_t n, T* h, T* s1, T* s2, T* s3);

// out = a * b over n elements (t_k = s'(z) * tz_k).
template <typename T>
void multiply(const T* a, const T* b, int64_t n, T* out);

// Adjoints through the activation, in place on a = [a_h; a_t_1..a_t_K] (K + 1 streams of n):
//   a_z    = a_h * s'(z) + s''(z) * sum_k a_t_k * tz_k      (s2 null: s'' = 0)
//   a_tz_k = a_t_k * s'(z)
// tz holds K streams of n; work is n scratch elements.
template <typename T>
void activation_adjoint(int64_t K, int64_t n, const T* s1, const T* s2, const T* tz, T* a,
                        T* work);

// Order 2, the layer's input tangents from its pre-activations (Taylor mode), K streams of n
// each in tz, ttz, t and tt:
//   t_k  = s'(z) tz_k,   tt_k = s'(z) ttz_k + s''(z) tz_k^2      (s2 null: s'' = 0)
template <typename T>
void taylor_tangents(int64_t K, int64_t n, const T* s1, const T* s2, const T* tz, const T* ttz,
                     T* t, T* tt);

// Order 2, adjoints through the activation, in place on a = [a_h; a_t_1..a_t_K;
// a_tt_1..a_tt_K] (1 + 2K streams of n):
//   a_z     = a_h s' + s'' sum_k (a_t_k tz_k + a_tt_k ttz_k) + s''' sum_k a_tt_k tz_k^2
//   a_tz_k  = a_t_k s' + 2 s'' a_tt_k tz_k
//   a_ttz_k = a_tt_k s'
// s2 and s3 null: s'' = s''' = 0 (relu family, identity). work is n scratch elements.
template <typename T>
void activation_adjoint_order2(int64_t K, int64_t n, const T* s1, const T* s2, const T* s3,
                               const T* tz, const T* ttz, T* a, T* work);

// rows x n matrix: out[j] += sum_r m[r, j], rows in order (deterministic).
template <typename T>
void add_column_sums(const T* m, int64_t rows, int64_t n, T* out);

// rows x n matrix: m[r, j] += bias[j].
template <typename T>
void add_bias(T* m, int64_t rows, int64_t n, const T* bias);

}  // namespace sobolev::cpu
