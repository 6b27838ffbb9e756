// CPU kernels of the fused Sobolev ops: the batch is cut into blocks of rows that go through
// all layers together (mlp_block.cpp), in parallel over blocks with at::parallel_for. Order 2
// (docs/math.md) is the same walk with K more stacked streams per block.
//
// Determinism: the blocking depends on the shapes only, never on the thread count. Loss sums
// are kept per block and added in block order; the backward gives each of a fixed number of
// chunks (consecutive blocks) its own partial weight gradients and adds the chunks in order.
// Repeated runs, with any number of threads, give bitwise identical results.
//
// Saved vs recomputed: the forward saves z and tz (and ttz) of the hidden layers (the `saved`
// output) when the caller will differentiate, and the backward reads them back. Measured on
// the benchmark config (order 1, fp32, B=8192, d=16, width 128, 4 layers, m=8, K=2), forward
// + backward:                                      1 thread         2 threads
//   saving, backward reads z/tz                    32 + 51 = 83 ms  18 + 27 = 45 ms
//   not saving, backward recomputes per block      27 + 74 = 101 ms 14 + 38 = 52 ms
// (saving costs 24 ms more on one thread if the 38 MB buffer faults in 4 KB pages: see
// advise_huge_pages). An empty `saved` (save_activations=False) makes the backward recompute,
// for callers short of memory.
#include "cpu/sobolev_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "activations.h"
#include "cpu/block_ops.h"
#include "cpu/call_setup.h"
#include "cpu/mlp_block.h"
#include "cpu/rows_io.h"
#include "op_checks.h"

