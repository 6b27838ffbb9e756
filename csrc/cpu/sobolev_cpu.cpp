// CPU kernels of the fused Sobolev ops: the batch is cut into blocks of rows that go through
// all layers together (mlp_block.cpp), in parallel over blocks with at::parallel_for.
//
// Determinism: the blocking depends on the shapes only, never on the thread count. Loss sums
// are kept per block and added in block order; the backward gives each of a fixed number of
// chunks (consecutive blocks) its own partial weight gradients and adds the chunks in order.
// Repeated runs, with any number of threads, give bitwise identical results.
//
// Saved vs recomputed: the forward saves z and tz of the hidden layers (the `saved` output)
// when the caller will differentiate, and the backward reads them back. Measured on the
// benchmark config (fp32, B=8192, d=16, width 128, 4 layers, m=8, K=2), forward + backward:
//                                                  1 thread         2 threads
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
#include <cstdlib>
#include <cstring>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "activations.h"
#include "cpu/block_ops.h"
#include "cpu/gemm.h"
#include "cpu/mlp_block.h"
#include "cpu/rows_io.h"
#include "op_checks.h"

namespace sobolev::cpu {
namespace {

// Stacked rows (1 + K) R per block: the block's buffers (a few of (1 + K) R n) stay in L2.
constexpr int64_t kStackedRowsPerBlock = 192;
// Number of partial weight gradients in the backward: fixed, so results do not depend on
// the thread count, and enough chunks to balance the threads of a large machine.
constexpr int64_t kMaxChunks = 32;

struct BlockPlan {
  int64_t batch, rows, num_blocks, num_chunks;

  explicit BlockPlan(const SobolevDims& dims)
      : batch(dims.batch),
        rows(std::clamp<int64_t>(kStackedRowsPerBlock / dims.streams(), 1, dims.batch)),
        num_blocks((batch + rows - 1) / rows),
        num_chunks(std::min(num_blocks, kMaxChunks)) {}

