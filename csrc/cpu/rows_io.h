// Rows between the user's tensors (scalar_t: fp64, fp32, bf16, fp16) and the block buffers
// (acc_t: double or float): the layer-1 input, the projected targets, the outputs with their
// loss sums, and the backward's seeds. Conversions happen here only; everything in between
// runs in acc_t, so bf16/fp16 inputs accumulate in fp32.
//
// Output buffers of a block are [f; u_1..u_K] (1 + K, R, m) for order 1 and
// [f; u_1..u_K; w_1..w_K] (1 + 2K, R, m) for order 2, k-major like every block buffer.
#pragma once

#include <algorithm>
#include <cstdint>

namespace sobolev::cpu {

// Squared errors of one block, in double: sum (f - y)^2, sum (u - g)^2, sum (w - g2)^2.
struct LossSums {
  double value = 0, tangent = 0, second = 0;
};

// Where the backward's seeds come from: the forward's outputs and the upstream gradients
// (null when absent; w and grad_w only for order 2), with the loss terms' scales
//   value_scale = dL/dloss 2 alpha / (B m),  tangent_scale = dL/dloss 2 beta / (B K m),
//   second_scale = dL/dloss 2 gamma / (B K m).
template <typename scalar_t, typename acc_t>
struct SeedSources {
  const scalar_t* f = nullptr;
  const scalar_t* u = nullptr;
  const scalar_t* w = nullptr;
  const scalar_t* grad_f = nullptr;
  const scalar_t* grad_u = nullptr;
  const scalar_t* grad_w = nullptr;
  acc_t value_scale = 0, tangent_scale = 0, second_scale = 0;
};

template <typename scalar_t, typename acc_t>
struct RowsIO {
  const scalar_t* x = nullptr;            // (B, d)
  const scalar_t* directions = nullptr;   // (K, d) shared or (B, K, d)
  bool shared = false;
  const acc_t* y = nullptr;            // (B, m) or null, in acc_t like the targets
  const acc_t* target_jvp = nullptr;   // (B, K, m) or null
  const acc_t* target_grad = nullptr;  // (B, m, d) or null
  const acc_t* target_hvp2 = nullptr;  // (B, K, m) or null (order 2)
  const acc_t* target_hess = nullptr;  // (B, m, d, d) or null (order 2)
  int64_t B = 0, d = 0, K = 0, m = 0, order = 1;

  bool has_target() const { return target_jvp != nullptr || target_grad != nullptr; }
  bool has_target2() const { return target_hvp2 != nullptr || target_hess != nullptr; }

  // v_k of row b: (d)
  const scalar_t* direction(int64_t b, int64_t k) const {
    return shared ? directions + k * d : directions + (b * K + k) * d;
  }

  // Layer-1 input of rows r0..r0+R: [x; v_1..v_K] as (1 + K, R, d) (the second-order input
  // tangents are 0 and never loaded). Shared directions never enter a GEMM row by row, so
  // only the values are loaded then.
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

  // g2 (K, R, m): target_hvp2 as given, or g2_k = v_k^T H_g v_k = sum_i v_i sum_l H_il v_l
  // contracted from target_hess.
  void projected_targets2(int64_t r0, int64_t R, acc_t* g2) const {
    for (int64_t k = 0; k < K; ++k)
      for (int64_t r = 0; r < R; ++r) {
        const int64_t b = r0 + r;
        acc_t* dst = g2 + (k * R + r) * m;
        if (target_hvp2 != nullptr) {
          std::copy_n(target_hvp2 + (b * K + k) * m, m, dst);
          continue;
        }
        const scalar_t* v = direction(b, k);
        for (int64_t j = 0; j < m; ++j) {
          const acc_t* hess = target_hess + (b * m + j) * d * d;
          acc_t acc = 0;
          for (int64_t i = 0; i < d; ++i) {
            acc_t row = 0;
            for (int64_t l = 0; l < d; ++l) row += hess[i * d + l] * static_cast<acc_t>(v[l]);
            acc += static_cast<acc_t>(v[i]) * row;
          }
          dst[j] = acc;
        }
      }
  }