namespace sobolev::cpu {
namespace {

// Ask for transparent huge pages on a large fresh buffer: its first touch then costs a few
// 2 MB page faults instead of one fault per 4 KB page.
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

at::Tensor optional_contiguous(const std::optional<at::Tensor>& t) {
  return t ? t->contiguous() : at::Tensor();
}

// The forward's outputs, raw: f (B, m), u and (order 2) w (B, K, m), saved (or null), loss.
template <typename scalar_t, typename acc_t>
struct ForwardOutputs {
  scalar_t *f, *u, *w;
  acc_t *saved, *loss;
};

template <typename scalar_t, typename acc_t>
void forward_impl(const SobolevDims& dims, const RowsIO<scalar_t, acc_t>& io,
                  const MlpView<acc_t>& mlp, double alpha, double beta, double gamma,
                  const ForwardOutputs<scalar_t, acc_t>& out) {
  const BlockPlan plan(dims);
  const Streams streams = streams_of(dims);
  const int64_t S = streams.count(), K = dims.num_directions, hidden = dims.hidden_total();
  const int64_t m = dims.out_features;
  const auto tz1 = shared_first_tangents(io, mlp);
  std::vector<LossSums> sums(plan.num_blocks);
  at::parallel_for(0, plan.num_blocks, 1, [&](int64_t begin, int64_t end) {
    BlockScratch<acc_t> s(streams, plan.rows, mlp.max_width());
    AlignedBuffer<acc_t> input((1 + K) * plan.rows * dims.in_features);
    AlignedBuffer<acc_t> outputs(S * plan.rows * m);
    AlignedBuffer<acc_t> g(K * plan.rows * m), g2(dims.order == 2 ? K * plan.rows * m : 0);
    AlignedBuffer<acc_t> zt_local(out.saved ? 0 : S * plan.rows * hidden);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t r0 = plan.first_row(block), R = plan.rows_of(block);
      io.load_input(r0, R, input.data());
      acc_t* zt_base = out.saved ? out.saved + r0 * S * hidden : zt_local.data();
      const auto zt = block_layer_slots(mlp, S, R, zt_base);
      forward_block(mlp, streams, R, input.data(), tz1.data(), zt, outputs.data(), s);
      io.store_outputs(r0, R, outputs.data(), out.f, out.u, out.w);
      if (io.has_target()) io.projected_targets(r0, R, g.data());
      if (dims.order == 2 && io.has_target2()) io.projected_targets2(r0, R, g2.data());
      sums[block] = io.squared_errors(r0, R, outputs.data(), g.data(), g2.data());
    }
  });
  LossSums total;
  for (const auto& block : sums) {
    total.value += block.value;
    total.tangent += block.tangent;
    total.second += block.second;
  }
  // L = alpha mean((f - y)^2) + beta mean((u - g)^2) [+ gamma mean((w - g2)^2)]
  const double B = dims.batch, md = m, Kd = K;
  double result = 0;
  if (io.y != nullptr) result += alpha * total.value / (B * md);
  if (io.has_target()) result += beta * total.tangent / (B * Kd * md);
  if (dims.order == 2 && io.has_target2()) result += gamma * total.second / (B * Kd * md);
  *out.loss = static_cast<acc_t>(result);
}

template <typename scalar_t, typename acc_t>
void backward_impl(const SobolevDims& dims, const RowsIO<scalar_t, acc_t>& io,
                   const MlpView<acc_t>& mlp, const SeedSources<scalar_t, acc_t>& seeds,
                   const acc_t* saved, scalar_t* grad_x,
                   const std::vector<scalar_t*>& grad_weights,
                   const std::vector<scalar_t*>& grad_biases) {
  const BlockPlan plan(dims);
  const Streams streams = streams_of(dims);
  const int64_t S = streams.count(), K = dims.num_directions, hidden = dims.hidden_total();
  const int64_t d = dims.in_features, m = dims.out_features;
  const bool need_params = !grad_weights.empty();
  const GradLayout layout(dims, !mlp.biases.empty());
  AlignedBuffer<acc_t> partials(need_params ? plan.num_chunks * layout.size : 0);
  const auto tz1 = shared_first_tangents(io, mlp);

  at::parallel_for(0, plan.num_chunks, 1, [&](int64_t begin, int64_t end) {
    BlockScratch<acc_t> s(streams, plan.rows, mlp.max_width());
    AlignedBuffer<acc_t> input((1 + K) * plan.rows * d);
    AlignedBuffer<acc_t> g(K * plan.rows * m), g2(dims.order == 2 ? K * plan.rows * m : 0);
    AlignedBuffer<acc_t> zt_local(saved ? 0 : S * plan.rows * hidden);
    AlignedBuffer<acc_t> dx(grad_x ? plan.rows * d : 0);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      GradSlots<acc_t> slots;
      if (need_params) slots = layout.slots(partials.data() + chunk * layout.size);
      for (int64_t block = plan.chunk_begin(chunk); block < plan.chunk_begin(chunk + 1); ++block) {
        const int64_t r0 = plan.first_row(block), R = plan.rows_of(block);
        io.load_input(r0, R, input.data());
        std::vector<acc_t*> zt;
        if (saved) {
          acc_t* base = const_cast<acc_t*>(saved) + r0 * S * hidden;  // read only
          zt = block_layer_slots(mlp, S, R, base);
        } else {  // recompute z/tz/ttz of this block
          zt = block_layer_slots(mlp, S, R, zt_local.data());
          forward_block<acc_t>(mlp, streams, R, input.data(), tz1.data(), zt, nullptr, s);
        }
        if (io.has_target()) io.projected_targets(r0, R, g.data());
        if (dims.order == 2 && io.has_target2()) io.projected_targets2(r0, R, g2.data());
        io.seeds(r0, R, seeds, g.data(), g2.data(), s.adjoint.data());
        backward_block(mlp, streams, R, input.data(), io.shared, zt, slots, dx.data(), s);
        for (int64_t e = 0; grad_x && e < R * d; ++e)
          grad_x[r0 * d + e] = static_cast<scalar_t>(dx.data()[e]);
      }
    }
  });
  if (!need_params) return;