  int64_t first_row(int64_t block) const { return block * rows; }
  int64_t rows_of(int64_t block) const { return std::min(rows, batch - first_row(block)); }
  int64_t chunk_begin(int64_t chunk) const { return chunk * num_blocks / num_chunks; }
};

template <typename acc_t>
struct PackedMlp {
  AlignedBuffer<acc_t> storage;
  MlpView<acc_t> view;
};

// The weights and biases in acc_t, in one aligned buffer (see AlignedBuffer).
template <typename scalar_t, typename acc_t>
PackedMlp<acc_t> pack_mlp(const SobolevDims& dims, at::TensorList weights, at::TensorList biases,
                          int64_t activation, double negative_slope) {
  int64_t total = 0;
  for (int64_t l = 1; l <= dims.num_layers(); ++l)
    total += dims.widths[l] * dims.widths[l - 1] + (biases.empty() ? 0 : dims.widths[l]);
  PackedMlp<acc_t> packed{AlignedBuffer<acc_t>(total), {}};
  acc_t* dst = packed.storage.data();
  auto copy = [&](const at::Tensor& t) {
    const auto c = t.contiguous();
    const scalar_t* src = c.data_ptr<scalar_t>();
    std::transform(src, src + c.numel(), dst, [](scalar_t v) { return static_cast<acc_t>(v); });
    dst += c.numel();
    return dst - c.numel();
  };
  auto& view = packed.view;
  view.widths = dims.widths;
  for (const auto& w : weights) view.weights.push_back(copy(w));
  for (const auto& b : biases) view.biases.push_back(copy(b));
  view.activation = static_cast<int>(activation);
  view.negative_slope = static_cast<acc_t>(negative_slope);
  // SOBOLEV_CPU_GEMM=loop takes the plain loops instead of BLAS (tests; BLAS-less builds).
  const char* gemm = std::getenv("SOBOLEV_CPU_GEMM");
  view.use_blas = !(gemm != nullptr && std::strcmp(gemm, "loop") == 0);
  return packed;
}

// x and directions in scalar_t; y and the targets in acc_t (target_in_accumulation_type).
template <typename scalar_t, typename acc_t>
RowsIO<scalar_t, acc_t> make_io(const SobolevDims& dims, const at::Tensor& x,
                                const at::Tensor& directions, const at::Tensor& y,
                                const at::Tensor& target_jvp, const at::Tensor& target_grad) {
  auto acc = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<acc_t>() : nullptr; };
  RowsIO<scalar_t, acc_t> io;
  io.x = x.data_ptr<scalar_t>();
  io.directions = directions.data_ptr<scalar_t>();
  io.shared = dims.shared_directions;
  io.y = acc(y);
  io.target_jvp = acc(target_jvp);
  io.target_grad = acc(target_grad);
  io.B = dims.batch;
  io.d = dims.in_features;
  io.K = dims.num_directions;
  io.m = dims.out_features;
  return io;
}

// Shared directions: tz_1 = V W_1^T (K, n_1), the same for every row, formed once per call.
template <typename scalar_t, typename acc_t>
AlignedBuffer<acc_t> shared_first_tangents(const RowsIO<scalar_t, acc_t>& io,
                                           const MlpView<acc_t>& mlp) {
  if (!io.shared) return AlignedBuffer<acc_t>();
  AlignedBuffer<acc_t> v(io.K * io.d), tz1(io.K * mlp.widths[1]);
  std::transform(io.directions, io.directions + io.K * io.d, v.data(),
                 [](scalar_t e) { return static_cast<acc_t>(e); });
  gemm_nt<acc_t>(io.K, mlp.widths[1], io.d, v.data(), io.d, mlp.weights[0], io.d, acc_t(0),
                 tz1.data(), mlp.widths[1], mlp.use_blas);
  return tz1;
}

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

template <typename scalar_t, typename acc_t>
void forward_impl(const SobolevDims& dims, const RowsIO<scalar_t, acc_t>& io,
                  const MlpView<acc_t>& mlp, double alpha, double beta, scalar_t* f, scalar_t* u,
                  acc_t* saved, acc_t* loss) {
  const BlockPlan plan(dims);
  const int64_t streams = dims.streams(), K = dims.num_directions, hidden = dims.hidden_total();
  const auto tz1 = shared_first_tangents(io, mlp);
  std::vector<double> sums(2 * plan.num_blocks);  // (value, tangent) squared errors per block
  at::parallel_for(0, plan.num_blocks, 1, [&](int64_t begin, int64_t end) {
    BlockScratch<acc_t> s(streams, plan.rows, mlp.max_width());
    AlignedBuffer<acc_t> input(streams * plan.rows * dims.in_features);
    AlignedBuffer<acc_t> out(streams * plan.rows * dims.out_features);
    AlignedBuffer<acc_t> g(K * plan.rows * dims.out_features);
    AlignedBuffer<acc_t> zt_local(saved ? 0 : streams * plan.rows * hidden);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t r0 = plan.first_row(block), R = plan.rows_of(block);
      io.load_input(r0, R, input.data());
      acc_t* zt_base = saved ? saved + r0 * streams * hidden : zt_local.data();
      const auto zt = block_layer_slots(mlp, streams, R, zt_base);
      forward_block(mlp, K, R, input.data(), tz1.data(), zt, out.data(), s);
      io.store_outputs(r0, R, out.data(), f, u);
      if (io.has_target()) io.projected_targets(r0, R, g.data());
      std::tie(sums[2 * block], sums[2 * block + 1]) =
          io.squared_errors(r0, R, out.data(), g.data());
    }
  });
  double value = 0, tangent = 0;
  for (int64_t block = 0; block < plan.num_blocks; ++block) {
    value += sums[2 * block];
    tangent += sums[2 * block + 1];
  }
  // L = alpha mean((f - y)^2) + beta mean((u - g)^2)
  const double B = dims.batch, m = dims.out_features, Kd = K;
  double result = 0;
  if (io.y != nullptr) result += alpha * value / (B * m);
  if (io.has_target()) result += beta * tangent / (B * Kd * m);
  *loss = static_cast<acc_t>(result);
}

// Layout of one chunk's partial sums: dW_1..dW_L, then db_1..db_L, then (shared directions)
// the (K, n_1) row sums of a_tz_k at layer 1.
struct GradLayout {
  std::vector<int64_t> weight_offsets, bias_offsets;
  int64_t tangent_sums_offset = 0, size = 0;

  GradLayout(const SobolevDims& dims, bool has_bias) {
    for (int64_t l = 1; l <= dims.num_layers(); ++l) {
      weight_offsets.push_back(size);
      size += dims.widths[l] * dims.widths[l - 1];
    }
    for (int64_t l = 1; has_bias && l <= dims.num_layers(); ++l) {
      bias_offsets.push_back(size);
      size += dims.widths[l];
    }
    tangent_sums_offset = size;
    if (dims.shared_directions) size += dims.num_directions * dims.widths[1];
  }

