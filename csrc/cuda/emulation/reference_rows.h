// The emulation's oracle: one test problem (Case, drawn by make_problem) and a direct
// row-by-row implementation of DESIGN section 2 and, for order 2, of docs/math.md, in double
// (reference). emulate_kernels.cpp runs the CUDA kernels on the same problem and compares.
// Host-only, torch-free.
#pragma once

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "activations.h"

namespace sobolev::emulation {

struct HostMath {
  static double tanh(double z) { return std::tanh(z); }
  static double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }
  static double log1p_exp(double z) { return std::log1p(std::exp(z)); }
  static double sin(double z) { return std::sin(z); }
  static double cos(double z) { return std::cos(z); }
  static double erf(double z) { return std::erf(z); }
  static double exp(double z) { return std::exp(z); }
};

// s and its first three derivatives at z: d[0..3]
inline void series(int act, double slope, double z, double (&d)[4]) {
  using namespace sobolev;
  switch (act) {
    case kTanh: return activation_series<kTanh, HostMath>(z, slope, d[0], d[1], d[2], d[3]);
    case kSigmoid: return activation_series<kSigmoid, HostMath>(z, slope, d[0], d[1], d[2], d[3]);
    case kSoftplus:
      return activation_series<kSoftplus, HostMath>(z, slope, d[0], d[1], d[2], d[3]);
    case kSilu: return activation_series<kSilu, HostMath>(z, slope, d[0], d[1], d[2], d[3]);
    case kSin: return activation_series<kSin, HostMath>(z, slope, d[0], d[1], d[2], d[3]);
    case kGelu: return activation_series<kGelu, HostMath>(z, slope, d[0], d[1], d[2], d[3]);
    case kRelu: return activation_series<kRelu, HostMath>(z, slope, d[0], d[1], d[2], d[3]);
    case kLeakyRelu:
      return activation_series<kLeakyRelu, HostMath>(z, slope, d[0], d[1], d[2], d[3]);
    case kGeluTanh:
      return activation_series<kGeluTanh, HostMath>(z, slope, d[0], d[1], d[2], d[3]);
    default: return activation_series<kIdentity, HostMath>(z, slope, d[0], d[1], d[2], d[3]);
  }
}

enum class Second { kNone, kHvp2, kHess };  // the second-order target of an order-2 case

struct Case {
  std::string name;
  int act = 0, batch = 7, d = 3, K = 2;
  std::vector<int> hidden = {5, 4};
  int m = 2;
  int order = 1;
  bool bias = true, shared = false, y = true, grad_target = true, jvp_target = false;
  Second second = Second::kHess;  // order 2 only
  bool grad_f = false, grad_u = false, grad_w = false, need_x = true, need_params = true;
  int grid = 2;
  size_t smem_limit = 200 * 1024;  // small values force the global-memory tile buffers
  double grad_loss = 0.7;          // the upstream gradient of the loss
};

// Everything in double; the kernels run on copies in T.
struct Problem {
  Case c;
  std::vector<int> widths;
  std::vector<double> x, dirs, y, target_jvp, target_grad, target_hvp2, target_hess, grad_f,
      grad_u, grad_w;
  std::vector<std::vector<double>> W, b;
  double grad_loss = 0.7, alpha = 0.6, beta = 1.3, gamma = 0.8, slope = 0.1;
};

inline Problem make_problem(const Case& c, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal;
  auto draw = [&](size_t n, double scale = 1.0) {
    std::vector<double> v(n);
    for (auto& e : v) e = scale * normal(gen);
    return v;
  };
  Problem p;
  p.c = c;
  p.grad_loss = c.grad_loss;
  p.widths = {c.d};
  for (int n : c.hidden) p.widths.push_back(n);
  p.widths.push_back(c.m);
  const size_t B = c.batch;
  p.x = draw(B * c.d);
  p.dirs = draw((c.shared ? 1 : B) * c.K * c.d);
  if (c.y) p.y = draw(B * c.m);
  if (c.jvp_target) p.target_jvp = draw(B * c.K * c.m);
  if (c.grad_target) p.target_grad = draw(B * c.m * c.d);
  if (c.order == 2 && c.second == Second::kHvp2) p.target_hvp2 = draw(B * c.K * c.m);
  if (c.order == 2 && c.second == Second::kHess) p.target_hess = draw(B * c.m * c.d * c.d);
  if (c.grad_f) p.grad_f = draw(B * c.m, 0.1);
  if (c.grad_u) p.grad_u = draw(B * c.K * c.m, 0.1);
  if (c.order == 2 && c.grad_w) p.grad_w = draw(B * c.K * c.m, 0.1);
  for (size_t l = 1; l < p.widths.size(); ++l) {
    p.W.push_back(draw(size_t(p.widths[l]) * p.widths[l - 1], 1.0 / std::sqrt(p.widths[l - 1])));
    if (c.bias) p.b.push_back(draw(p.widths[l], 0.5));
  }
  return p;
}

