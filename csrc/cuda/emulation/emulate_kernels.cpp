// Runs the CUDA kernels (forward, backward, partial sums) on the host through host_shim.h and
// compares them with a direct row-by-row implementation of DESIGN section 2 and, for order 2,
// of docs/math.md (reference_rows.h). Exit status 0 when every case agrees. Built and run by
// tests/test_cuda_compile_and_emulation.py:
//   g++ -std=c++20 -O1 -pthread -I csrc csrc/cuda/emulation/emulate_kernels.cpp
// and, for a few cases, with -fsanitize=thread: ThreadSanitizer then reports any two threads of
// a block touching the same shared word without a barrier between them; and with
// -fsanitize=address (and bounds): any access outside the buffers a launch was given, its
// shared memory included (host_shim.h poisons what lies past the launch's dynamic size).
#include "cuda/emulation/host_shim.h"
// (the shim comes first: it defines the CUDA keywords the kernels use)
#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/backward_kernel.cuh"
#include "cuda/emulation/reference_rows.h"
#include "cuda/forward_kernel.cuh"
#include "cuda/fused_backward.cuh"
#include "cuda/fused_forward.cuh"
#include "cuda/fused_gemm_operands.cuh"
#include "cuda/fused_weight_grads.cuh"
#include "cuda/fused_weight_grads_tc.cuh"

namespace {

using sobolev::cuda::KernelArgs;
using sobolev::cuda::SobolevLaunch;
using sobolev::emulation::Case;
using sobolev::emulation::Problem;
using sobolev::emulation::Result;
using sobolev::emulation::Second;
using sobolev::emulation::make_problem;
using sobolev::emulation::reference;

// A buffer's size: exactly what the kernels may touch (so AddressSanitizer's redzone follows
// its last element), or one element where they touch none (a non-null pointer all the same).
size_t exact_or_one(int64_t elems) { return elems > 0 ? size_t(elems) : 1; }

// double <-> storage type T through its accumulation type, with the kernels' own conversions
// (bf16 and fp16 through fp32, as the GPU converts them)
template <typename T>
T to_storage(double v) {
  using A = sobolev::cuda::acc_type<T>;
  return sobolev::cuda::from_acc<T>(static_cast<A>(v));
}

template <typename T>
double to_double(T v) {
  return static_cast<double>(sobolev::cuda::to_acc<sobolev::cuda::acc_type<T>>(v));
}

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  std::vector<T> out;
  for (double e : v) out.push_back(to_storage<T>(e));
  return out;
}

template <typename T>
std::vector<double> to_doubles(const std::vector<T>& v) {
  std::vector<double> out;
  for (const T& e : v) out.push_back(to_double(e));
  return out;
}

template <typename T>
constexpr sobolev::cuda::DType dtype_of() {
  using sobolev::cuda::DType;
  if constexpr (std::is_same_v<T, double>) return DType::kFloat64;
  else if constexpr (std::is_same_v<T, float>) return DType::kFloat32;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return DType::kBFloat16;
  else return DType::kFloat16;
}

template <typename T>
const char* dtype_name() {
  constexpr const char* names[] = {"fp64", "fp32", "bf16", "fp16"};
  return names[static_cast<int>(dtype_of<T>())];
}

// The problem as the kernels see it in T: its inputs rounded to T, so the comparison measures
// the kernels' own rounding (y and the targets are passed in the accumulation type).
template <typename T>
Problem rounded(Problem p) {
  for (auto* v : {&p.x, &p.dirs, &p.grad_f, &p.grad_u, &p.grad_w})
    *v = to_doubles(cast<T>(*v));
  for (auto& w : p.W) w = to_doubles(cast<T>(w));
  for (auto& e : p.b) e = to_doubles(cast<T>(e));
  return p;
}

template <typename T>
const void* data_or_null(const std::vector<T>& v) {
  return v.empty() ? nullptr : v.data();
}

// The tiled kernels (today's; TF32: their fp32 products on tensor cores), as the launchers
// run them, with the case's grid and shared-memory limit.
template <typename T, bool TF32>
void run_tiled_forward(const SobolevLaunch& s, const Case& c) {
  namespace sc = sobolev::cuda;
  using A = sc::acc_type<T>;
  KernelArgs fa;
  fa.p = s;
  fa.plan = sc::make_plan(s, sc::kForwardTileBuffers, sc::kForwardRowBuffers, sizeof(A),
                          c.smem_limit);
  fa.plan.grid = int(std::min<int64_t>(fa.plan.num_tiles, c.grid));
  std::vector<A> fwd_scratch(fa.plan.buffers_in_smem ? 0 : fa.plan.grid * fa.plan.buffer_elems);
  std::vector<double> loss_partials(sc::kLossTerms * fa.plan.grid);
  unsigned counter = 0;
  fa.scratch = fwd_scratch.data();
  fa.loss_partials = loss_partials.data();
  fa.counter = &counter;
  emulate_launch(s.order == 2 ? sc::sobolev_forward_kernel<T, 2, TF32>
                              : sc::sobolev_forward_kernel<T, 1, TF32>,
                 fa.plan.grid, sc::kThreads, fa.plan.smem_bytes, fa);
}