  template <typename T>
  GradSlots<T> slots(T* base) const {
    GradSlots<T> g;
    for (auto o : weight_offsets) g.weights.push_back(base + o);
    for (auto o : bias_offsets) g.biases.push_back(base + o);
    g.tangent_sums = base + tangent_sums_offset;
    return g;
  }
};

template <typename scalar_t, typename acc_t>
void backward_impl(const SobolevDims& dims, const RowsIO<scalar_t, acc_t>& io,
                   const MlpView<acc_t>& mlp, double grad_loss, double alpha, double beta,
                   const scalar_t* f, const scalar_t* u, const scalar_t* grad_f,
                   const scalar_t* grad_u, const acc_t* saved, scalar_t* grad_x,
                   const std::vector<scalar_t*>& grad_weights,
                   const std::vector<scalar_t*>& grad_biases) {
  const BlockPlan plan(dims);
  const int64_t streams = dims.streams(), K = dims.num_directions, hidden = dims.hidden_total();
  const int64_t d = dims.in_features, m = dims.out_features;
  const bool need_params = !grad_weights.empty();
  const GradLayout layout(dims, !mlp.biases.empty());
  AlignedBuffer<acc_t> partials(need_params ? plan.num_chunks * layout.size : 0);
  const auto tz1 = shared_first_tangents(io, mlp);
  const acc_t value_scale = grad_loss * 2.0 * alpha / (double(dims.batch) * m);
  const acc_t tangent_scale = grad_loss * 2.0 * beta / (double(dims.batch) * K * m);

  at::parallel_for(0, plan.num_chunks, 1, [&](int64_t begin, int64_t end) {
    BlockScratch<acc_t> s(streams, plan.rows, mlp.max_width());
    AlignedBuffer<acc_t> input(streams * plan.rows * d);
    AlignedBuffer<acc_t> g(K * plan.rows * m);
    AlignedBuffer<acc_t> zt_local(saved ? 0 : streams * plan.rows * hidden);
    AlignedBuffer<acc_t> dx(grad_x ? plan.rows * d : 0);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      GradSlots<acc_t> slots;
      if (need_params) slots = layout.slots(partials.data() + chunk * layout.size);
      for (int64_t block = plan.chunk_begin(chunk); block < plan.chunk_begin(chunk + 1); ++block) {
        const int64_t r0 = plan.first_row(block), R = plan.rows_of(block);
        io.load_input(r0, R, input.data());
        std::vector<acc_t*> zt;
        if (saved) {
          acc_t* base = const_cast<acc_t*>(saved) + r0 * streams * hidden;  // read only
          zt = block_layer_slots(mlp, streams, R, base);
        } else {  // recompute z/tz of this block
          zt = block_layer_slots(mlp, streams, R, zt_local.data());
          forward_block<acc_t>(mlp, K, R, input.data(), tz1.data(), zt, nullptr, s);
        }
        if (io.has_target()) io.projected_targets(r0, R, g.data());
        io.seeds(r0, R, f, u, grad_f, grad_u, value_scale, tangent_scale, g.data(),
                 s.adjoint.data());
        backward_block(mlp, K, R, input.data(), io.shared, zt, slots, dx.data(), s);
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

std::vector<at::Tensor> contiguous_list(at::TensorList list) {
  std::vector<at::Tensor> out;
  for (const auto& t : list) out.push_back(t.contiguous());
  return out;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sobolev_forward(
    const at::Tensor& x, const at::Tensor& directions, const std::optional<at::Tensor>& y,
    const std::optional<at::Tensor>& target_jvp, const std::optional<at::Tensor>& target_grad,
    at::TensorList weights, at::TensorList biases, int64_t activation, double negative_slope,
    double alpha, double beta, bool save_activations) {
  const auto dims = check_forward_inputs(x, directions, y, target_jvp, target_grad, weights,
                                         biases, activation);
  TORCH_INTERNAL_ASSERT(x.device().is_cpu());
  const auto acc_options = x.options().dtype(accumulation_type(x.scalar_type()));
  auto f = at::empty({dims.batch, dims.out_features}, x.options());
  auto u = at::empty({dims.batch, dims.num_directions, dims.out_features}, x.options());
  auto saved = at::empty({dims.saved_numel(save_activations)}, acc_options);
  advise_huge_pages(saved.data_ptr(), saved.nbytes());
  auto loss = at::empty({}, acc_options);
  const auto xc = x.contiguous(), dc = directions.contiguous();
  const auto yc = target_in_accumulation_type(y), jc = target_in_accumulation_type(target_jvp),
             gc = target_in_accumulation_type(target_grad);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "sobolev_forward",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto packed = pack_mlp<scalar_t, acc_t>(dims, weights, biases, activation,
                                                  negative_slope);
    const auto io = make_io<scalar_t, acc_t>(dims, xc, dc, yc, jc, gc);
    forward_impl<scalar_t, acc_t>(dims, io, packed.view, alpha, beta, f.data_ptr<scalar_t>(),
                                  u.data_ptr<scalar_t>(),
                                  save_activations ? saved.data_ptr<acc_t>() : nullptr,
                                  loss.data_ptr<acc_t>());
  });
  return {loss, f, u, saved};
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> sobolev_backward(
    const std::optional<at::Tensor>& grad_loss, const std::optional<at::Tensor>& grad_f,
    const std::optional<at::Tensor>& grad_u, const at::Tensor& x, const at::Tensor& directions,
    const std::optional<at::Tensor>& y, const std::optional<at::Tensor>& target_jvp,
    const std::optional<at::Tensor>& target_grad, at::TensorList weights, at::TensorList biases,
    const at::Tensor& f, const at::Tensor& u, const at::Tensor& saved, int64_t activation,
    double negative_slope, double alpha, double beta, bool need_grad_x, bool need_grad_params) {
  const auto dims = check_forward_inputs(x, directions, y, target_jvp, target_grad, weights,
                                         biases, activation);
  check_backward_inputs(dims, x, grad_loss, grad_f, grad_u, f, u, saved);
  TORCH_INTERNAL_ASSERT(x.device().is_cpu());
  auto grad_x = need_grad_x ? at::empty({dims.batch, dims.in_features}, x.options())
                            : at::empty({0}, x.options());
  std::vector<at::Tensor> grad_weights, grad_biases;
  for (int64_t l = 0; need_grad_params && l < dims.num_layers(); ++l) {
    grad_weights.push_back(at::empty({dims.widths[l + 1], dims.widths[l]}, x.options()));
    if (!biases.empty()) grad_biases.push_back(at::empty({dims.widths[l + 1]}, x.options()));
  }
  const auto xc = x.contiguous(), dc = directions.contiguous(), fc = f.contiguous(),
             uc = u.contiguous(), sc = saved.contiguous();
  const auto yc = target_in_accumulation_type(y), jc = target_in_accumulation_type(target_jvp),
             gc = target_in_accumulation_type(target_grad), gfc = optional_contiguous(grad_f),
             guc = optional_contiguous(grad_u);
  const double upstream = grad_loss ? grad_loss->item<double>() : 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "sobolev_backward",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto packed = pack_mlp<scalar_t, acc_t>(dims, weights, biases, activation,
                                                  negative_slope);
    const auto io = make_io<scalar_t, acc_t>(dims, xc, dc, yc, jc, gc);
    auto ptrs = [](std::vector<at::Tensor>& ts) {
      std::vector<scalar_t*> p;
      for (auto& t : ts) p.push_back(t.data_ptr<scalar_t>());
      return p;
    };
    auto ptr = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    backward_impl<scalar_t, acc_t>(
        dims, io, packed.view, upstream, alpha, beta, fc.data_ptr<scalar_t>(),
        uc.data_ptr<scalar_t>(), ptr(gfc), ptr(guc),
        sc.numel() ? sc.data_ptr<acc_t>() : nullptr,
        need_grad_x ? grad_x.data_ptr<scalar_t>() : nullptr, ptrs(grad_weights),
        ptrs(grad_biases));
  });
  return {grad_x, grad_weights, grad_biases};
}

at::Tensor activation_series(const at::Tensor& z, int64_t activation, double negative_slope) {
  TORCH_CHECK(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble,
              "z: expected fp32 or fp64, got ", z.scalar_type());
  TORCH_CHECK(activation >= 0 && activation < kNumActivations, "activation: expected a kernel "
              "id in [0, ", kNumActivations, "), got ", activation);
  auto sizes = z.sizes().vec();
  sizes.insert(sizes.begin(), 3);
  auto out = at::empty(sizes, z.options());
  const auto zc = z.contiguous();
  const int64_t n = z.numel();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "activation_series", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    cpu::activation_series<scalar_t>(static_cast<int>(activation),
                                     static_cast<scalar_t>(negative_slope),
                                     zc.data_ptr<scalar_t>(), n, o, o + n, o + 2 * n);
  });
  return out;
}

}  // namespace sobolev::cpu
