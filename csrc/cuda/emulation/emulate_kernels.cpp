// Runs the CUDA kernels (forward, backward, partial sums) on the host through host_shim.h and
// compares them with a direct row-by-row implementation of DESIGN section 2 and, for order 2,
// of docs/math.md (reference_rows.h). Exit status 0 when every case agrees. Built and run by
// tests/test_cuda_backend.py:
//   g++ -std=c++20 -O1 -pthread -I csrc csrc/cuda/emulation/emulate_kernels.cpp
#include "cuda/emulation/host_shim.h"
// (the shim comes first: it defines the CUDA keywords the kernels use)
#include <cstdio>
#include <string>
#include <vector>

#include "cuda/backward_kernel.cuh"
#include "cuda/emulation/reference_rows.h"
#include "cuda/forward_kernel.cuh"

namespace {

using sobolev::cuda::KernelArgs;
using sobolev::cuda::SobolevLaunch;
using sobolev::emulation::Case;
using sobolev::emulation::Problem;
using sobolev::emulation::Result;
using sobolev::emulation::Second;
using sobolev::emulation::make_problem;
using sobolev::emulation::reference;

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
  namespace sc = sobolev::cuda;
  const Case& c = p.c;
  const int L = int(p.W.size());
  const size_t B = c.batch;
  const bool second = c.order == 2;
  // inputs in T
  auto x = cast<T>(p.x), dirs = cast<T>(p.dirs), y = cast<T>(p.y), tj = cast<T>(p.target_jvp),
       tg = cast<T>(p.target_grad), th = cast<T>(p.target_hvp2), tH = cast<T>(p.target_hess),
       gf = cast<T>(p.grad_f), gu = cast<T>(p.grad_u), gw = cast<T>(p.grad_w);
  std::vector<std::vector<T>> W, b;
  for (auto& w : p.W) W.push_back(cast<T>(w));
  for (auto& e : p.b) b.push_back(cast<T>(e));
  SobolevLaunch s;
  s.dtype = sizeof(T) == 8 ? sc::DType::kFloat64 : sc::DType::kFloat32;
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
  s.target_hvp2 = data_or_null(th);
  s.target_hess = data_or_null(tH);
  s.alpha = p.alpha;
  s.beta = p.beta;
  s.gamma = p.gamma;
  s.order = c.order;
  s.num_layers = L;
  for (int l = 0; l <= L; ++l) s.widths[l] = p.widths[l];
  for (int l = 0; l < L; ++l) {
    s.weights[l] = W[l].data();
    s.biases[l] = c.bias ? b[l].data() : nullptr;
  }
  s.activation = c.act;
  s.negative_slope = p.slope;

  // forward
  std::vector<T> f(B * c.m), u(B * c.K * c.m), w(second ? B * c.K * c.m : 0), loss(1);
  int hidden = 0;
  for (int l = 1; l < L; ++l) hidden += p.widths[l];
  std::vector<T> saved((1 + c.order * c.K) * B * hidden + 1);
  s.f = f.data();
  s.u = u.data();
  s.w = second ? w.data() : nullptr;
  s.saved = saved.data();
  s.loss = loss.data();
  KernelArgs fa;
  fa.p = s;
  fa.plan = sc::make_plan(s, sc::kForwardTileBuffers, sc::kForwardRowBuffers, sizeof(T),
                          c.smem_limit);
  fa.plan.grid = int(std::min<int64_t>(fa.plan.num_tiles, c.grid));
  std::vector<T> fwd_scratch(fa.plan.buffers_in_smem ? 0 : fa.plan.grid * fa.plan.buffer_elems);
  std::vector<double> loss_partials(sc::kLossTerms * fa.plan.grid);
  unsigned counter = 0;
  fa.scratch = fwd_scratch.data();
  fa.loss_partials = loss_partials.data();
  fa.counter = &counter;
  emulate_launch(second ? sc::sobolev_forward_kernel<T, 2> : sc::sobolev_forward_kernel<T, 1>,
                 fa.plan.grid, sc::kThreads, fa);

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
  s.grad_w = data_or_null(gw);
  s.f_in = f.data();
  s.u_in = u.data();
  s.w_in = second ? w.data() : nullptr;
  s.saved_in = saved.data();
  s.grad_x = c.need_x ? grad_x.data() : nullptr;
  for (int l = 0; c.need_params && l < L; ++l) {
    s.grad_weights[l] = grad_W[l].data();
    s.grad_biases[l] = c.bias ? grad_b[l].data() : nullptr;
  }
  KernelArgs ba;
  ba.p = s;
  ba.plan = sc::make_plan(s, sc::kBackwardTileBuffers, sc::backward_row_buffers(s), sizeof(T),
                          c.smem_limit);
  ba.plan.grid = int(std::min<int64_t>(ba.plan.num_tiles, c.grid));
  ba.partial_size = c.need_params ? sc::partial_size(s) : 0;
  std::vector<T> bwd_scratch(ba.plan.buffers_in_smem ? 0 : ba.plan.grid * ba.plan.buffer_elems);
  std::vector<T> partials(ba.plan.grid * ba.partial_size + 1);
  ba.scratch = bwd_scratch.data();
  ba.grad_partials = partials.data();
  emulate_launch(second ? sc::sobolev_backward_kernel<T, 2> : sc::sobolev_backward_kernel<T, 1>,
                 ba.plan.grid, sc::kThreads, ba);
  if (c.need_params) emulate_launch(sc::sum_partials_kernel<T>, 2, sc::kThreads, ba);

