// Runs the CUDA kernels (forward, backward, partial sums) on the host through host_shim.h and
// compares them with a direct row-by-row implementation of DESIGN section 2. Exit status 0
// when every case agrees. Built and run by tests/test_cuda_backend.py:
//   g++ -std=c++20 -O1 -pthread -I csrc csrc/cuda/emulation/emulate_kernels.cpp
#include "cuda/emulation/host_shim.h"
// (the shim comes first: it defines the CUDA keywords the kernels use)
#include <cstdio>
#include <random>
#include <string>

#include "cuda/backward_kernel.cuh"
#include "cuda/forward_kernel.cuh"

namespace {

using sobolev::cuda::KernelArgs;
using sobolev::cuda::SobolevLaunch;

struct HostMath {
  static double tanh(double z) { return std::tanh(z); }
  static double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }
  static double log1p_exp(double z) { return std::log1p(std::exp(z)); }
  static double sin(double z) { return std::sin(z); }
  static double cos(double z) { return std::cos(z); }
};

void series(int act, double slope, double z, double& s, double& s1, double& s2) {
  using namespace sobolev;
  switch (act) {
    case kTanh: return activation_series<kTanh, HostMath>(z, slope, s, s1, s2);
    case kSigmoid: return activation_series<kSigmoid, HostMath>(z, slope, s, s1, s2);
    case kSoftplus: return activation_series<kSoftplus, HostMath>(z, slope, s, s1, s2);
    case kSilu: return activation_series<kSilu, HostMath>(z, slope, s, s1, s2);
    case kSin: return activation_series<kSin, HostMath>(z, slope, s, s1, s2);
    case kGelu: return activation_series<kGelu, HostMath>(z, slope, s, s1, s2);
    case kRelu: return activation_series<kRelu, HostMath>(z, slope, s, s1, s2);
    case kLeakyRelu: return activation_series<kLeakyRelu, HostMath>(z, slope, s, s1, s2);
    default: return activation_series<kIdentity, HostMath>(z, slope, s, s1, s2);
  }
}

struct Case {
  std::string name;
  int act = 0, batch = 7, d = 3, K = 2;
  std::vector<int> hidden = {5, 4};
  int m = 2;
  bool bias = true, shared = false, y = true, grad_target = true, jvp_target = false;
  bool grad_f = false, grad_u = false, need_x = true, need_params = true;
  int grid = 2;
  size_t smem_limit = 200 * 1024;  // small values force the global-memory tile buffers
};

// Everything in double; the kernels run on copies in T.
struct Problem {
  Case c;
  std::vector<int> widths;
  std::vector<double> x, dirs, y, target_jvp, target_grad, grad_f, grad_u;
  std::vector<std::vector<double>> W, b;
  double grad_loss = 0.7, alpha = 0.6, beta = 1.3, slope = 0.1;
};

Problem make_problem(const Case& c, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal;
  auto draw = [&](size_t n, double scale = 1.0) {
    std::vector<double> v(n);
    for (auto& e : v) e = scale * normal(gen);
    return v;
  };
  Problem p;
  p.c = c;
  p.widths = {c.d};
  for (int n : c.hidden) p.widths.push_back(n);
  p.widths.push_back(c.m);
  const size_t B = c.batch;
  p.x = draw(B * c.d);
  p.dirs = draw((c.shared ? 1 : B) * c.K * c.d);
  if (c.y) p.y = draw(B * c.m);
  if (c.jvp_target) p.target_jvp = draw(B * c.K * c.m);
  if (c.grad_target) p.target_grad = draw(B * c.m * c.d);
  if (c.grad_f) p.grad_f = draw(B * c.m, 0.1);
  if (c.grad_u) p.grad_u = draw(B * c.K * c.m, 0.1);
  for (size_t l = 1; l < p.widths.size(); ++l) {
    p.W.push_back(draw(size_t(p.widths[l]) * p.widths[l - 1], 1.0 / std::sqrt(p.widths[l - 1])));
    if (c.bias) p.b.push_back(draw(p.widths[l], 0.5));
  }
  return p;
}

struct Result {
  double loss = 0;
  std::vector<double> f, u, grad_x;
  std::vector<std::vector<double>> grad_W, grad_b;
};

