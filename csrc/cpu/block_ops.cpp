#include "cpu/block_ops.h"

#include <algorithm>
#include <type_traits>

#include "activations.h"
#include "cpu/fast_math.h"
#include "cpu/vectorize.h"

namespace sobolev::cpu {
namespace {

// One loop per set of derivatives needed, so each computes only those (the compiler drops
// the unused outputs of the inlined activation_series).
template <int ACT, typename T>
SK_CPU_CLONES void values_loop(T slope, const T* SK_RESTRICT z, int64_t n, T* SK_RESTRICT h,
                               T* SK_RESTRICT s1) {
  for (int64_t e = 0; e < n; ++e) {
    T s, d1, d2, d3;
    sobolev::activation_series<ACT, CpuMath<T>>(z[e], slope, s, d1, d2, d3);
    h[e] = s;
    s1[e] = d1;
  }
}

template <int ACT, typename T>
SK_CPU_CLONES void series_loop(T slope, const T* SK_RESTRICT z, int64_t n, T* SK_RESTRICT h,
                               T* SK_RESTRICT s1, T* SK_RESTRICT s2) {
  for (int64_t e = 0; e < n; ++e) {
    T s, d1, d2, d3;
    sobolev::activation_series<ACT, CpuMath<T>>(z[e], slope, s, d1, d2, d3);
    h[e] = s;
    s1[e] = d1;
    s2[e] = d2;
  }
}

template <int ACT, typename T>
SK_CPU_CLONES void series3_loop(T slope, const T* SK_RESTRICT z, int64_t n, T* SK_RESTRICT h,
                                T* SK_RESTRICT s1, T* SK_RESTRICT s2, T* SK_RESTRICT s3) {
  for (int64_t e = 0; e < n; ++e) {
    T s, d1, d2, d3;
    sobolev::activation_series<ACT, CpuMath<T>>(z[e], slope, s, d1, d2, d3);
    h[e] = s;
    s1[e] = d1;
    s2[e] = d2;
    s3[e] = d3;
  }
}

// The activation id becomes a template argument once per call, outside the loops.
template <typename T, typename Fn>
void dispatch_activation(int act, Fn&& fn) {
  switch (act) {
    case kTanh: return fn(std::integral_constant<int, kTanh>{});
    case kSigmoid: return fn(std::integral_constant<int, kSigmoid>{});
    case kSoftplus: return fn(std::integral_constant<int, kSoftplus>{});
    case kSilu: return fn(std::integral_constant<int, kSilu>{});
    case kSin: return fn(std::integral_constant<int, kSin>{});
    case kGelu: return fn(std::integral_constant<int, kGelu>{});
    case kRelu: return fn(std::integral_constant<int, kRelu>{});
    case kLeakyRelu: return fn(std::integral_constant<int, kLeakyRelu>{});
    case kGeluTanh: return fn(std::integral_constant<int, kGeluTanh>{});
    default: return fn(std::integral_constant<int, kIdentity>{});
  }
}

template <typename T>
SK_CPU_CLONES void multiply_add_loop(const T* SK_RESTRICT a, const T* SK_RESTRICT b, int64_t n,
                                     T* SK_RESTRICT out) {
  for (int64_t e = 0; e < n; ++e) out[e] += a[e] * b[e];
}

template <typename T>
SK_CPU_CLONES void value_adjoint_loop(const T* SK_RESTRICT s1, const T* SK_RESTRICT s2,
                                      const T* SK_RESTRICT cross, int64_t n, T* SK_RESTRICT a) {
  for (int64_t e = 0; e < n; ++e) a[e] = a[e] * s1[e] + s2[e] * cross[e];
}

template <typename T>
SK_CPU_CLONES void scale_loop(const T* SK_RESTRICT s, int64_t n, T* SK_RESTRICT a) {
  for (int64_t e = 0; e < n; ++e) a[e] *= s[e];
}

// t = s' tz,  tt = s' ttz + s'' tz^2  (one direction)
template <typename T>
SK_CPU_CLONES void taylor_loop(const T* SK_RESTRICT s1, const T* SK_RESTRICT s2,
                               const T* SK_RESTRICT tz, const T* SK_RESTRICT ttz, int64_t n,
                               T* SK_RESTRICT t, T* SK_RESTRICT tt) {
  for (int64_t e = 0; e < n; ++e) {
    t[e] = s1[e] * tz[e];
    tt[e] = s1[e] * ttz[e] + s2[e] * tz[e] * tz[e];
  }
}

// One direction's share of the order-2 activation adjoint (see activation_adjoint_order2):
//   coupling += s'' (a_t tz + a_tt ttz) + s''' a_tt tz^2
//   a_t = a_t s' + 2 s'' a_tt tz,   a_tt = a_tt s'
template <typename T>
SK_CPU_CLONES void taylor_adjoint_loop(const T* SK_RESTRICT s1, const T* SK_RESTRICT s2,
                                       const T* SK_RESTRICT s3, const T* SK_RESTRICT tz,
                                       const T* SK_RESTRICT ttz, int64_t n,
                                       T* SK_RESTRICT coupling, T* SK_RESTRICT a_t,
                                       T* SK_RESTRICT a_tt) {
  for (int64_t e = 0; e < n; ++e) {
    const T at = a_t[e], att = a_tt[e], v = tz[e];
    coupling[e] += s2[e] * (at * v + att * ttz[e]) + s3[e] * att * v * v;
    a_t[e] = at * s1[e] + T(2) * s2[e] * att * v;
    a_tt[e] = att * s1[e];
  }
}

// a = a s' + coupling (the values' adjoint once every direction has added its coupling)
template <typename T>
SK_CPU_CLONES void scale_add_loop(const T* SK_RESTRICT s1, const T* SK_RESTRICT coupling,
                                  int64_t n, T* SK_RESTRICT a) {
  for (int64_t e = 0; e < n; ++e) a[e] = a[e] * s1[e] + coupling[e];
}

}  // namespace

template <typename T>
void activation_values(int act, T slope, const T* z, int64_t n, T* h, T* s1) {
  dispatch_activation<T>(act, [&](auto id) {
    values_loop<decltype(id)::value>(slope, z, n, h, s1);
  });
}

template <typename T>
void activation_series(int act, T slope, const T* z, int64_t n, T* h, T* s1, T* s2, T* s3) {
  if (s2 == nullptr) return activation_values(act, slope, z, n, h, s1);
  dispatch_activation<T>(act, [&](auto id) {
    if (s3 == nullptr)
      series_loop<decltype(id)::value>(slope, z, n, h, s1, s2);
    else
      series3_loop<decltype(id)::value>(slope, z, n, h, s1, s2, s3);
  });
}

template <typename T>
SK_CPU_CLONES void multiply(const T* SK_RESTRICT a, const T* SK_RESTRICT b, int64_t n,
                            T* SK_RESTRICT out) {
  for (int64_t e = 0; e < n; ++e) out[e] = a[e] * b[e];
}

template <typename T>
void activation_adjoint(int64_t K, int64_t n, const T* s1, const T* s2, const T* tz, T* a,
                        T* work) {
  if (s2 != nullptr) {
    // cross = sum_k a_t_k * tz_k, one stream at a time (contiguous, vectorised)
    multiply(a + n, tz, n, work);
    for (int64_t k = 1; k < K; ++k) multiply_add_loop(a + (1 + k) * n, tz + k * n, n, work);
    value_adjoint_loop(s1, s2, work, n, a);
  } else {
    scale_loop(s1, n, a);
  }
  for (int64_t k = 0; k < K; ++k) scale_loop(s1, n, a + (1 + k) * n);
}

template <typename T>
void taylor_tangents(int64_t K, int64_t n, const T* s1, const T* s2, const T* tz, const T* ttz,
                     T* t, T* tt) {
  for (int64_t k = 0; k < K; ++k) {
    const int64_t off = k * n;
    if (s2 != nullptr) {
      taylor_loop(s1, s2, tz + off, ttz + off, n, t + off, tt + off);
    } else {  // s'' = 0: tt = s' ttz
      multiply(s1, tz + off, n, t + off);
      multiply(s1, ttz + off, n, tt + off);
    }
  }
}

template <typename T>
void activation_adjoint_order2(int64_t K, int64_t n, const T* s1, const T* s2, const T* s3,
                               const T* tz, const T* ttz, T* a, T* work) {
  if (s2 == nullptr) {  // s'' = s''' = 0: every stream is just scaled by s'
    for (int64_t stream = 0; stream < 1 + 2 * K; ++stream) scale_loop(s1, n, a + stream * n);
    return;
  }
  std::fill_n(work, n, T(0));
  for (int64_t k = 0; k < K; ++k)
    taylor_adjoint_loop(s1, s2, s3, tz + k * n, ttz + k * n, n, work, a + (1 + k) * n,
                        a + (1 + K + k) * n);
  scale_add_loop(s1, work, n, a);
}

template <typename T>
SK_CPU_CLONES void add_column_sums(const T* SK_RESTRICT m, int64_t rows, int64_t n,
                                   T* SK_RESTRICT out) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < n; ++j) out[j] += m[r * n + j];
}