  // out = [f; u_1..u_K (; w_1..w_K)] into f (B, m), u (B, K, m) and, order 2, w (B, K, m).
  void store_outputs(int64_t r0, int64_t R, const acc_t* out, scalar_t* f, scalar_t* u,
                     scalar_t* w) const {
    for (int64_t r = 0; r < R; ++r)
      for (int64_t j = 0; j < m; ++j) f[(r0 + r) * m + j] = static_cast<scalar_t>(out[r * m + j]);
    for (int64_t s = 0; s < order; ++s) {
      scalar_t* dst = s == 0 ? u : w;
      const acc_t* src = out + (1 + s * K) * R * m;
      for (int64_t k = 0; k < K; ++k)
        for (int64_t r = 0; r < R; ++r)
          for (int64_t j = 0; j < m; ++j)
            dst[((r0 + r) * K + k) * m + j] = static_cast<scalar_t>(src[(k * R + r) * m + j]);
    }
  }

  // The block's squared errors, in double and in row order; g, g2 (K, R, m) as projected.
  LossSums squared_errors(int64_t r0, int64_t R, const acc_t* out, const acc_t* g,
                          const acc_t* g2) const {
    LossSums sums;
    if (y != nullptr)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t j = 0; j < m; ++j) {
          const double e = double(out[r * m + j]) - double(y[(r0 + r) * m + j]);
          sums.value += e * e;
        }
    auto stream_errors = [&](const acc_t* o, const acc_t* target) {
      double sum = 0;
      for (int64_t e = 0; e < K * R * m; ++e) {
        const double diff = double(o[e]) - double(target[e]);
        sum += diff * diff;
      }
      return sum;
    };
    if (has_target()) sums.tangent = stream_errors(out + R * m, g);
    if (order == 2 && has_target2()) sums.second = stream_errors(out + (1 + K) * R * m, g2);
    return sums;
  }

  // Seeds of the backward, (1 + order K, R, m):
  //   a_f   = value_scale (f - y) + grad_f
  //   a_u_k = tangent_scale (u_k - g_k) + grad_u_k
  //   a_w_k = second_scale (w_k - g2_k) + grad_w_k      (order 2)
  // (terms without y, targets or upstream gradients are dropped).
  void seeds(int64_t r0, int64_t R, const SeedSources<scalar_t, acc_t>& src, const acc_t* g,
             const acc_t* g2, acc_t* a) const {
    for (int64_t r = 0; r < R; ++r)
      for (int64_t j = 0; j < m; ++j) {
        const int64_t idx = (r0 + r) * m + j;
        acc_t seed = 0;
        if (y != nullptr) seed = src.value_scale * (static_cast<acc_t>(src.f[idx]) - y[idx]);
        if (src.grad_f != nullptr) seed += static_cast<acc_t>(src.grad_f[idx]);
        a[r * m + j] = seed;
      }
    for (int64_t s = 0; s < order; ++s) {
      const bool second = s == 1;
      const scalar_t* out = second ? src.w : src.u;
      const scalar_t* upstream = second ? src.grad_w : src.grad_u;
      const acc_t* target = second ? (has_target2() ? g2 : nullptr) : (has_target() ? g : nullptr);
      const acc_t scale = second ? src.second_scale : src.tangent_scale;
      acc_t* dst = a + (1 + s * K) * R * m;
      for (int64_t k = 0; k < K; ++k)
        for (int64_t r = 0; r < R; ++r)
          for (int64_t j = 0; j < m; ++j) {
            const int64_t idx = ((r0 + r) * K + k) * m + j;
            const int64_t e = (k * R + r) * m + j;
            acc_t seed = 0;
            if (target != nullptr) seed = scale * (static_cast<acc_t>(out[idx]) - target[e]);
            if (upstream != nullptr) seed += static_cast<acc_t>(upstream[idx]);
            dst[e] = seed;
          }
    }
  }
};

}  // namespace sobolev::cpu