template <typename T, bool TF32>
void run_tiled_backward(const SobolevLaunch& s, const Case& c) {
  namespace sc = sobolev::cuda;
  using A = sc::acc_type<T>;
  KernelArgs ba;
  ba.p = s;
  ba.plan = sc::make_plan(s, sc::kBackwardTileBuffers, sc::backward_row_buffers(s), sizeof(A),
                          c.smem_limit);
  ba.plan.grid = int(std::min<int64_t>(ba.plan.num_tiles, c.grid));
  ba.partial_size = c.need_params ? sc::partial_size(s) : 0;
  std::vector<A> bwd_scratch(ba.plan.buffers_in_smem ? 0 : ba.plan.grid * ba.plan.buffer_elems);
  std::vector<A> partials(exact_or_one(ba.plan.grid * ba.partial_size));
  ba.scratch = bwd_scratch.data();
  ba.grad_partials = partials.data();
  emulate_launch(s.order == 2 ? sc::sobolev_backward_kernel<T, 2, TF32>
                              : sc::sobolev_backward_kernel<T, 1, TF32>,
                 ba.plan.grid, sc::kThreads, ba.plan.smem_bytes, ba);
  if (c.need_params) emulate_launch(sc::sum_partials_kernel<T>, 2, sc::kThreads, 0, ba);
}

// Which kernels run: the variant, and (fp32 on tensor cores) whether plain TF32 is allowed.
struct Mode {
  sobolev::cuda::KernelVariant variant = sobolev::cuda::KernelVariant::kTiled;
  bool allow_tf32 = false;
  sobolev::cuda::WeightGrads weight_grads = sobolev::cuda::WeightGrads::kSplitK;
  bool fused_high_occupancy = false;
  bool fused_staged_split = false;
  bool bias_sums_in_operands = false;
  bool gemm_operands_in_backward = false;
  bool fused_batched_forward_pass = false;
};

// The fused kernels (fp32, bf16, fp16), as fused_forward.cu and fused_backward.cu plan and run
// them on an sm_90 device with 227 KB of shared memory per block, with the case's grid; the
// weight gradients in up to three row splits. False where the plan leaves p to the tiled ones.
const sobolev::cuda::DeviceLimits kEmulatedDevice{1, 227 * 1024, 9};

// Whether the last fused forward ran the STAGED_SPLIT shape (its plan's choice).
bool g_ran_staged_split = false;

// A STAGED_SPLIT plan's weight images for the forward or (transpose) the backward, split into
// `images` by split_weights_kernel (two blocks of 64 threads), as the launchers do.
template <typename T>
void split_weights(sobolev::cuda::FusedArgs& a, bool transpose,
                   std::vector<sobolev::cuda::Tf32Parts>& images) {
  namespace sc = sobolev::cuda;
  if (!a.plan.staged_split) return;
  sc::WeightImageArgs w;
  w.p = a.p;
  w.ld = sc::fused_lead<T>(a.plan);
  images.resize(sc::weight_image_offset(a.p, w.ld, a.p.num_layers + 1, transpose));
  w.images = images.data();
  if (transpose)
    emulate_launch(sc::split_weights_kernel<true>, 2, 64, 0, w);
  else
    emulate_launch(sc::split_weights_kernel<false>, 2, 64, 0, w);
  a.weight_images = images.data();
}

template <typename T>
bool run_fused_forward(const SobolevLaunch& s, const Case& c) {
  namespace sc = sobolev::cuda;
  sc::FusedArgs a;
  g_ran_staged_split = false;
  if (!sc::make_fused_plan<T>(s, kEmulatedDevice, &a.plan)) return false;
  g_ran_staged_split = a.plan.staged_split;
  a.p = s;
  a.plan.grid = int(std::min<int64_t>(a.plan.num_tiles, c.grid));
  std::vector<double> loss_partials(sc::kLossTerms * a.plan.grid);
  unsigned counter = 0;
  a.loss_partials = loss_partials.data();
  a.counter = &counter;
  std::vector<sc::Tf32Parts> images;
  split_weights<T>(a, false, images);
  const auto& plan = a.plan;
  sc::with_fused_shape<T>(plan.width, plan.high_occupancy, plan.staged_split,
                          [&](auto w, auto high, auto staged) {
                            constexpr int W = decltype(w)::value;
                            constexpr bool H = decltype(high)::value;
                            constexpr bool P = decltype(staged)::value;
                            emulate_launch(s.order == 2 ? sc::fused_forward_kernel<T, 2, W, H, P>
                                                        : sc::fused_forward_kernel<T, 1, W, H, P>,
                                           plan.grid, 2 * plan.tile_rows, plan.smem_bytes, a);
                          });
  return true;
}

