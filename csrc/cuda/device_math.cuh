// Device-side scalar helpers: the accumulation type of each storage type, conversions, and
// the activations of ../activations.h with CUDA's math functions. Accurate versions (not
// --use_fast_math intrinsics): the fp32 results must match torch to rtol 1e-5.
#pragma once

#ifndef SK_HOST_EMULATION  // emulation/host_shim.h has its own bf16 and fp16
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

#include "activations.h"

namespace sobolev::cuda {

// Storage type -> accumulation type: fp64 stays fp64, everything else accumulates in fp32.
template <typename scalar_t>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};
template <typename scalar_t>
using acc_type = typename Acc<scalar_t>::type;

template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t to_acc(scalar_t v) {
  return static_cast<acc_t>(v);
}
template <>
__device__ __forceinline__ float to_acc<float, __nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float to_acc<float, __half>(__half v) {
  return __half2float(v);
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ scalar_t from_acc(acc_t v) {
  return static_cast<scalar_t>(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16, float>(float v) {
  return __float2bfloat16(v);
}
template <>
__device__ __forceinline__ __half from_acc<__half, float>(float v) {
  return __float2half(v);
}

template <typename T>
struct CudaMath;

template <>
struct CudaMath<float> {
  static __device__ __forceinline__ float tanh(float z) { return tanhf(z); }
  static __device__ __forceinline__ float sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }
  static __device__ __forceinline__ float log1p_exp(float z) { return log1pf(expf(z)); }
  static __device__ __forceinline__ float sin(float z) { return sinf(z); }
  static __device__ __forceinline__ float cos(float z) { return cosf(z); }
  static __device__ __forceinline__ float erf(float z) { return erff(z); }
  static __device__ __forceinline__ float exp(float z) { return expf(z); }
};

template <>
struct CudaMath<double> {
  static __device__ __forceinline__ double tanh(double z) { return ::tanh(z); }
  static __device__ __forceinline__ double sigmoid(double z) { return 1.0 / (1.0 + ::exp(-z)); }
  static __device__ __forceinline__ double log1p_exp(double z) { return ::log1p(::exp(z)); }
  static __device__ __forceinline__ double sin(double z) { return ::sin(z); }
  static __device__ __forceinline__ double cos(double z) { return ::cos(z); }
  static __device__ __forceinline__ double erf(double z) { return ::erf(z); }
  static __device__ __forceinline__ double exp(double z) { return ::exp(z); }
};

// s, s', s'', s''' of activation `act`. The id is uniform across the grid, so the switch is a
// uniform branch: one kernel per dtype instead of one per (dtype, activation). Unused outputs
// (s''' for order 1) are removed once inlined.
template <typename T>
__device__ __forceinline__ void activation_at(int act, T slope, T z, T& s, T& s1, T& s2, T& s3) {
  using M = CudaMath<T>;
  switch (act) {
    case kTanh: activation_series<kTanh, M>(z, slope, s, s1, s2, s3); break;
    case kSigmoid: activation_series<kSigmoid, M>(z, slope, s, s1, s2, s3); break;
    case kSoftplus: activation_series<kSoftplus, M>(z, slope, s, s1, s2, s3); break;
    case kSilu: activation_series<kSilu, M>(z, slope, s, s1, s2, s3); break;
    case kSin: activation_series<kSin, M>(z, slope, s, s1, s2, s3); break;
    case kGelu: activation_series<kGelu, M>(z, slope, s, s1, s2, s3); break;
    case kRelu: activation_series<kRelu, M>(z, slope, s, s1, s2, s3); break;
    case kLeakyRelu: activation_series<kLeakyRelu, M>(z, slope, s, s1, s2, s3); break;
    case kGeluTanh: activation_series<kGeluTanh, M>(z, slope, s, s1, s2, s3); break;
    default: activation_series<kIdentity, M>(z, slope, s, s1, s2, s3); break;
  }
}

}  // namespace sobolev::cuda