  r.loss = loss[0];
  r.f.assign(f.begin(), f.end());
  r.u.assign(u.begin(), u.end());
  r.w.assign(w.begin(), w.end());
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
            close(got.u, want.u, rtol, "u") && close(got.w, want.w, rtol, "w");
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

  // order 2 (Taylor mode): every activation, both second-order targets and the same corners
  add("order 2, tanh, per-row directions, target_grad + target_hess", [](Case& c) {
    c.order = 2, c.act = kTanh;
  });
  add("order 2, sigmoid, shared directions, target_jvp + target_hvp2, no y", [](Case& c) {
    c.order = 2, c.act = kSigmoid, c.shared = true, c.grad_target = false, c.jvp_target = true;
    c.second = Second::kHvp2, c.y = false;
  });
  add("order 2, softplus, one layer (w = 0), no bias", [](Case& c) {
    c.order = 2, c.act = kSoftplus, c.hidden = {}, c.bias = false;
  });
  add("order 2, silu, K=3 (2 rows per tile), user grads on f, u and w, no x grad",
      [](Case& c) {
        c.order = 2, c.act = kSilu, c.K = 3, c.batch = 11, c.grad_f = c.grad_u = c.grad_w = true;
        c.need_x = false;
      });
  add("order 2, sin, global-memory tile buffers, 3 blocks, shared directions, hess",
      [](Case& c) {
        c.order = 2, c.act = kSin, c.smem_limit = 1024, c.grid = 3, c.batch = 20, c.shared = true;
      });
  add("order 2, gelu, weight panels (width 96 x 96 > one stage), one block, d=4", [](Case& c) {
    c.order = 2, c.act = kGelu, c.hidden = {96, 96}, c.batch = 9, c.grid = 1, c.d = 4;
  });
  add("order 2, relu, 4 layers, mlp_jvp-like (no targets, grads on f, u and w)", [](Case& c) {
    c.order = 2, c.act = kRelu, c.hidden = {6, 5, 7}, c.y = c.grad_target = false;
    c.second = Second::kNone, c.grad_f = c.grad_u = c.grad_w = true;
  });
  add("order 2, leaky_relu, shared directions, hvp2, no parameter gradients", [](Case& c) {
    c.order = 2, c.act = kLeakyRelu, c.shared = true, c.need_params = false;
    c.second = Second::kHvp2;
  });
  add("order 2, identity, K=20 (a tile is one row), d=1", [](Case& c) {
    c.order = 2, c.act = kIdentity, c.K = 20, c.d = 1, c.batch = 5;
  });
  add("order 2, tanh, K=20 global-memory buffers, 5 layers, grad_w only", [](Case& c) {
    c.order = 2, c.act = kTanh, c.K = 20, c.batch = 6, c.hidden = {7, 3, 9, 4};
    c.y = c.grad_target = false, c.second = Second::kNone, c.grad_w = true;
    c.smem_limit = 40 * 1024;
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