// dw = A^T S as the binding has cuBLAS form it: fp32 sums over the rows, written in T
// (adjoint(r, i): A's element; S row-major, n_in wide).
template <typename T, typename Adjoint, typename op_t>
void host_gemm(T* dw, Adjoint adjoint, const op_t* inputs, int64_t rows, int n_out, int n_in) {
  for (int i = 0; i < n_out; ++i)
    for (int j = 0; j < n_in; ++j) {
      float sum = 0;
      for (int64_t r = 0; r < rows; ++r) sum += adjoint(r, i) * to_double(inputs[r * n_in + j]);
      dw[i * n_in + j] = to_storage<T>(sum);
    }
}

// db_1..db_L by bias_sums_kernel over `chunks` rows of partials, as launch_bias_sums runs it.
template <typename T>
void bias_sums(const SobolevLaunch& s, const std::vector<float>& partials, int chunks) {
  namespace sc = sobolev::cuda;
  sc::BiasSumArgs sums;
  sums.p = s;
  sums.partials = partials.data();
  sums.chunks = chunks;
  const int all_columns = sc::output_columns_before(s, s.num_layers + 1);
  emulate_launch(sc::bias_sums_kernel<T>, (all_columns + 31) / 32, 64, sizeof(float) * 64, sums);
}

// WeightGrads::kGemm as fused_backward.cu and the binding run it: per layer the operand
// kernel (three blocks), then the GEMM and the bias sums on the host in fp32, as cuBLAS
// accumulates, written in T; with bias_sums_in_operands, the bias sums by the operand kernels'
// partials (three chunks of samples) and bias_sums_kernel instead. Layer l's inputs are formed
// over layer l-1's adjoints where the launcher puts them there (gemm_inputs_over_adjoints), in
// a copy of the adjoints.
template <typename T>
void gemm_weight_grads(const sobolev::cuda::FusedArgs& a, std::vector<float> adjoints) {
  namespace sc = sobolev::cuda;
  using op_t = sc::gemm_operand_t<T>;
  const SobolevLaunch& s = a.p;
  const int streams = 1 + s.order * s.num_directions;
  const bool bias_partials = s.bias_sums_in_operands && s.grad_biases[0] != nullptr;
  constexpr int kChunks = 3;  // the operand kernels' grid below
  const int all_columns = sc::output_columns_before(s, s.num_layers + 1);
  std::vector<float> partials(bias_partials ? kChunks * all_columns : 0);
  for (int l = 1; l <= s.num_layers; ++l) {
    const int64_t rows = sc::gemm_rows(s, l);
    const int n_in = s.widths[l - 1], n_out = s.widths[l];
    sc::GemmOperandArgs g;
    g.p = s;
    g.layer = l;
    g.adjoints = adjoints.data() + sc::adjoint_offset(s, streams, l);
    const bool over = sc::gemm_inputs_over_adjoints(s, l);
    std::vector<op_t> own(over ? 0 : rows * n_in);
    std::vector<op_t> copy(std::is_same_v<op_t, float> ? 0 : rows * n_out);
    float* previous = adjoints.data() + (over ? sc::adjoint_offset(s, streams, l - 1) : 0);
    op_t* inputs = over ? reinterpret_cast<op_t*>(previous) : own.data();
    g.inputs = inputs;
    g.adjoint_copy = copy.empty() ? nullptr : copy.data();
    g.bias_partials = bias_partials ? partials.data() : nullptr;
    g.bias_chunks = bias_partials ? kChunks : 0;
    emulate_launch(sc::fused_gemm_operands_kernel<T>, kChunks, 64,
                   bias_partials ? sc::kBiasSumSmem : 0, g);
    const auto adjoint = [&](int64_t r, int i) {
      return copy.empty() ? g.adjoints[r * n_out + i] : to_double(copy[r * n_out + i]);
    };
    host_gemm(static_cast<T*>(s.grad_weights[l - 1]), adjoint, inputs, rows, n_out, n_in);
    if (s.grad_biases[l - 1] == nullptr || bias_partials) continue;
    auto* db = static_cast<T*>(s.grad_biases[l - 1]);
    for (int i = 0; i < n_out; ++i) {
      float sum = 0;
      for (int64_t r = 0; r < s.batch; ++r) sum += g.adjoints[r * n_out + i];
      db[i] = to_storage<T>(sum);
    }
  }
  if (bias_partials) bias_sums<T>(s, partials, kChunks);
}

// The GEMM operands the fused backward kernel stores with gemm_operands_in_backward.
template <typename op_t>
struct BackwardOperands {
  std::vector<op_t> adjoints;      // 16-bit types: the adjoints (then not in fp32)
  std::vector<op_t> inputs;        // S_1..S_{L-1}, saved_offset's layout
  std::vector<float> bias_partials;  // (grid, all columns)
};

