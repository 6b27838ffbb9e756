// Activation functions and their first three derivatives, shared by the CPU and CUDA kernels.
//
// The same formulas as sobolev_kernels/activations.py (kernel_id 0..9), including torch's
// conventions where a function is not smooth: relu'(0) = 0 and softplus is linear above
// z > 20. The transcendental functions come from a Math policy (fast vectorisable versions on
// the CPU, CUDA's own in device code), so each formula is written once. Torch-free: this
// header is compiled by nvcc without any torch include.
#pragma once

#ifdef __CUDACC__
#define SK_HD __host__ __device__ __forceinline__
#else
#define SK_HD inline
#endif

namespace sobolev {

enum ActivationId : int {
  kTanh = 0,
  kSigmoid = 1,
  kSoftplus = 2,
  kSilu = 3,
  kSin = 4,
  kGelu = 5,
  kRelu = 6,
  kLeakyRelu = 7,
  kIdentity = 8,
  kGeluTanh = 9,
};
constexpr int kNumActivations = 10;

// relu, leaky_relu and identity have s'' = s''' = 0: the kernels skip the terms in them.
SK_HD constexpr bool is_smooth(int act) {
  return act != kRelu && act != kLeakyRelu && act != kIdentity;
}

// torch.nn.functional.softplus(beta=1, threshold=20) returns z itself above the threshold.
constexpr double kSoftplusThreshold = 20.0;
// gelu_tanh, the tanh approximation of gelu: 0.5 z (1 + tanh(c (z + a z^3)))
constexpr double kGeluC = 0.79788456080286535588;  // sqrt(2 / pi)
constexpr double kGeluA = 0.044715;
constexpr double kSqrt1_2 = 0.70710678118654752440;      // sqrt(1 / 2), for gelu's erf
constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1 / sqrt(2 pi)

// s = s(z), s1 = s'(z), s2 = s''(z), s3 = s'''(z) for activation ACT (s''' is what the
// backward of order 2 needs). Math provides tanh, sigmoid, log1p_exp (log(1 + e^z) for
// z <= 20), sin, cos, erf and exp of T. Unused outputs are removed by the compiler once
// inlined.
template <int ACT, typename Math, typename T>
SK_HD void activation_series(T z, T slope, T& s, T& s1, T& s2, T& s3) {
  if constexpr (ACT == kTanh) {
    // s' = 1 - t^2,  s'' = -2 t s',  s''' = s' (6 t^2 - 2)
    const T t = Math::tanh(z);
    s = t;
    s1 = T(1) - t * t;
    s2 = T(-2) * t * s1;
    s3 = s1 * (T(6) * t * t - T(2));
  } else if constexpr (ACT == kSigmoid) {
    // s' = p (1 - p),  s'' = s' (1 - 2p),  s''' = s' (1 - 6p + 6p^2)
    const T p = Math::sigmoid(z);
    s = p;
    s1 = p * (T(1) - p);
    s2 = s1 * (T(1) - T(2) * p);
    s3 = s1 * (T(1) - T(6) * p + T(6) * p * p);
  } else if constexpr (ACT == kSoftplus) {
    // s' = p,  s'' = p (1 - p),  s''' = p (1 - p) (1 - 2p); linear above the threshold:
    // s' = 1 and s'' = s''' = 0 there
    const bool linear = z > T(kSoftplusThreshold);
    const T p = Math::sigmoid(z);
    const T dp = p * (T(1) - p);
    s = linear ? z : Math::log1p_exp(z);
    s1 = linear ? T(1) : p;
    s2 = linear ? T(0) : dp;
    s3 = linear ? T(0) : dp * (T(1) - T(2) * p);
  } else if constexpr (ACT == kSilu) {
    // s = z p, s' = p (1 + z (1 - p)), s'' = p' (2 + z q), s''' = p' (q (3 + z q) - 2 z p')
    // with p = sigma(z), p' = p (1 - p), q = 1 - 2p (so p'' = p' q)
    const T p = Math::sigmoid(z);
    const T dp = p * (T(1) - p);
    const T q = T(1) - T(2) * p;
    s = z * p;
    s1 = p * (T(1) + z * (T(1) - p));
    s2 = dp * (T(2) + z * q);
    s3 = dp * (q * (T(3) + z * q) - T(2) * z * dp);
  } else if constexpr (ACT == kSin) {
    const T sn = Math::sin(z);
    const T cs = Math::cos(z);
    s = sn;
    s1 = cs;
    s2 = -sn;
    s3 = -cs;
  } else if constexpr (ACT == kGelu) {
    // exact (erf) gelu: s = z Phi(z), Phi the standard normal cdf (torch's formula
    // (1 + erf(z / sqrt 2)) / 2), phi its pdf, phi' = -z phi:
    // s' = Phi + z phi,  s'' = phi (2 - z^2),  s''' = phi z (z^2 - 4)
    const T cdf = T(0.5) * (T(1) + Math::erf(z * T(kSqrt1_2)));
    const T pdf = T(kInvSqrt2Pi) * Math::exp(T(-0.5) * z * z);
    s = z * cdf;
    s1 = cdf + z * pdf;
    s2 = pdf * (T(2) - z * z);
    s3 = pdf * z * (z * z - T(4));
  } else if constexpr (ACT == kGeluTanh) {
    // s = z (1 + T) / 2 with T = tanh(w), w = c (z + a z^3), S = 1 - T^2, S' = -2 T S w':
    // s'   = (1 + T) / 2 + z S w' / 2                w'   = c (1 + 3 a z^2)
    // s''  = S P,  P = w' + z (w'' - 2 T w'^2) / 2    w''  = 6 a c z
    // s''' = S (P' - 2 T w' P),                       w''' = 6 a c
    //        P' = 3 w'' / 2 - T w'^2 + z (w''' - 2 S w'^3 - 4 T w' w'') / 2
    const T c = T(kGeluC), a = T(kGeluA);
    const T z2 = z * z;
    const T t = Math::tanh(c * (z + a * z2 * z));
    const T sech2 = T(1) - t * t;
    const T dw = c * (T(1) + T(3) * a * z2);
    const T d2w = T(6) * c * a * z;
    const T d3w = T(6) * c * a;
    const T poly = dw + T(0.5) * z * (d2w - T(2) * t * dw * dw);
    const T dpoly = T(1.5) * d2w - t * dw * dw +
                    T(0.5) * z * (d3w - T(2) * sech2 * dw * dw * dw - T(4) * t * dw * d2w);
    s = T(0.5) * z * (T(1) + t);
    s1 = T(0.5) * (T(1) + t) + T(0.5) * z * sech2 * dw;
    s2 = sech2 * poly;
    s3 = sech2 * (dpoly - T(2) * t * dw * poly);
  } else if constexpr (ACT == kRelu) {
    // relu'(0) = 0, as in torch
    const bool pos = z > T(0);
    s = pos ? z : T(0);
    s1 = pos ? T(1) : T(0);
    s2 = T(0);
    s3 = T(0);
  } else if constexpr (ACT == kLeakyRelu) {
    const bool pos = z > T(0);
    s = pos ? z : z * slope;
    s1 = pos ? T(1) : slope;
    s2 = T(0);
    s3 = T(0);
  } else {
    static_assert(ACT == kIdentity, "unknown activation id");
    s = z;
    s1 = T(1);
    s2 = T(0);
    s3 = T(0);
  }
}

}  // namespace sobolev