  // the chunks' partial sums, added in chunk order
  AlignedBuffer<acc_t> total(layout.size);
  at::parallel_for(0, layout.size, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      acc_t acc = 0;
      for (int64_t c = 0; c < plan.num_chunks; ++c) acc += partials.data()[c * layout.size + e];
      total.data()[e] = acc;
    }
  });
  const GradSlots<acc_t> sums = layout.slots(total.data());
  if (io.shared) {
    // dW_1 += sum_k (sum over rows of a_tz_k)^T v_k
    const int64_t n_1 = dims.widths[1];
    for (int64_t i = 0; i < n_1; ++i)
      for (int64_t k = 0; k < K; ++k) {
        const acc_t a = sums.tangent_sums[k * n_1 + i];
        for (int64_t j = 0; j < d; ++j)
          sums.weights[0][i * d + j] += a * static_cast<acc_t>(io.directions[k * d + j]);
      }
  }
  for (int64_t l = 0; l < dims.num_layers(); ++l) {
    const int64_t n = dims.widths[l + 1] * dims.widths[l];
    std::transform(sums.weights[l], sums.weights[l] + n, grad_weights[l],
                   [](acc_t v) { return static_cast<scalar_t>(v); });
    if (!grad_biases.empty())
      std::transform(sums.biases[l], sums.biases[l] + dims.widths[l + 1], grad_biases[l],
                     [](acc_t v) { return static_cast<scalar_t>(v); });
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sobolev_forward(
    const at::Tensor& x, const at::Tensor& directions, const std::optional<at::Tensor>& y,
    const std::optional<at::Tensor>& target_jvp, const std::optional<at::Tensor>& target_grad,
    const std::optional<at::Tensor>& target_hvp2, const std::optional<at::Tensor>& target_hess,
    at::TensorList weights, at::TensorList biases, int64_t activation, double negative_slope,
    double alpha, double beta, double gamma, int64_t order, bool allow_tf32,
    bool save_activations) {
  (void)allow_tf32;  // the CPU kernel's products are exact
  const TargetArgs target_args{y, target_jvp, target_grad, target_hvp2, target_hess};
  const auto dims =
      check_forward_inputs(x, directions, target_args, weights, biases, activation, order);
  TORCH_INTERNAL_ASSERT(x.device().is_cpu());
  const auto acc_options = x.options().dtype(accumulation_type(x.scalar_type()));
  const std::vector<int64_t> u_shape = {dims.batch, dims.num_directions, dims.out_features};
  auto f = at::empty({dims.batch, dims.out_features}, x.options());
  auto u = at::empty(u_shape, x.options());
  auto w = order == 2 ? at::empty(u_shape, x.options()) : at::empty({0}, x.options());
  auto saved = at::empty({dims.saved_numel(save_activations)}, acc_options);
  advise_huge_pages(saved.data_ptr(), saved.nbytes());
  auto loss = at::empty({}, acc_options);
  const auto xc = x.contiguous(), dc = directions.contiguous();
  const TargetTensors targets(target_args);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "sobolev_forward",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto packed = pack_mlp<scalar_t, acc_t>(dims, weights, biases, activation,
                                                  negative_slope);
    const auto io = make_io<scalar_t, acc_t>(dims, xc, dc, targets);
    const ForwardOutputs<scalar_t, acc_t> out{
        f.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(),
        order == 2 ? w.data_ptr<scalar_t>() : nullptr,
        save_activations ? saved.data_ptr<acc_t>() : nullptr, loss.data_ptr<acc_t>()};
    forward_impl<scalar_t, acc_t>(dims, io, packed.view, alpha, beta, gamma, out);
  });
  return {loss, f, u, w, saved};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> sobolev_backward(
    const std::optional<at::Tensor>& grad_loss, const std::optional<at::Tensor>& grad_f,
    const std::optional<at::Tensor>& grad_u, const std::optional<at::Tensor>& grad_w,
    const at::Tensor& x, const at::Tensor& directions, const std::optional<at::Tensor>& y,
    const std::optional<at::Tensor>& target_jvp, const std::optional<at::Tensor>& target_grad,
    const std::optional<at::Tensor>& target_hvp2, const std::optional<at::Tensor>& target_hess,
    at::TensorList weights, at::TensorList biases, const at::Tensor& f, const at::Tensor& u,
    const at::Tensor& w, const at::Tensor& saved, int64_t activation, double negative_slope,
    double alpha, double beta, double gamma, int64_t order, bool allow_tf32,
    bool need_grad_x, bool need_grad_params) {
  const TargetArgs target_args{y, target_jvp, target_grad, target_hvp2, target_hess};
  const auto dims =
      check_forward_inputs(x, directions, target_args, weights, biases, activation, order);
  check_backward_inputs(dims, x, grad_loss, grad_f, grad_u, grad_w, f, u, w, saved);
  (void)allow_tf32;  // the CPU kernel's products are exact
  TORCH_INTERNAL_ASSERT(x.device().is_cpu());
  auto grad_x = need_grad_x ? at::empty({dims.batch, dims.in_features}, x.options())
                            : at::empty({0}, x.options());
  std::vector<at::Tensor> grad_weights, grad_biases;
  for (int64_t l = 0; need_grad_params && l < dims.num_layers(); ++l) {
    grad_weights.push_back(at::empty({dims.widths[l + 1], dims.widths[l]}, x.options()));
    if (!biases.empty()) grad_biases.push_back(at::empty({dims.widths[l + 1]}, x.options()));
  }
  const auto xc = x.contiguous(), dc = directions.contiguous(), fc = f.contiguous(),
             uc = u.contiguous(), wc = w.contiguous(), sc = saved.contiguous();
  const TargetTensors targets(target_args);
  const auto gfc = optional_contiguous(grad_f), guc = optional_contiguous(grad_u),
             gwc = optional_contiguous(grad_w);
  const double upstream = grad_loss ? grad_loss->item<double>() : 0.0;
  const double B = dims.batch, m = dims.out_features, K = dims.num_directions;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "sobolev_backward",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto packed = pack_mlp<scalar_t, acc_t>(dims, weights, biases, activation,
                                                  negative_slope);
    const auto io = make_io<scalar_t, acc_t>(dims, xc, dc, targets);
    auto ptrs = [](std::vector<at::Tensor>& ts) {
      std::vector<scalar_t*> p;
      for (auto& t : ts) p.push_back(t.data_ptr<scalar_t>());
      return p;
    };
    auto ptr = [](const at::Tensor& t) {
      return t.defined() && t.numel() > 0 ? t.data_ptr<scalar_t>() : nullptr;
    };
    SeedSources<scalar_t, acc_t> seeds;
    seeds.f = fc.data_ptr<scalar_t>();
    seeds.u = uc.data_ptr<scalar_t>();
    seeds.w = ptr(wc);
    seeds.grad_f = ptr(gfc);
    seeds.grad_u = ptr(guc);
    seeds.grad_w = ptr(gwc);
    seeds.value_scale = upstream * 2.0 * alpha / (B * m);
    seeds.tangent_scale = upstream * 2.0 * beta / (B * K * m);
    seeds.second_scale = upstream * 2.0 * gamma / (B * K * m);
    backward_impl<scalar_t, acc_t>(dims, io, packed.view, seeds,
                                   sc.numel() ? sc.data_ptr<acc_t>() : nullptr,
                                   need_grad_x ? grad_x.data_ptr<scalar_t>() : nullptr,
                                   ptrs(grad_weights), ptrs(grad_biases));
  });
  return {grad_x, grad_weights, grad_biases};
}

at::Tensor activation_series(const at::Tensor& z, int64_t activation, double negative_slope) {
  TORCH_CHECK(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble,
              "z: expected fp32 or fp64, got ", z.scalar_type());
  TORCH_CHECK(activation >= 0 && activation < kNumActivations, "activation: expected a kernel "
              "id in [0, ", kNumActivations, "), got ", activation);
  auto sizes = z.sizes().vec();
  sizes.insert(sizes.begin(), 4);
  auto out = at::empty(sizes, z.options());
  const auto zc = z.contiguous();
  const int64_t n = z.numel();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "activation_series", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    cpu::activation_series<scalar_t>(static_cast<int>(activation),
                                     static_cast<scalar_t>(negative_slope),
                                     zc.data_ptr<scalar_t>(), n, o, o + n, o + 2 * n, o + 3 * n);
  });
  return out;
}

// the definitions above are the declared ops (another signature would be an overload, and
// decltype of an overloaded name does not compile)
static_assert(std::is_same_v<decltype(sobolev_forward), ForwardOp>);
static_assert(std::is_same_v<decltype(sobolev_backward), BackwardOp>);

}  // namespace sobolev::cpu