// dW_l = A_l^T S_{l-1} on the host in fp32 as gemm_weight_grads, from the backward kernel's
// operands (layer 1's [x; v] by the operand kernel, alone, as fused_backward.cu launches it),
// and db by bias_sums_kernel over the backward's per-block partials.
template <typename T, typename op_t>
void gemm_weight_grads_of_backward_operands(const sobolev::cuda::FusedArgs& a,
                                            const std::vector<float>& adjoints,
                                            const BackwardOperands<op_t>& ops) {
  namespace sc = sobolev::cuda;
  const SobolevLaunch& s = a.p;
  const int streams = 1 + s.order * s.num_directions;
  std::vector<op_t> first_inputs(sc::gemm_rows(s, 1) * s.in_features);
  sc::GemmOperandArgs g;
  g.p = s;
  g.layer = 1;
  g.inputs = first_inputs.data();
  emulate_launch(sc::fused_gemm_operands_kernel<T>, 3, 64, 0, g);
  for (int l = 1; l <= s.num_layers; ++l) {
    const int64_t rows = sc::gemm_rows(s, l), at = sc::adjoint_offset(s, streams, l);
    const int n_in = s.widths[l - 1], n_out = s.widths[l];
    const op_t* inputs =
        l == 1 ? first_inputs.data() : ops.inputs.data() + sc::saved_offset(s, streams, l - 1);
    const auto adjoint = [&](int64_t r, int i) {
      return ops.adjoints.empty() ? double(adjoints[at + r * n_out + i])
                                  : to_double(ops.adjoints[at + r * n_out + i]);
    };
    host_gemm(static_cast<T*>(s.grad_weights[l - 1]), adjoint, inputs, rows, n_out, n_in);
  }
  if (!ops.bias_partials.empty()) bias_sums<T>(s, ops.bias_partials, a.plan.grid);
}

template <typename T>
bool run_fused_backward(const SobolevLaunch& s, const Case& c) {
  namespace sc = sobolev::cuda;
  sc::FusedArgs a;
  if (!sc::make_fused_plan<T>(s, kEmulatedDevice, &a.plan)) return false;
  a.p = s;
  a.plan.grid = int(std::min<int64_t>(a.plan.num_tiles, c.grid));
  const int streams = 1 + s.order * s.num_directions;
  const bool params = s.grad_weights[0] != nullptr;
  // WeightGrads::kSplitKTensorCores: fp32's and bf16's own kernel, fp16 the GEMM path
  const bool tc = s.weight_grads == sc::WeightGrads::kSplitKTensorCores;
  a.plan.grads_tc = tc && sc::kHasTcGrads<T>;
  if (params) {
    a.plan.adjoint_elems = sc::adjoint_offset(s, streams, s.num_layers + 1);
    a.plan.grad_blocks = a.plan.grads_tc ? sc::tc_grad_blocks(s) : sc::grad_blocks(s);
    a.plan.partial_size = sc::partial_size(s);
    const int per_chunk = a.plan.grads_tc ? sc::tc_grad_samples(s) : sc::kGradChunk / streams;
    const int64_t chunks = (s.batch + per_chunk - 1) / per_chunk;
    a.plan.grad_splits = int(std::min<int64_t>(3, chunks));
  }
  std::vector<float> adjoints(exact_or_one(a.plan.adjoint_elems));
  std::vector<float> partials(exact_or_one(a.plan.grad_splits * a.plan.partial_size));
  a.adjoints = adjoints.data();
  a.grad_partials = partials.data();
  // gemm_operands_in_backward (with gemm): what the kernel stores besides (fused_backward.cu's
  // plan_backward_operands), 16-bit adjoints instead of the fp32 ones
  using op_t = sc::gemm_operand_t<T>;
  const bool by_gemm = s.weight_grads == sc::WeightGrads::kGemm || (tc && !a.plan.grads_tc);
  const bool operands = params && s.gemm_operands_in_backward && by_gemm;
  const int all_columns = sc::output_columns_before(s, s.num_layers + 1);
  BackwardOperands<op_t> ops;
  if (operands) {
    a.plan.operands_in_backward = true;
    if (!std::is_same_v<op_t, float>) {
      ops.adjoints.resize(a.plan.adjoint_elems);
      a.operand_adjoints = ops.adjoints.data();
      a.adjoints = nullptr;
    }
    ops.inputs.resize(exact_or_one(sc::saved_offset(s, streams, s.num_layers)));
    a.layer_inputs = ops.inputs.data();
    ops.bias_partials.resize(s.grad_biases[0] != nullptr ? a.plan.grid * all_columns : 0);
    a.bias_partials = ops.bias_partials.empty() ? nullptr : ops.bias_partials.data();
  }
  std::vector<sc::Tf32Parts> images;
  split_weights<T>(a, true, images);
  const auto& plan = a.plan;
  sc::with_fused_shape<T>(plan.width, plan.high_occupancy, plan.staged_split,
                          [&](auto w, auto high, auto staged) {
                            constexpr int W = decltype(w)::value;
                            constexpr bool H = decltype(high)::value;
                            constexpr bool P = decltype(staged)::value;
                            emulate_launch(s.order == 2 ? sc::fused_backward_kernel<T, 2, W, H, P>
                                                        : sc::fused_backward_kernel<T, 1, W, H, P>,
                                           plan.grid, 2 * plan.tile_rows, plan.smem_bytes, a);
                          });
  if (!params) return true;
  if (operands) {
    gemm_weight_grads_of_backward_operands<T>(a, adjoints, ops);
    return true;
  }
  if (by_gemm) {
    gemm_weight_grads<T>(a, adjoints);
    return true;
  }
  if constexpr (sc::kHasTcGrads<T>) {
    if (a.plan.grads_tc)
      emulate_launch_2d(sc::tc_grad_kernel<T>(s), int(a.plan.grad_blocks), a.plan.grad_splits,
                        sc::kTcGradThreads, sc::tc_grad_smem_bytes<T>(s), a);
  }
  if (!a.plan.grads_tc)
    emulate_launch_2d(sc::fused_weight_grad_kernel<T>, int(a.plan.grad_blocks),
                      a.plan.grad_splits, sc::kGradThreads, sc::GradShape<T>::kSmemBytes, a);
  KernelArgs sums;
  sums.p = s;
  sums.plan.grid = a.plan.grad_splits;
  sums.partial_size = a.plan.partial_size;
  sums.grad_partials = partials.data();
  emulate_launch(sc::sum_partials_kernel<T>, 2, sc::kThreads, 0, sums);
  return true;
}