// DESIGN section 2, one row and one stream at a time.
Result reference(const Problem& p) {
  const Case& c = p.c;
  const int L = int(p.W.size()), K = c.K, m = c.m, d = c.d, B = c.batch;
  Result r;
  r.f.assign(size_t(B) * m, 0);
  r.u.assign(size_t(B) * K * m, 0);
  r.grad_x.assign(size_t(B) * d, 0);
  for (int l = 0; l < L; ++l) {
    r.grad_W.emplace_back(p.W[l].size(), 0.0);
    r.grad_b.emplace_back(p.widths[l + 1], 0.0);
  }
  double value_sq = 0, tangent_sq = 0;
  std::vector<std::vector<std::vector<double>>> seeds_u(B);
  for (int row = 0; row < B; ++row) {
    // streams[s][l]: input of layer l+1 (h or t), zs[s][l]: its output z or tz
    std::vector<std::vector<std::vector<double>>> in(1 + K), zs(1 + K);
    in[0].push_back(std::vector<double>(p.x.begin() + row * d, p.x.begin() + (row + 1) * d));
    for (int k = 0; k < K; ++k) {
      const double* v = p.dirs.data() + (c.shared ? k * d : (row * K + k) * d);
      in[1 + k].push_back(std::vector<double>(v, v + d));
    }
    for (int l = 0; l < L; ++l) {
      const int n_in = p.widths[l], n_out = p.widths[l + 1];
      for (int s = 0; s <= K; ++s) {
        std::vector<double> z(n_out, 0.0);
        for (int i = 0; i < n_out; ++i) {
          for (int j = 0; j < n_in; ++j) z[i] += p.W[l][i * n_in + j] * in[s][l][j];
          if (s == 0 && c.bias) z[i] += p.b[l][i];
        }
        zs[s].push_back(z);
      }
      if (l + 1 == L) break;
      for (int s = 0; s <= K; ++s) in[s].emplace_back(n_out);
      for (int i = 0; i < n_out; ++i) {
        double s0, s1, s2;
        series(c.act, p.slope, zs[0][l][i], s0, s1, s2);
        in[0][l + 1][i] = s0;
        for (int k = 1; k <= K; ++k) in[k][l + 1][i] = s1 * zs[k][l][i];
      }
    }
    // outputs, loss terms and seeds
    std::vector<std::vector<double>> a(1 + K, std::vector<double>(m, 0.0));
    const double scale_f = p.grad_loss * 2 * p.alpha / (double(B) * m);
    const double scale_u = p.grad_loss * 2 * p.beta / (double(B) * K * m);
    for (int j = 0; j < m; ++j) {
      const double f = zs[0][L - 1][j];
      r.f[row * m + j] = f;
      if (c.y) {
        value_sq += (f - p.y[row * m + j]) * (f - p.y[row * m + j]);
        a[0][j] += scale_f * (f - p.y[row * m + j]);
      }
      if (c.grad_f) a[0][j] += p.grad_f[row * m + j];
      for (int k = 0; k < K; ++k) {
        const double u = zs[1 + k][L - 1][j];
        r.u[(row * K + k) * m + j] = u;
        double g = 0;
        if (c.jvp_target) g = p.target_jvp[(row * K + k) * m + j];
        if (c.grad_target) {
          const double* v = p.dirs.data() + (c.shared ? k * d : (row * K + k) * d);
          for (int i = 0; i < d; ++i) g += p.target_grad[(row * m + j) * d + i] * v[i];
        }
        if (c.jvp_target || c.grad_target) {
          tangent_sq += (u - g) * (u - g);
          a[1 + k][j] += scale_u * (u - g);
        }
        if (c.grad_u) a[1 + k][j] += p.grad_u[(row * K + k) * m + j];
      }
    }
    // adjoints, top down
    for (int l = L - 1; l >= 0; --l) {
      const int n_in = p.widths[l], n_out = p.widths[l + 1];
      std::vector<std::vector<double>> a_in(1 + K, std::vector<double>(n_in, 0.0));
      for (int s = 0; s <= K; ++s)
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
        double s0, s1, s2;
        series(c.act, p.slope, zs[0][l - 1][j], s0, s1, s2);
        double cross = 0;
        for (int k = 1; k <= K; ++k) cross += a_in[k][j] * zs[k][l - 1][j];
        a_in[0][j] = a_in[0][j] * s1 + s2 * cross;
        for (int k = 1; k <= K; ++k) a_in[k][j] *= s1;
      }
      a = a_in;
    }
  }
  if (c.y) r.loss += p.alpha * value_sq / (double(B) * m);
  if (c.jvp_target || c.grad_target) r.loss += p.beta * tangent_sq / (double(B) * K * m);
  return r;
}

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <typename T>
const void* data_or_null(const std::vector<T>& v) {
  return v.empty() ? nullptr : v.data();
}