template <typename T>
SK_CPU_CLONES void add_bias(T* SK_RESTRICT m, int64_t rows, int64_t n, const T* SK_RESTRICT bias) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < n; ++j) m[r * n + j] += bias[j];
}

#define SK_INSTANTIATE_BLOCK_OPS(T)                                                            \
  template void activation_values<T>(int, T, const T*, int64_t, T*, T*);                       \
  template void activation_series<T>(int, T, const T*, int64_t, T*, T*, T*, T*);               \
  template void multiply<T>(const T*, const T*, int64_t, T*);                                  \
  template void activation_adjoint<T>(int64_t, int64_t, const T*, const T*, const T*, T*, T*); \
  template void taylor_tangents<T>(int64_t, int64_t, const T*, const T*, const T*, const T*,   \
                                   T*, T*);                                                    \
  template void activation_adjoint_order2<T>(int64_t, int64_t, const T*, const T*, const T*,   \
                                             const T*, const T*, T*, T*);                      \
  template void add_column_sums<T>(const T*, int64_t, int64_t, T*);                            \
  template void add_bias<T>(T*, int64_t, int64_t, const T*);
SK_INSTANTIATE_BLOCK_OPS(float)
SK_INSTANTIATE_BLOCK_OPS(double)
#undef SK_INSTANTIATE_BLOCK_OPS

}  // namespace sobolev::cpu