template <typename T>
void run_forward(const SobolevLaunch& s, const Case& c) {
  if constexpr (!std::is_same_v<T, double>)
    if (s.variant == sobolev::cuda::KernelVariant::kFused && run_fused_forward<T>(s, c)) return;
  if constexpr (std::is_same_v<T, float>)
    if (s.variant == sobolev::cuda::KernelVariant::kTiledTensorCores)
      return run_tiled_forward<T, true>(s, c);
  run_tiled_forward<T, false>(s, c);
}

template <typename T>
void run_backward(const SobolevLaunch& s, const Case& c) {
  if constexpr (!std::is_same_v<T, double>)
    if (s.variant == sobolev::cuda::KernelVariant::kFused && run_fused_backward<T>(s, c)) return;
  if constexpr (std::is_same_v<T, float>)
    if (s.variant == sobolev::cuda::KernelVariant::kTiledTensorCores)
      return run_tiled_backward<T, true>(s, c);
  run_tiled_backward<T, false>(s, c);
}

template <typename T>
Result emulate(const Problem& p, Mode mode) {
  namespace sc = sobolev::cuda;
  const Case& c = p.c;
  const int L = int(p.W.size());
  const size_t B = c.batch;
  const bool second = c.order == 2;
  using A = sc::acc_type<T>;
  // inputs in T, y and the targets in the accumulation type A
  auto x = cast<T>(p.x), dirs = cast<T>(p.dirs), gf = cast<T>(p.grad_f), gu = cast<T>(p.grad_u),
       gw = cast<T>(p.grad_w);
  auto y = cast<A>(p.y), tj = cast<A>(p.target_jvp), tg = cast<A>(p.target_grad),
       th = cast<A>(p.target_hvp2), tH = cast<A>(p.target_hess);
  std::vector<std::vector<T>> W, b;
  for (auto& w : p.W) W.push_back(cast<T>(w));
  for (auto& e : p.b) b.push_back(cast<T>(e));
  SobolevLaunch s;
  s.dtype = dtype_of<T>();
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
  s.variant = mode.variant;
  s.allow_tf32 = mode.allow_tf32;
  s.weight_grads = mode.weight_grads;
  s.fused_high_occupancy = mode.fused_high_occupancy;
  s.fused_staged_split = mode.fused_staged_split;
  s.bias_sums_in_operands = mode.bias_sums_in_operands;
  s.gemm_operands_in_backward = mode.gemm_operands_in_backward;
  s.fused_batched_forward_pass = mode.fused_batched_forward_pass;

  // forward
  std::vector<T> f(B * c.m), u(B * c.K * c.m), w(second ? B * c.K * c.m : 0);
  std::vector<A> loss(1);
  int hidden = 0;
  for (int l = 1; l < L; ++l) hidden += p.widths[l];
  std::vector<A> saved(exact_or_one((1 + c.order * c.K) * B * hidden));
  s.f = f.data();
  s.u = u.data();
  s.w = second ? w.data() : nullptr;
  s.saved = saved.data();
  s.loss = loss.data();
  run_forward<T>(s, c);

  // backward
  Result r;
  std::vector<T> grad_x(B * c.d);
  std::vector<A> grad_loss{A(p.grad_loss)};
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
  run_backward<T>(s, c);

  r.loss = loss[0];
  r.f = to_doubles(f);
  r.u = to_doubles(u);
  r.w = to_doubles(w);
  if (c.need_x) r.grad_x = to_doubles(grad_x);
  for (int l = 0; c.need_params && l < L; ++l) {
    r.grad_W.push_back(to_doubles(grad_W[l]));
    r.grad_b.push_back(to_doubles(grad_b[l]));
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

// max over every output and gradient of max |got - expected| / max |expected|
double worst_error(const Result& got, const Result& want, const Case& c) {
  double worst = 0;
  const auto add = [&](const std::vector<double>& g, const std::vector<double>& e) {
    double scale = 1e-30, err = 0;
    for (double v : e) scale = std::max(scale, std::fabs(v));
    for (size_t i = 0; i < g.size() && i < e.size(); ++i)
      err = std::max(err, std::fabs(g[i] - e[i]));
    worst = std::max(worst, err / scale);
  };
  add({got.loss}, {want.loss});
  add(got.f, want.f);
  add(got.u, want.u);
  add(got.w, want.w);
  if (c.need_x) add(got.grad_x, want.grad_x);
  for (size_t l = 0; c.need_params && l < want.grad_W.size(); ++l) {
    add(got.grad_W[l], want.grad_W[l]);
    if (c.bias) add(got.grad_b[l], want.grad_b[l]);
  }
  return worst;
}

// Every output and gradient of a and b equal bit for bit.
bool identical(const Result& a, const Result& b) {
  return a.loss == b.loss && a.f == b.f && a.u == b.u && a.w == b.w && a.grad_x == b.grad_x &&
         a.grad_W == b.grad_W && a.grad_b == b.grad_b;
}

template <typename T>
bool check(const Case& c, unsigned seed, Mode mode) {
  const Problem p = rounded<T>(make_problem(c, seed));
  const Result want = reference(p), got = emulate<T>(p, mode);
  if (mode.fused_staged_split && g_ran_staged_split) {
    // the weights split once per launch, the activations by integer arithmetic
    // (tf32_parts<true>): plain TF32 reads the same high parts as each warp splitting them
    // (the same products in the same order, so the same bits); 3xTF32's remainders are
    // truncated by the product instead of rounded, a difference in their last bit (about
    // 2^-21 of a value), far inside fp32's 1e-5
    Mode per_warp = mode;
    per_warp.fused_staged_split = false;
    const Result warp = emulate<T>(p, per_warp);
    if (mode.allow_tf32) {
      const bool ok = identical(got, warp);
      std::printf("%s %s (tf32, staged weight split: %s the per-warp split's)\n",
                  ok ? "ok  " : "FAIL", c.name.c_str(), ok ? "bit for bit" : "differs from");
      return ok;
    }
    const double apart = worst_error(got, warp, c), err = worst_error(got, want, c);
    const bool ok = apart <= 3e-6 && err <= 1e-5;
    std::printf("%s %s (fp32, staged weight split: %.2g from the per-warp split's; worst "
                "error %.2g, per-warp %.2g)\n",
                ok ? "ok  " : "FAIL", c.name.c_str(), apart, err, worst_error(warp, want, c));
    return ok;
  }
  if (mode.allow_tf32) {
    // plain TF32 keeps 10 of fp32's 23 mantissa bits: errors near 1e-4, above the 1e-5 that
    // fp32 (and 3xTF32) must meet. A check that fp32 accuracy is not reached by accident.
    const double err = worst_error(got, want, c);
    const bool ok = err > 1e-5 && err <= 1e-2;
    std::printf("%s %s (tf32: worst error %.2g, %s fp32's 1e-5)\n", ok ? "ok  " : "FAIL",
                c.name.c_str(), err, err > 1e-5 ? "above" : "within");
    return ok;
  }
  // bf16/fp16 round every product's operands (8 and 11 significant bits). On these few-row
  // problems the errors seen are 0.2-2.6% (bf16; 2.6%: a bias gradient summed over 7 rows
  // with cancellation) and 0.03-0.12% (fp16), so the bounds are above tests/conftest.py's 2%
  // for bf16 and below it for fp16.
  constexpr double rtol = std::is_same_v<T, double>          ? 1e-12
                          : std::is_same_v<T, float>         ? 1e-5
                          : std::is_same_v<T, __nv_bfloat16> ? 3e-2
                                                             : 5e-3;
  bool ok = close({got.loss}, {want.loss}, rtol, "loss") && close(got.f, want.f, rtol, "f") &&
            close(got.u, want.u, rtol, "u") && close(got.w, want.w, rtol, "w");
  if (c.need_x) ok = close(got.grad_x, want.grad_x, rtol, "grad_x") && ok;
  for (size_t l = 0; c.need_params && l < want.grad_W.size(); ++l) {
    ok = close(got.grad_W[l], want.grad_W[l], rtol, "grad_W[" + std::to_string(l) + "]") && ok;
    if (c.bias)
      ok = close(got.grad_b[l], want.grad_b[l], rtol, "grad_b[" + std::to_string(l) + "]") && ok;
  }
  std::printf("%s %s (%s)\n", ok ? "ok  " : "FAIL", c.name.c_str(), dtype_name<T>());
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
  add("tanh, widths 256 and 200 (several tensor-core weight panels, padding)", [](Case& c) {
    c.act = kTanh, c.hidden = {256, 200}, c.batch = 6, c.K = 1;
  });
  add("sigmoid, 1024 rows, upstream 0.03: adjoints below fp16's normal range, dW above it",
      [](Case& c) {
        c.act = kSigmoid, c.batch = 1024, c.K = 1, c.grad_loss = 0.03, c.need_x = false;
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
  // (last: a case's seed is its place in this list, which the tolerances above were seen at)
  add("silu, width 64 (one weight panel)", [](Case& c) { c.act = kSilu, c.hidden = {64}; });
  return all;
}

// tf32_parts<true> (the staged kernels' split of the activations) against tf32_parts
// (cvt.rna's): over every exponent and many mantissas, and the special values. Finite values:
// the same hi, a lo with hi + lo = v exactly, and the product reading lo within one TF32 step
// of cvt.rna's lo; those within half a TF32 step of fp32's largest, hi = inf and lo = -inf
// as cvt.rna's. NaN and inf: a lo that the product reads as NaN (so every product with the
// value is NaN), and hi = inf for inf.
bool check_tf32_parts() {
  namespace sc = sobolev::cuda;
  const auto read = [](uint32_t reg) {  // as mma.sync reads a TF32 operand
    return emulated_operand(EmulatedMma::kTf32, reg, 0);
  };
  int bad = 0, finite = 0;
  uint32_t state = 12345;
  const auto check_one = [&](float v) {
    uint32_t hi, lo, hi_cvt, lo_cvt;
    sc::tf32_parts<true>(v, true, hi, lo);
    sc::tf32_parts(v, true, hi_cvt, lo_cvt);
    const float h = sc::tf32_value(hi), l = sc::tf32_value(lo);
    bool ok;
    if (std::isfinite(v) && std::isfinite(sc::tf32_value(hi_cvt))) {
      ++finite;
      // one TF32 step of lo: 10 bits below its leading one, or a subnormal's 2^-136
      const float l_cvt = sc::tf32_value(lo_cvt);
      const float step = std::fmax(std::ldexp(std::fabs(l), -10), std::ldexp(1.0f, -136));
      ok = hi == hi_cvt && double(h) + double(l) == double(v) &&
           std::fabs(read(lo) - l_cvt) <= step;
    } else if (std::isfinite(v)) {  // within half a TF32 step of fp32's largest: hi = inf
      ok = hi == hi_cvt && read(lo) == read(lo_cvt);  // and lo = -inf, both ways
    } else {
      ok = std::isnan(read(lo)) && (!std::isinf(v) || h == v);
    }
    if (!ok && ++bad <= 5)
      std::printf("FAIL tf32 parts of %a (bits %08x): hi %08x (cvt.rna %08x), lo %08x\n", v,
                  std::bit_cast<uint32_t>(v), hi, hi_cvt, lo);
  };
  for (uint32_t exponent = 0; exponent < 256; ++exponent)
    for (int i = 0; i < 200; ++i) {
      state = state * 1664525u + 1013904223u;  // (a fixed sequence: the same values each run)
      check_one(std::bit_cast<float>((state & 0x807fffffu) | (exponent << 23)));
    }
  for (uint32_t bits : {0x00000000u, 0x80000000u, 0x00000001u, 0x00001000u, 0x00000fffu,
                        0x3f801000u, 0x3f800fffu, 0x7f7fefffu, 0x7f7ff000u, 0x7f7fffffu,
                        0x7f800000u, 0xff800000u, 0x7fc00000u, 0x7fffffffu, 0xffffffffu,
                        0x7f800001u, 0xff800001u})
    check_one(std::bit_cast<float>(bits));
  std::printf("%s tf32 parts: integer split against cvt.rna's, %d finite values and the "
              "special ones\n",
              bad == 0 ? "ok  " : "FAIL", finite);
  return bad == 0;
}

// The emulation's own barriers, checked with kernels of their own: thread 1 reads a shared
// word that thread 0 wrote, with or without a __syncthreads between (under ThreadSanitizer,
// "race" must be reported and "synced" must not: the fibers' annotations neither hide a race
// nor invent one); and thread 0 leaving before a __syncthreads that the others wait at (the
// scheduler must stop with a deadlock, where threads would hang).
template <bool kBarrier>
void shared_word_kernel(float* out) {
  auto* word = reinterpret_cast<float*>(sobolev::cuda::smem);
  if (threadIdx.x == 0) word[0] = 1.0f;
  if (kBarrier) __syncthreads();
  if (threadIdx.x == 1) out[0] = word[0];
}

void early_exit_kernel(float* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

int check_barriers(const std::string& which) {
  float out[64] = {};
  if (which == "race") emulate_launch(shared_word_kernel<false>, 1, 64, sizeof(float), &out[0]);
  if (which == "synced") emulate_launch(shared_word_kernel<true>, 1, 64, sizeof(float), &out[0]);
  if (which == "deadlock") emulate_launch(early_exit_kernel, 1, 64, 0, &out[0]);
  if (which != "race" && which != "synced") {
    std::printf("unknown --barrier-check=%s (expected race, synced or deadlock)\n", which.c_str());
    return 2;
  }
  const bool read = out[0] == 1.0f;
  std::printf("%s barrier check %s: thread 1 read %g\n", read ? "ok  " : "FAIL", which.c_str(),
              out[0]);
  return read ? 0 : 1;
}

// And the launch's shared memory: a kernel whose thread t writes word t + 1 of a launch that
// asked for one word a thread writes past it (under AddressSanitizer, a report).
void shifted_word_kernel(float*) {
  reinterpret_cast<float*>(sobolev::cuda::smem)[threadIdx.x + 1] = 1.0f;
}

int check_shared_bounds() {
  emulate_launch(shifted_word_kernel, 1, 64, 64 * sizeof(float), static_cast<float*>(nullptr));
  std::printf("ok   shared memory check: word 64 of 64 written (a report under ASan)\n");
  return 0;
}

}  // namespace

// Arguments: --tf32-parts (check_tf32_parts only), --barrier-check=race, synced or deadlock
// (check_barriers only), --shared-bounds-check (check_shared_bounds only), or --variant=tiled
// (default), tiled_tc or fused, --weight-grads=gemm or =splitk_tc (the fused backward's
// WeightGrads::kGemm or kSplitKTensorCores), --occupancy=high (the fused kernels' HIGH_OCCUPANCY
// shapes), --weight-split=staged (their STAGED_SPLIT shapes: where a case's plan takes one, its
// line compares the results with the per-warp split's, bit for bit for plain TF32, within 3e-6 for
// 3xTF32), --bias-sums=operands (with gemm: the bias sums from the operand kernels' partials),
// --gemm-operands=backward (with gemm: the operands and bias partials from the backward kernel),
// --forward-pass=batched (16-bit: the fused forward's activation pass kPassBatch elements at a
// time) and
// --dtypes=fp32,fp16,... (the labels of the lines below; all by default) first, then, optionally,
// parts of case names: only those cases run (all without any).
//   tiled:    fp64, fp32, bf16 and fp16 (today's kernels)
//   tiled_tc: fp32 on tensor cores, as 3xTF32 and as plain TF32 (bf16/fp16 are tiled's)
//   fused:    fp32 as 3xTF32 and as plain TF32, bf16, fp16 (fp64 runs the tiled kernels)
int main(int argc, char** argv) {
  std::vector<std::string> only(argv + 1, argv + argc);
  if (!only.empty() && only[0] == "--tf32-parts") return check_tf32_parts() ? 0 : 1;
  if (!only.empty() && only[0].rfind("--barrier-check=", 0) == 0)
    return check_barriers(only[0].substr(16));
  if (!only.empty() && only[0] == "--shared-bounds-check") return check_shared_bounds();
  std::string variant = "tiled", dtypes = "fp64,fp32,tf32,bf16,fp16";
  auto weight_grads = sobolev::cuda::WeightGrads::kSplitK;
  bool high_occupancy = false, staged_split = false, bias_operands = false;
  bool backward_operands = false, batched_pass = false;
  while (!only.empty() && only[0].rfind("--", 0) == 0) {
    if (only[0].rfind("--variant=", 0) == 0) variant = only[0].substr(10);
    if (only[0].rfind("--dtypes=", 0) == 0) dtypes = only[0].substr(9);
    if (only[0] == "--weight-grads=gemm") weight_grads = sobolev::cuda::WeightGrads::kGemm;
    if (only[0] == "--weight-grads=splitk_tc")
      weight_grads = sobolev::cuda::WeightGrads::kSplitKTensorCores;
    if (only[0] == "--occupancy=high") high_occupancy = true;
    if (only[0] == "--weight-split=staged") staged_split = true;
    if (only[0] == "--bias-sums=operands") bias_operands = true;
    if (only[0] == "--gemm-operands=backward") backward_operands = true;
    if (only[0] == "--forward-pass=batched") batched_pass = true;
    only.erase(only.begin());
  }
  const auto wanted = [&](const char* label) { return dtypes.find(label) != dtypes.npos; };
  using sobolev::cuda::KernelVariant;
  const KernelVariant v = variant == "fused"      ? KernelVariant::kFused
                          : variant == "tiled_tc" ? KernelVariant::kTiledTensorCores
                                                  : KernelVariant::kTiled;
  bool ok = true;
  unsigned seed = 0;
  for (const Case& c : cases()) {
    ++seed;
    const auto named = [&](const std::string& part) { return c.name.find(part) != c.name.npos; };
    if (!only.empty() && std::none_of(only.begin(), only.end(), named)) continue;
    // a kink (relu) can flip under 16-bit or TF32 rounding, as in the torch tests
    const bool kink = c.act == sobolev::kRelu || c.act == sobolev::kLeakyRelu;
    const Mode exact{v,           false,         weight_grads,      high_occupancy,
                     staged_split, bias_operands, backward_operands, batched_pass};
    Mode tf32 = exact;
    tf32.allow_tf32 = true;
    if (v == KernelVariant::kTiled && wanted("fp64")) ok = check<double>(c, seed, exact) && ok;
    if (wanted("fp32")) ok = check<float>(c, seed, exact) && ok;
    if (v != KernelVariant::kTiled && !kink && wanted("tf32"))
      ok = check<float>(c, seed, tf32) && ok;
    if (v == KernelVariant::kTiledTensorCores || kink) continue;
    if (wanted("bf16")) ok = check<__nv_bfloat16>(c, seed, exact) && ok;
    if (wanted("fp16")) ok = check<__half>(c, seed, exact) && ok;
  }
  std::printf("%s\n", ok ? "all cases agree" : "MISMATCH");
  return ok ? 0 : 1;
}