struct Result {
  double loss = 0;
  std::vector<double> f, u, w, grad_x;
  std::vector<std::vector<double>> grad_W, grad_b;
};

// DESIGN section 2 and docs/math.md (order 2), one row and one stream at a time. Streams:
// 0 the values, 1..K the tangents, K+1..2K the second-order tangents (order 2).
inline Result reference(const Problem& p) {
  const Case& c = p.c;
  const int L = int(p.W.size()), K = c.K, m = c.m, d = c.d, B = c.batch;
  const int S = 1 + c.order * K;
  const bool second = c.order == 2;
  const bool has_target2 = second && c.second != Second::kNone;
  Result r;
  r.f.assign(size_t(B) * m, 0);
  r.u.assign(size_t(B) * K * m, 0);
  if (second) r.w.assign(size_t(B) * K * m, 0);
  r.grad_x.assign(size_t(B) * d, 0);
  for (int l = 0; l < L; ++l) {
    r.grad_W.emplace_back(p.W[l].size(), 0.0);
    r.grad_b.emplace_back(p.widths[l + 1], 0.0);
  }
  double value_sq = 0, tangent_sq = 0, second_sq = 0;
  for (int row = 0; row < B; ++row) {
    auto direction = [&](int k) {
      return p.dirs.data() + (c.shared ? k * d : (row * K + k) * d);
    };
    // in[s][l]: input of layer l+1 (h, t or tt), zs[s][l]: its output z, tz or ttz
    std::vector<std::vector<std::vector<double>>> in(S), zs(S);
    in[0].push_back(std::vector<double>(p.x.begin() + row * d, p.x.begin() + (row + 1) * d));
    for (int k = 0; k < K; ++k) {
      in[1 + k].push_back(std::vector<double>(direction(k), direction(k) + d));
      if (second) in[1 + K + k].push_back(std::vector<double>(d, 0.0));  // tt_0 = 0
    }
    for (int l = 0; l < L; ++l) {
      const int n_in = p.widths[l], n_out = p.widths[l + 1];
      for (int s = 0; s < S; ++s) {
        std::vector<double> z(n_out, 0.0);
        for (int i = 0; i < n_out; ++i) {
          for (int j = 0; j < n_in; ++j) z[i] += p.W[l][i * n_in + j] * in[s][l][j];
          if (s == 0 && c.bias) z[i] += p.b[l][i];
        }
        zs[s].push_back(z);
      }
      if (l + 1 == L) break;
      for (int s = 0; s < S; ++s) in[s].emplace_back(n_out);
      for (int i = 0; i < n_out; ++i) {
        double a[4];
        series(c.act, p.slope, zs[0][l][i], a);
        in[0][l + 1][i] = a[0];
        for (int k = 1; k <= K; ++k) {
          const double tz = zs[k][l][i];
          in[k][l + 1][i] = a[1] * tz;
          // tt = s' ttz + s'' tz^2
          if (second) in[K + k][l + 1][i] = a[1] * zs[K + k][l][i] + a[2] * tz * tz;
        }
      }
    }
    // outputs, loss terms and seeds
    std::vector<std::vector<double>> a(S, std::vector<double>(m, 0.0));
    const double scale_f = p.grad_loss * 2 * p.alpha / (double(B) * m);
    const double scale_u = p.grad_loss * 2 * p.beta / (double(B) * K * m);
    const double scale_w = p.grad_loss * 2 * p.gamma / (double(B) * K * m);
    for (int j = 0; j < m; ++j) {
      const double f = zs[0][L - 1][j];
      r.f[row * m + j] = f;
      if (c.y) {
        value_sq += (f - p.y[row * m + j]) * (f - p.y[row * m + j]);
        a[0][j] += scale_f * (f - p.y[row * m + j]);
      }
      if (c.grad_f) a[0][j] += p.grad_f[row * m + j];
      for (int k = 0; k < K; ++k) {
        const int idx = (row * K + k) * m + j;
        const double* v = direction(k);
        const double u = zs[1 + k][L - 1][j];
        r.u[idx] = u;
        double g = 0;
        if (c.jvp_target) g = p.target_jvp[idx];
        if (c.grad_target)
          for (int i = 0; i < d; ++i) g += p.target_grad[(row * m + j) * d + i] * v[i];
        if (c.jvp_target || c.grad_target) {
          tangent_sq += (u - g) * (u - g);
          a[1 + k][j] += scale_u * (u - g);
        }
        if (c.grad_u) a[1 + k][j] += p.grad_u[idx];
        if (!second) continue;
        const double w = zs[1 + K + k][L - 1][j];
        r.w[idx] = w;
        double g2 = 0;  // v^T H v
        if (c.second == Second::kHvp2) g2 = p.target_hvp2[idx];
        if (c.second == Second::kHess)
          for (int i = 0; i < d; ++i)
            for (int l = 0; l < d; ++l)
              g2 += v[i] * p.target_hess[((row * m + j) * d + i) * d + l] * v[l];
        if (has_target2) {
          second_sq += (w - g2) * (w - g2);
          a[1 + K + k][j] += scale_w * (w - g2);
        }
        if (c.grad_w) a[1 + K + k][j] += p.grad_w[idx];
      }
    }
    // adjoints, top down
    for (int l = L - 1; l >= 0; --l) {
      const int n_in = p.widths[l], n_out = p.widths[l + 1];
      std::vector<std::vector<double>> a_in(S, std::vector<double>(n_in, 0.0));
      for (int s = 0; s < S; ++s)
        for (int i = 0; i < n_out; ++i) {
          for (int j = 0; j < n_in; ++j) {
            r.grad_W[l][i * n_in + j] += a[s][i] * in[s][l][j];
            a_in[s][j] += a[s][i] * p.W[l][i * n_in + j];
          }
          if (s == 0) r.grad_b[l][i] += a[0][i];
        }
      if (l == 0) {
        for (int j = 0; j < d; ++j) r.grad_x[row * d + j] = a_in[0][j];
        break;
      }
      // through the activation below: z = zs[0][l - 1]
      for (int j = 0; j < n_in; ++j) {
        double s[4];
        series(c.act, p.slope, zs[0][l - 1][j], s);
        // a_z = a_h s' + s'' sum_k (a_t_k tz_k + a_tt_k ttz_k) + s''' sum_k a_tt_k tz_k^2
        // a_tz_k = a_t_k s' + 2 s'' a_tt_k tz_k,  a_ttz_k = a_tt_k s'
        double a_z = a_in[0][j] * s[1];
        for (int k = 1; k <= K; ++k) {
          const double tz = zs[k][l - 1][j], a_t = a_in[k][j];
          a_z += s[2] * a_t * tz;
          a_in[k][j] = a_t * s[1];
          if (!second) continue;
          const double ttz = zs[K + k][l - 1][j], a_tt = a_in[K + k][j];
          a_z += s[2] * a_tt * ttz + s[3] * a_tt * tz * tz;
          a_in[k][j] += 2 * s[2] * a_tt * tz;
          a_in[K + k][j] = a_tt * s[1];
        }
        a_in[0][j] = a_z;
      }
      a = a_in;
    }
  }
  if (c.y) r.loss += p.alpha * value_sq / (double(B) * m);
  if (c.jvp_target || c.grad_target) r.loss += p.beta * tangent_sq / (double(B) * K * m);
  if (has_target2) r.loss += p.gamma * second_sq / (double(B) * K * m);
  return r;
}

}  // namespace sobolev::emulation