template <typename T>
Result emulate(const Problem& p) {
  using sobolev::cuda::kThreads;
  const Case& c = p.c;
  const int L = int(p.W.size());
  const size_t B = c.batch;
  // inputs in T
  auto x = cast<T>(p.x), dirs = cast<T>(p.dirs), y = cast<T>(p.y), tj = cast<T>(p.target_jvp),
       tg = cast<T>(p.target_grad), gf = cast<T>(p.grad_f), gu = cast<T>(p.grad_u);
  std::vector<std::vector<T>> W, b;
  for (auto& w : p.W) W.push_back(cast<T>(w));
  for (auto& e : p.b) b.push_back(cast<T>(e));
  SobolevLaunch s;
  s.dtype = sizeof(T) == 8 ? sobolev::cuda::DType::kFloat64 : sobolev::cuda::DType::kFloat32;
  s.batch = c.batch;
  s.in_features = c.d;
  s.num_directions = c.K;
  s.out_features = c.m;
  s.shared_directions = c.shared;
  s.x = x.data();
  s.directions = dirs.data();
  s.y = data_or_null(y);
  s.target_jvp = data_or_null(tj);
  s.target_grad = data_or_null(tg);
  s.alpha = p.alpha;
  s.beta = p.beta;
  s.num_layers = L;
  for (int l = 0; l <= L; ++l) s.widths[l] = p.widths[l];
  for (int l = 0; l < L; ++l) {
    s.weights[l] = W[l].data();
    s.biases[l] = c.bias ? b[l].data() : nullptr;
  }
  s.activation = c.act;
  s.negative_slope = p.slope;

  // forward
  std::vector<T> f(B * c.m), u(B * c.K * c.m), loss(1);
  int hidden = 0;
  for (int l = 1; l < L; ++l) hidden += p.widths[l];
  std::vector<T> saved((1 + c.K) * B * hidden + 1);
  s.f = f.data();
  s.u = u.data();
  s.saved = saved.data();
  s.loss = loss.data();
  KernelArgs fa;
  fa.p = s;
  fa.plan = sobolev::cuda::make_plan(s, 2, 0, sizeof(T), c.smem_limit);
  fa.plan.grid = int(std::min<int64_t>(fa.plan.num_tiles, c.grid));
  std::vector<T> fwd_scratch(fa.plan.buffers_in_smem ? 0 : fa.plan.grid * fa.plan.buffer_elems);
  std::vector<double> loss_partials(2 * fa.plan.grid);
  unsigned counter = 0;
  fa.scratch = fwd_scratch.data();
  fa.loss_partials = loss_partials.data();
  fa.counter = &counter;
  emulate_launch(sobolev::cuda::sobolev_forward_kernel<T>, fa.plan.grid, kThreads, fa);

  // backward
  Result r;
  std::vector<T> grad_x(B * c.d), grad_loss{T(p.grad_loss)};
  std::vector<std::vector<T>> grad_W, grad_b;
  for (int l = 0; l < L; ++l) {
    grad_W.emplace_back(p.W[l].size());
    grad_b.emplace_back(p.widths[l + 1]);
  }
  s.grad_loss = grad_loss.data();
  s.grad_f = data_or_null(gf);
  s.grad_u = data_or_null(gu);
  s.f_in = f.data();
  s.u_in = u.data();
  s.saved_in = saved.data();
  s.grad_x = c.need_x ? grad_x.data() : nullptr;
  for (int l = 0; c.need_params && l < L; ++l) {
    s.grad_weights[l] = grad_W[l].data();
    s.grad_biases[l] = c.bias ? grad_b[l].data() : nullptr;
  }
  KernelArgs ba;
  ba.p = s;
  ba.plan = sobolev::cuda::make_plan(s, 3, 2, sizeof(T), c.smem_limit);
  ba.plan.grid = int(std::min<int64_t>(ba.plan.num_tiles, c.grid));
  ba.partial_size = c.need_params ? sobolev::cuda::partial_size(s) : 0;
  std::vector<T> bwd_scratch(ba.plan.buffers_in_smem ? 0 : ba.plan.grid * ba.plan.buffer_elems);
  std::vector<T> partials(ba.plan.grid * ba.partial_size + 1);
  ba.scratch = bwd_scratch.data();
  ba.grad_partials = partials.data();
  emulate_launch(sobolev::cuda::sobolev_backward_kernel<T>, ba.plan.grid, kThreads, ba);
  if (c.need_params) emulate_launch(sobolev::cuda::sum_partials_kernel<T>, 2, kThreads, ba);

  r.loss = loss[0];
  r.f.assign(f.begin(), f.end());
  r.u.assign(u.begin(), u.end());
  if (c.need_x) r.grad_x.assign(grad_x.begin(), grad_x.end());
  for (int l = 0; c.need_params && l < L; ++l) {
    r.grad_W.emplace_back(grad_W[l].begin(), grad_W[l].end());
    r.grad_b.emplace_back(grad_b[l].begin(), grad_b[l].end());
  }
  return r;
}

