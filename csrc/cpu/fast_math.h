// Transcendental functions for the CPU kernels, as the Math policy of activations.h.
//
// glibc's scalar tanhf costs ~16 ns, which alone would take longer than a whole training step
// of the benchmark MLP. The float versions here are branch-free (selects instead of branches,
// no calls), so the compiler vectorises the activation loops around them. They use only
// exact series coefficients (Taylor, atanh series) on reduced ranges, and stay within a few
// ulp of the correctly rounded results. Double uses the C library, since fp64 is the accuracy
// reference (rtol 1e-10 against torch), not a speed target. erf is the C library's in both:
// only the exact gelu uses it, and its loops stay scalar.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace sobolev::cpu {

inline float bits_to_float(int32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// e^x. x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor polynomial to degree 7 (remainder
// below 6e-9 relative), 2^n built from exponent bits. x is clamped to [-87, 88], so 2^n stays a
// normal float; wherever e^x is used here the clamp changes nothing visible next to 1.
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float round_shift = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + round_shift) - round_shift;
  // ln 2 = hi + lo with hi = 355/512 exact in 9 bits, so n * hi has no rounding error
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * bits_to_float((static_cast<int32_t>(n) + 127) << 23);
}

// tanh z. For |z| < 0.4 the odd Taylor series to z^13 (next term below 4e-9 relative); above,
// 1 - 2 / (e^{2|z|} + 1), whose cancellation is harmless once tanh > 0.38. Both are computed
// and one is selected, so loops over it have no branch.
inline float fast_tanh(float z) {
  const float a = std::fabs(z);
  const float big = 1.0f - 2.0f / (fast_exp(2.0f * a) + 1.0f);
  const float z2 = z * z;
  float p = 21844.0f / 6081075.0f;
  p = p * z2 - 1382.0f / 155925.0f;
  p = p * z2 + 62.0f / 2835.0f;
  p = p * z2 - 17.0f / 315.0f;
  p = p * z2 + 2.0f / 15.0f;
  p = p * z2 - 1.0f / 3.0f;
  const float small = z + z * z2 * p;
  return a < 0.4f ? small : std::copysign(big, z);
}

inline float fast_sigmoid(float z) {
  return 1.0f / (1.0f + fast_exp(-z));
}

// log(1 + e^z) = max(z, 0) + log1p(q), q = e^{-|z|} in (0, 1], with
// log1p(q) = 2 atanh(w), w = q / (2 + q) <= 1/3: 2 (w + w^3/3 + ... + w^17/17), remainder
// below 2e-9 relative and no cancellation for small q.
inline float fast_log1p_exp(float z) {
  const float q = fast_exp(-std::fabs(z));
  const float w = q / (2.0f + q);
  const float w2 = w * w;
  float p = 1.0f / 17.0f;
  p = p * w2 + 1.0f / 15.0f;
  p = p * w2 + 1.0f / 13.0f;
  p = p * w2 + 1.0f / 11.0f;
  p = p * w2 + 1.0f / 9.0f;
  p = p * w2 + 1.0f / 7.0f;
  p = p * w2 + 1.0f / 5.0f;
  p = p * w2 + 1.0f / 3.0f;
  p = p * w2 + 1.0f;
  return std::max(z, 0.0f) + 2.0f * w * p;
}

// sin z and cos z. z = n pi/2 + r, reduced in double (exact enough for |z| < 2^20), then
// Taylor polynomials on |r| <= pi/4 (remainders below 2e-9) and the quadrant n mod 4.
inline void fast_sincos(float z, float& sin_z, float& cos_z) {
  const double zd = z;
  const double round_shift = 6755399441055744.0;  // 1.5 * 2^52
  const double n = (zd * 0.63661977236758134308 + round_shift) - round_shift;
  const float r = static_cast<float>((zd - n * 1.5707963267948966) - n * 6.123233995736766e-17);
  const float r2 = r * r;
  float ps = 1.0f / 362880.0f;
  ps = ps * r2 - 1.0f / 5040.0f;
  ps = ps * r2 + 1.0f / 120.0f;
  ps = ps * r2 - 1.0f / 6.0f;
  const float sin_r = r + r * r2 * ps;
  float pc = -1.0f / 3628800.0f;
  pc = pc * r2 + 1.0f / 40320.0f;
  pc = pc * r2 - 1.0f / 720.0f;
  pc = pc * r2 + 1.0f / 24.0f;
  pc = pc * r2 - 0.5f;
  const float cos_r = 1.0f + r2 * pc;
  const int32_t quadrant = static_cast<int32_t>(n) & 3;
  // quadrant q: sin z = (sin r, cos r, -sin r, -cos r)[q],
  //             cos z = (cos r, -sin r, -cos r, sin r)[q]
  const float s = (quadrant & 1) ? cos_r : sin_r;
  const float c = (quadrant & 1) ? sin_r : cos_r;
  sin_z = (quadrant & 2) ? -s : s;
  cos_z = ((quadrant + 1) & 2) ? -c : c;
}

template <typename T>
struct CpuMath;

template <>
struct CpuMath<float> {
  static float tanh(float z) { return fast_tanh(z); }
  static float sigmoid(float z) { return fast_sigmoid(z); }
  static float log1p_exp(float z) { return fast_log1p_exp(z); }
  static float sin(float z) {
    float s, c;
    fast_sincos(z, s, c);
    return s;
  }
  static float cos(float z) {
    float s, c;
    fast_sincos(z, s, c);
    return c;
  }
  static float erf(float z) { return std::erf(z); }
  static float exp(float z) { return fast_exp(z); }
};

template <>
struct CpuMath<double> {
  static double tanh(double z) { return std::tanh(z); }
  static double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }
  static double log1p_exp(double z) { return std::log1p(std::exp(z)); }  // as torch's softplus
  static double sin(double z) { return std::sin(z); }
  static double cos(double z) { return std::cos(z); }
  static double erf(double z) { return std::erf(z); }
  static double exp(double z) { return std::exp(z); }
};

}  // namespace sobolev::cpu
