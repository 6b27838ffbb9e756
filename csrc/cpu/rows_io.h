// Rows between the user's tensors (scalar_t: fp64, fp32, bf16, fp16) and the block buffers
// (acc_t: double or float): the layer-1 input, the projected targets, the outputs with their
// loss sums, and the backward's seeds. Conversions happen here only; everything in between
// runs in acc_t, so bf16/fp16 inputs accumulate in fp32.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>

namespace sobolev::cpu {

template <typename scalar_t, typename acc_t>
struct RowsIO {
  const scalar_t* x = nullptr;            // (B, d)
  const scalar_t* directions = nullptr;   // (K, d) shared or (B, K, d)
  bool shared = false;
  const acc_t* y = nullptr;            // (B, m) or null, in acc_t like the targets
  const acc_t* target_jvp = nullptr;   // (B, K, m) or null
  const acc_t* target_grad = nullptr;  // (B, m, d) or null
  int64_t B = 0, d = 0, K = 0, m = 0;

  bool has_target() const { return target_jvp != nullptr || target_grad != nullptr; }

  // v_k of row b: (d)
  const scalar_t* direction(int64_t b, int64_t k) const {
    return shared ? directions + k * d : directions + (b * K + k) * d;
  }

  // Layer-1 input of rows r0..r0+R: [x; v_1..v_K] as (1 + K, R, d). Shared directions never
  // enter a GEMM row by row, so only the values are loaded then.
  void load_input(int64_t r0, int64_t R, acc_t* in) const {
    for (int64_t r = 0; r < R; ++r)
      for (int64_t i = 0; i < d; ++i) in[r * d + i] = static_cast<acc_t>(x[(r0 + r) * d + i]);
    if (shared) return;
    for (int64_t k = 0; k < K; ++k)
      for (int64_t r = 0; r < R; ++r) {
        const scalar_t* v = direction(r0 + r, k);
        acc_t* dst = in + ((1 + k) * R + r) * d;
        for (int64_t i = 0; i < d; ++i) dst[i] = static_cast<acc_t>(v[i]);
      }
  }

  // g (K, R, m): target_jvp as given, or g_k = J_g v_k contracted from target_grad.
  void projected_targets(int64_t r0, int64_t R, acc_t* g) const {
    for (int64_t k = 0; k < K; ++k)
      for (int64_t r = 0; r < R; ++r) {
        const int64_t b = r0 + r;
        acc_t* dst = g + (k * R + r) * m;
        if (target_jvp != nullptr) {
          std::copy_n(target_jvp + (b * K + k) * m, m, dst);
          continue;
        }
        const scalar_t* v = direction(b, k);
        for (int64_t j = 0; j < m; ++j) {
          const acc_t* jac_row = target_grad + (b * m + j) * d;
          acc_t acc = 0;
          for (int64_t i = 0; i < d; ++i) acc += jac_row[i] * static_cast<acc_t>(v[i]);
          dst[j] = acc;
        }
      }
  }

  // out = [f; u_1..u_K] (1 + K, R, m) into f (B, m) and u (B, K, m).
  void store_outputs(int64_t r0, int64_t R, const acc_t* out, scalar_t* f, scalar_t* u) const {
    for (int64_t r = 0; r < R; ++r)
      for (int64_t j = 0; j < m; ++j) f[(r0 + r) * m + j] = static_cast<scalar_t>(out[r * m + j]);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t j = 0; j < m; ++j)
          u[((r0 + r) * K + k) * m + j] = static_cast<scalar_t>(out[((1 + k) * R + r) * m + j]);
  }

  // (sum (f - y)^2, sum (u - g)^2) over the block, in double and in row order.
  std::pair<double, double> squared_errors(int64_t r0, int64_t R, const acc_t* out,
                                           const acc_t* g) const {
    double value = 0, tangent = 0;
    if (y != nullptr)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t j = 0; j < m; ++j) {
          const double e = double(out[r * m + j]) - double(y[(r0 + r) * m + j]);
          value += e * e;
        }
    if (has_target())
      for (int64_t e = 0; e < K * R * m; ++e) {
        const double diff = double(out[R * m + e]) - double(g[e]);
        tangent += diff * diff;
      }
    return {value, tangent};
  }

  // Seeds of the backward, (1 + K, R, m):
  //   a_f   = value_scale * (f - y) + grad_f        value_scale   = dL/dloss * 2 alpha / (B m)
  //   a_u_k = tangent_scale * (u_k - g_k) + grad_u  tangent_scale = dL/dloss * 2 beta / (B K m)
  // (terms without y, targets, grad_f or grad_u are dropped).
  void seeds(int64_t r0, int64_t R, const scalar_t* f, const scalar_t* u, const scalar_t* grad_f,
             const scalar_t* grad_u, acc_t value_scale, acc_t tangent_scale, const acc_t* g,
             acc_t* a) const {
    for (int64_t r = 0; r < R; ++r)
      for (int64_t j = 0; j < m; ++j) {
        const int64_t src = (r0 + r) * m + j;
        acc_t seed = 0;
        if (y != nullptr) seed = value_scale * (static_cast<acc_t>(f[src]) - y[src]);
        if (grad_f != nullptr) seed += static_cast<acc_t>(grad_f[src]);
        a[r * m + j] = seed;
      }
    for (int64_t k = 0; k < K; ++k)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t j = 0; j < m; ++j) {
          const int64_t src = ((r0 + r) * K + k) * m + j;
          const int64_t dst = (k * R + r) * m + j;
          acc_t seed = 0;
          if (has_target()) seed = tangent_scale * (static_cast<acc_t>(u[src]) - g[dst]);
          if (grad_u != nullptr) seed += static_cast<acc_t>(grad_u[src]);
          a[R * m + dst] = seed;
        }
  }
};

}  // namespace sobolev::cpu