// max |got - expected| <= rtol * max |expected| (as tests/conftest.py's assert_close)
bool close(const std::vector<double>& got, const std::vector<double>& expected, double rtol,
           const std::string& what) {
  double scale = 1e-30, err = 0;
  for (double e : expected) scale = std::max(scale, std::fabs(e));
  for (size_t i = 0; i < got.size(); ++i) err = std::max(err, std::fabs(got[i] - expected[i]));
  if (got.size() == expected.size() && err <= rtol * scale) return true;
  std::printf("  %s: max error %.3g, scale %.3g (rtol %.1g), sizes %zu/%zu\n", what.c_str(), err,
              scale, rtol, got.size(), expected.size());
  return false;
}

template <typename T>
bool check(const Case& c, unsigned seed) {
  const Problem p = make_problem(c, seed);
  const Result want = reference(p), got = emulate<T>(p);
  const double rtol = sizeof(T) == 8 ? 1e-12 : 1e-5;
  bool ok = close({got.loss}, {want.loss}, rtol, "loss") && close(got.f, want.f, rtol, "f") &&
            close(got.u, want.u, rtol, "u");
  if (c.need_x) ok = close(got.grad_x, want.grad_x, rtol, "grad_x") && ok;
  for (size_t l = 0; c.need_params && l < want.grad_W.size(); ++l) {
    ok = close(got.grad_W[l], want.grad_W[l], rtol, "grad_W[" + std::to_string(l) + "]") && ok;
    if (c.bias)
      ok = close(got.grad_b[l], want.grad_b[l], rtol, "grad_b[" + std::to_string(l) + "]") && ok;
  }
  std::printf("%s %s (%s)\n", ok ? "ok  " : "FAIL", c.name.c_str(),
              sizeof(T) == 8 ? "fp64" : "fp32");
  return ok;
}

std::vector<Case> cases() {
  std::vector<Case> all;
  auto add = [&](std::string name, auto edit) {
    Case c;
    c.name = std::move(name);
    edit(c);
    all.push_back(c);
  };
  using namespace sobolev;
  add("tanh, per-row directions, target_grad", [](Case& c) { c.act = kTanh; });
  add("sigmoid, shared directions, target_jvp, no y", [](Case& c) {
    c.act = kSigmoid, c.shared = true, c.grad_target = false, c.jvp_target = true, c.y = false;
  });
  add("softplus, one layer, no bias", [](Case& c) {
    c.act = kSoftplus, c.hidden = {}, c.bias = false;
  });
  add("silu, K=5 (5 rows per tile), user grads on f and u, no x grad", [](Case& c) {
    c.act = kSilu, c.K = 5, c.batch = 11, c.grad_f = c.grad_u = true, c.need_x = false;
  });
  add("sin, global-memory tile buffers, 3 blocks", [](Case& c) {
    c.act = kSin, c.smem_limit = 1024, c.grid = 3, c.batch = 20;
  });
  add("gelu, weight panels (width 96 x 96 > one stage), one block", [](Case& c) {
    c.act = kGelu, c.hidden = {96, 96}, c.batch = 9, c.grid = 1;
  });
  add("relu, 4 layers, mlp_jvp-like (no targets, no y, grads on f and u)", [](Case& c) {
    c.act = kRelu, c.hidden = {6, 5, 7}, c.y = c.grad_target = false, c.grad_f = c.grad_u = true;
  });
  add("leaky_relu, shared directions, no parameter gradients", [](Case& c) {
    c.act = kLeakyRelu, c.shared = true, c.need_params = false;
  });
  add("identity, K=40 (a tile is one row), d=1", [](Case& c) {
    c.act = kIdentity, c.K = 40, c.d = 1, c.batch = 5;
  });
  return all;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string only = argc > 1 ? argv[1] : "";
  bool ok = true;
  unsigned seed = 0;
  for (const Case& c : cases()) {
    ++seed;
    if (!only.empty() && c.name.find(only) == std::string::npos) continue;
    ok = check<double>(c, seed) && ok;
    ok = check<float>(c, seed) && ok;
  }
  std::printf("%s\n", ok ? "all cases agree" : "MISMATCH");
  return ok ? 0 : 1;
}
