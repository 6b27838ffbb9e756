// The thin ATen side of the CUDA kernels: checks, allocation, and a launch on the current
// stream of x's device. Everything else is in the torch-free sobolev_*.cu files.
#include "cuda/sobolev_cuda.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mv.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/sobolev_kernels.cuh"
#include "cuda/weight_grad_gemm.h"
#include "op_checks.h"

namespace sobolev::cuda {
namespace {

DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return DType::kFloat64;
    case at::kFloat: return DType::kFloat32;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default: TORCH_CHECK(false, "x: dtype ", t, " is not supported by the CUDA kernels");
  }
}

// The variants below are read from the environment on every call, so one process can time
// every variant. Their defaults are what an H200 measured fastest at configs S, M and L, fp32
// and bf16, step and forward (bench/results/h200-2026-11-27/run5): fused kernels, dW by GEMM,
// high occupancy. "tiled" keeps the least memory (it recomputes instead of storing).

// The value of environment variable `name`: one of `values` (the error lists them in this
// order), `fallback` where unset or empty.
std::string env_choice(const char* name, const std::string& fallback,
                       const std::vector<std::string>& values) {
  const char* env = std::getenv(name);
  const std::string value = env == nullptr || *env == '\0' ? fallback : env;
  if (std::find(values.begin(), values.end(), value) != values.end()) return value;
  std::string expected = values[0];
  for (size_t i = 1; i < values.size(); ++i)
    expected += (i + 1 == values.size() ? " or " : ", ") + values[i];
  TORCH_CHECK(false, name, ": expected ", expected, ", got '", value, "'");
}

// SOBOLEV_CUDA_KERNEL: "fused" (the default), "tiled" or "tiled_tc" (see KernelVariant).
KernelVariant requested_variant() {
  const std::string name =
      env_choice("SOBOLEV_CUDA_KERNEL", "fused", {"tiled", "tiled_tc", "fused"});
  return name == "fused"   ? KernelVariant::kFused
         : name == "tiled" ? KernelVariant::kTiled
                           : KernelVariant::kTiledTensorCores;
}

// SOBOLEV_CUDA_WEIGHT_GRADS: "gemm" (the default), "cutlass" (gemm's operands, the fp32 dW by
// CUTLASS's 3xTF32 split-K GEMM instead of cuBLAS, weight_grad_gemm.h), "splitk" or
// "splitk_tc" (see WeightGrads; cutlass and splitk_tc unmeasured on a GPU, timed by the GPU
// script as providers cuda_cutlass_gemm and cuda_splitk_tc).
std::string requested_weight_grads_name() {
  return env_choice("SOBOLEV_CUDA_WEIGHT_GRADS", "gemm",
                    {"gemm", "cutlass", "splitk", "splitk_tc"});
}

WeightGrads requested_weight_grads() {
  const std::string name = requested_weight_grads_name();
  return name == "gemm" || name == "cutlass" ? WeightGrads::kGemm
         : name == "splitk"                  ? WeightGrads::kSplitK
                                             : WeightGrads::kSplitKTensorCores;
}

// SOBOLEV_CUDA_FUSED_OCCUPANCY: "high" (the default: the fused kernels' shapes with more
// warps per SM at widths 128 and 256 in fp32; FusedShape) or "low".
bool requested_high_occupancy() {
  return env_choice("SOBOLEV_CUDA_FUSED_OCCUPANCY", "high", {"high", "low"}) == "high";
}

// SOBOLEV_CUDA_FUSED_WEIGHT_SPLIT: how the fused kernels' fp32 (3xTF32) products split the
// staged weights. "warp" (the default: each warp splits every fragment it loads, measured in
// run 5) or "staged" (split once as the block stages them, FusedShape's STAGED_SPLIT;
// unmeasured on a GPU, timed by the GPU script as provider cuda_staged_split).
bool requested_staged_split() {
  return env_choice("SOBOLEV_CUDA_FUSED_WEIGHT_SPLIT", "warp", {"warp", "staged"}) == "staged";
}

// SOBOLEV_CUDA_BIAS_SUMS: how the GEMM weight gradients' bias sums (the column sums of each
// layer's (B, n_l) fp32 value adjoints) run. "reduce" (the default: torch's sum over dim 0; on
// the H200 at config M 52 us a layer of width 128, about 0.6 TB/s, run 5), "gemv" (cuBLAS's
// A^T 1 through ATen, one ones vector a call) or "operands" (per-block partial sums in the
// operand kernels, which read the adjoints' value rows once more, then one launch adds every
// layer's in order: launch_bias_sums). The last two unmeasured on a GPU, timed by the GPU
// script's kernel profile as providers cuda_bias_gemv and cuda_bias_operands.
std::string requested_bias_sums() {
  return env_choice("SOBOLEV_CUDA_BIAS_SUMS", "reduce", {"reduce", "gemv", "operands"});
}

// SOBOLEV_CUDA_GEMM_OPERANDS: who forms the GEMM weight gradients' operands. "kernel" (the
// default, measured in run 5: an operand kernel per layer re-reads the saved z/tz and the fp32
// adjoints, 0.22 ms at config M in fp32 and 0.35 ms in bf16, where 16-bit adjoints are copied)
// or "backward" (the fused backward kernel stores them as it forms the adjoints: 16-bit
// adjoints directly, the layer inputs from the z/tz it has read, and per-block bias partials,
// which then replace SOBOLEV_CUDA_BIAS_SUMS's sums; more workspace: every layer's operands at
// once). The second unmeasured on a GPU, timed by the GPU script as provider
// cuda_backward_operands.
bool requested_operands_in_backward() {
  return env_choice("SOBOLEV_CUDA_GEMM_OPERANDS", "kernel", {"kernel", "backward"}) ==
         "backward";
}

// SOBOLEV_CUDA_FORWARD_PASS: how the fused forward kernel's activation pass (bias,
// activation, tangents, saved z/tz) walks its tile in bf16 and fp16 models. "single" (the
// default, measured in run 5: one element after the other, each a chain of dependent loads,
// math and stores) or "batched" (kPassBatch elements' loads, then their math: independent
// chains to interleave, as the backward's pass does; unmeasured on a GPU, timed by the GPU
// script as provider cuda_batched_pass). fp32 always runs "single" (fused_forward.cuh says
// why).
bool requested_batched_forward_pass() {
  return env_choice("SOBOLEV_CUDA_FORWARD_PASS", "single", {"single", "batched"}) == "batched";
}

// Contiguous inputs, kept alive for the launch; y and the targets in the accumulation type.
struct Inputs {
  at::Tensor x, directions, y, target_jvp, target_grad, target_hvp2, target_hess;
  std::vector<at::Tensor> weights, biases;
};

at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t ? t->contiguous() : at::Tensor();
}

const void* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr() : nullptr;
}

// The scalar arguments shared by both ops.
struct Scalars {
  int64_t activation;
  double negative_slope, alpha, beta, gamma;
  int64_t order;
  bool allow_tf32;
};

SobolevLaunch describe(const SobolevDims& dims, const Inputs& in, const Scalars& scalars) {
  TORCH_CHECK(dims.num_layers() <= kMaxLayers, "weights: the CUDA kernels take at most ",
              kMaxLayers, " layers, got ", dims.num_layers());
  const int64_t widest = *std::max_element(dims.widths.begin(), dims.widths.end());
  TORCH_CHECK(widest <= kMaxWidth, "weights: the CUDA kernels take widths up to ", kMaxWidth,
              ", got ", widest);
  SobolevLaunch p;
  p.dtype = dtype_of(in.x.scalar_type());
  p.batch = dims.batch;
  p.in_features = static_cast<int>(dims.in_features);
  p.num_directions = static_cast<int>(dims.num_directions);
  p.out_features = static_cast<int>(dims.out_features);
  p.shared_directions = dims.shared_directions;
  p.x = data_or_null(in.x);
  p.directions = data_or_null(in.directions);
  p.y = data_or_null(in.y);
  p.target_jvp = data_or_null(in.target_jvp);
  p.target_grad = data_or_null(in.target_grad);
  p.target_hvp2 = data_or_null(in.target_hvp2);
  p.target_hess = data_or_null(in.target_hess);
  p.alpha = scalars.alpha;
  p.beta = scalars.beta;
  p.gamma = scalars.gamma;
  p.order = static_cast<int>(scalars.order);
  p.allow_tf32 = scalars.allow_tf32;
  p.variant = requested_variant();
  p.weight_grads = requested_weight_grads();
  p.fused_high_occupancy = requested_high_occupancy();
  p.fused_staged_split = requested_staged_split();
  p.bias_sums_in_operands = requested_bias_sums() == "operands";
  p.gemm_operands_in_backward = requested_operands_in_backward();
  p.fused_batched_forward_pass = requested_batched_forward_pass();
  p.num_layers = static_cast<int>(dims.num_layers());
  for (int64_t l = 0; l <= dims.num_layers(); ++l) p.widths[l] = static_cast<int>(dims.widths[l]);
  for (int64_t l = 0; l < dims.num_layers(); ++l) {
    p.weights[l] = data_or_null(in.weights[l]);
    p.biases[l] = in.biases.empty() ? nullptr : data_or_null(in.biases[l]);
  }
  p.activation = static_cast<int>(scalars.activation);
  p.negative_slope = scalars.negative_slope;
  return p;
}

Inputs contiguous_inputs(const at::Tensor& x, const at::Tensor& directions,
                         const TargetArgs& targets, at::TensorList weights,
                         at::TensorList biases) {
  Inputs in{x.contiguous(),
            directions.contiguous(),
            target_in_accumulation_type(targets.y),
            target_in_accumulation_type(targets.target_jvp),
            target_in_accumulation_type(targets.target_grad),
            target_in_accumulation_type(targets.target_hvp2),
            target_in_accumulation_type(targets.target_hess),
            {},
            {}};
  for (const auto& w : weights) in.weights.push_back(w.contiguous());
  for (const auto& b : biases) in.biases.push_back(b.contiguous());
  return in;
}

at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(std::max<size_t>(bytes, 1))},
                   like.options().dtype(at::kByte));
}

// forward outputs: loss, f, u, w (order 2; empty for order 1), saved
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> run_forward(
    const SobolevDims& dims, SobolevLaunch p, const at::Tensor& x, bool save_activations) {
  const auto acc_options = x.options().dtype(accumulation_type(x.scalar_type()));
  const std::vector<int64_t> u_shape = {dims.batch, dims.num_directions, dims.out_features};
  auto f = at::empty({dims.batch, dims.out_features}, x.options());
  auto u = at::empty(u_shape, x.options());
  auto w = dims.order == 2 ? at::empty(u_shape, x.options()) : at::empty({0}, x.options());
  auto saved = at::empty({dims.saved_numel(save_activations)}, acc_options);
  auto loss = at::empty({}, acc_options);
  p.f = f.data_ptr();
  p.u = u.data_ptr();
  p.w = dims.order == 2 ? w.data_ptr() : nullptr;
  p.saved = save_activations && saved.numel() > 0 ? saved.data_ptr() : nullptr;
  p.loss = loss.data_ptr();
  LaunchPlan plan;
  C10_CUDA_CHECK(plan_forward(p, device_limits(), &plan));
  auto ws = workspace(plan.workspace_bytes, x);
  C10_CUDA_CHECK(
      launch_forward(p, plan, ws.data_ptr(), c10::cuda::getCurrentCUDAStream().stream()));
  return {loss, f, u, w, saved};
}

// dw = a^T s by CUTLASS's 3xTF32 split-K GEMM (weight_grad_gemm.h), all three fp32 and
// contiguous: false where it does not take them (not compiled in, a GPU before sm_80, whose
// TF32 products CUTLASS compiles to nothing, empty, more than 2^31 - 1 rows, widths not
// multiples of 4, misaligned), for the caller's cuBLAS GEMM. The workspace
// (the slices' partial products) from the caching allocator, on the current stream.
bool weight_grad_by_cutlass(const at::Tensor& a, const at::Tensor& s, at::Tensor& dw) {
  const bool fp32 = a.scalar_type() == at::kFloat && s.scalar_type() == at::kFloat &&
                    dw.scalar_type() == at::kFloat;
  if (!fp32 || !weight_grad_gemm_compiled() || device_limits().major < 8 ||
      !a.is_contiguous() || !s.is_contiguous() || !dw.is_contiguous() || a.numel() == 0 ||
      s.numel() == 0 || a.size(0) > std::numeric_limits<int>::max())
    return false;
  WeightGradGemm g;
  g.rows = static_cast<int>(a.size(0));
  g.n_out = static_cast<int>(a.size(1));
  g.n_in = static_cast<int>(s.size(1));
  if (!weight_grad_gemm_fits(a.const_data_ptr<float>(), s.const_data_ptr<float>(),
                             dw.const_data_ptr<float>(), g.n_out, g.n_in))
    return false;
  g.splits = weight_grad_gemm_splits(g.rows, g.n_out, g.n_in, device_limits().num_sms);
  const auto ws = workspace(weight_grad_gemm_workspace_bytes(g), a);
  C10_CUDA_CHECK(weight_grad_gemm_3xtf32(a.const_data_ptr<float>(), s.const_data_ptr<float>(),
                                         dw.mutable_data_ptr<float>(), g, ws.data_ptr(),
                                         c10::cuda::getCurrentCUDAStream().stream()));
  return true;
}

// WeightGrads::kGemm, after the fused backward kernel: per layer, its operands (one launch),
// dW_l = A_l^T S_{l-1} on cuBLAS at torch's matmul precision (the op's allow_tf32 is read off
// it; SOBOLEV_CUDA_WEIGHT_GRADS=cutlass: fp32 by CUTLASS's 3xTF32 GEMM where the op is
// fp32-accurate, weight_grad_by_cutlass) and db_l = the column sums of A_l's value rows
// (SOBOLEV_CUDA_BIAS_SUMS=operands: the operand launches' partials, added after the last
// layer's; SOBOLEV_CUDA_GEMM_OPERANDS=backward: every operand but layer 1's inputs, and the
// bias partials, stored by the backward kernel). The workspace buffers are reused
// layer by layer, and layer l's inputs are formed over layer l-1's adjoints
// (gemm_inputs_over_adjoints): every launch is on the current stream, so each layer's GEMM and
// sums read them before the next layer's operands overwrite them.
void weight_grads_by_gemm(const SobolevLaunch& p, const LaunchPlan& plan, const at::Tensor& ws,
                          std::vector<at::Tensor>& grad_weights,
                          std::vector<at::Tensor>& grad_biases) {
  const auto stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto options = ws.options();
  const bool bias_partials = plan.fused.bias_chunks > 0;
  at::Tensor ones;  // SOBOLEV_CUDA_BIAS_SUMS=gemv: db_l = values^T 1
  if (requested_bias_sums() == "gemv" && !grad_biases.empty() && !bias_partials)
    ones = at::ones({p.batch}, options.dtype(at::kFloat));
  const bool cutlass = !p.allow_tf32 && requested_weight_grads_name() == "cutlass";
  for (int l = 1; l <= p.num_layers; ++l) {
    GemmOperands ops;
    C10_CUDA_CHECK(launch_gemm_operands(p, plan, ws.data_ptr(), l, &ops, stream));
    const auto op_options =
        options.dtype(ops.dtype == DType::kBFloat16 ? at::kBFloat16 : at::kFloat);
    const auto a = at::from_blob(const_cast<void*>(ops.adjoints), {ops.rows, p.widths[l]},
                                 op_options);
    const auto s = at::from_blob(const_cast<void*>(ops.inputs), {ops.rows, p.widths[l - 1]},
                                 op_options);
    at::Tensor& dw = grad_weights[l - 1];
    const bool by_cutlass = cutlass && weight_grad_by_cutlass(a, s, dw);
    if (!by_cutlass && dw.scalar_type() == a.scalar_type())
      at::mm_out(dw, a.t(), s);
    else if (!by_cutlass)
      dw.copy_(at::mm(a.t(), s));
    if (grad_biases.empty() || bias_partials) continue;
    const auto values = at::from_blob(const_cast<float*>(ops.bias_adjoints),
                                      {p.batch, p.widths[l]}, options.dtype(at::kFloat));
    at::Tensor& db = grad_biases[l - 1];
    if (ones.defined() && db.scalar_type() == at::kFloat)
      at::mv_out(db, values.t(), ones);
    else if (ones.defined())
      db.copy_(at::mv(values.t(), ones));
    else if (db.scalar_type() == at::kFloat)
      at::sum_out(db, values, {0});
    else
      db.copy_(at::sum(values, {0}));
  }
  if (bias_partials) C10_CUDA_CHECK(launch_bias_sums(p, plan, ws.data_ptr(), stream));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sobolev_forward(
    const at::Tensor& x, const at::Tensor& directions, const std::optional<at::Tensor>& y,
    const std::optional<at::Tensor>& target_jvp, const std::optional<at::Tensor>& target_grad,
    const std::optional<at::Tensor>& target_hvp2, const std::optional<at::Tensor>& target_hess,
    at::TensorList weights, at::TensorList biases, int64_t activation, double negative_slope,
    double alpha, double beta, double gamma, int64_t order, bool allow_tf32,
    bool save_activations) {
  const TargetArgs targets{y, target_jvp, target_grad, target_hvp2, target_hess};
  const auto dims =
      check_forward_inputs(x, directions, targets, weights, biases, activation, order);
  TORCH_INTERNAL_ASSERT(x.is_cuda());
  const c10::cuda::CUDAGuard guard(x.device());
  const Inputs in = contiguous_inputs(x, directions, targets, weights, biases);
  const Scalars scalars{activation, negative_slope, alpha, beta, gamma, order, allow_tf32};
  return run_forward(dims, describe(dims, in, scalars), x, save_activations);
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
  const TargetArgs targets{y, target_jvp, target_grad, target_hvp2, target_hess};
  const auto dims =
      check_forward_inputs(x, directions, targets, weights, biases, activation, order);
  check_backward_inputs(dims, x, grad_loss, grad_f, grad_u, grad_w, f, u, w, saved);
  TORCH_INTERNAL_ASSERT(x.is_cuda());
  const c10::cuda::CUDAGuard guard(x.device());
  const Inputs in = contiguous_inputs(x, directions, targets, weights, biases);
  const Scalars scalars{activation, negative_slope, alpha, beta, gamma, order, allow_tf32};
  SobolevLaunch p = describe(dims, in, scalars);

  // The CUDA backward reads z/tz(/ttz) from global memory: recompute them if the forward
  // kept none (in chunks of rows: row_chunks.h). The loss was the forward's: the recompute
  // reads no targets (target_grad alone is m d floats a row) and forms no loss terms.
  at::Tensor z = saved.contiguous();
  if (z.numel() == 0 && dims.hidden_total() > 0) {
    SobolevLaunch hidden = p;
    hidden.y = hidden.target_jvp = hidden.target_grad = nullptr;
    hidden.target_hvp2 = hidden.target_hess = nullptr;
    z = std::get<4>(run_forward(dims, hidden, x, true));
  }
  const auto loss_grad = contiguous_or_undefined(grad_loss);
  const auto f_grad = contiguous_or_undefined(grad_f), u_grad = contiguous_or_undefined(grad_u),
             w_grad = contiguous_or_undefined(grad_w);
  const auto fc = f.contiguous(), uc = u.contiguous(), wc = w.contiguous();
  p.grad_loss = data_or_null(loss_grad);
  p.grad_f = data_or_null(f_grad);
  p.grad_u = data_or_null(u_grad);
  p.grad_w = data_or_null(w_grad);
  p.f_in = fc.const_data_ptr();
  p.u_in = uc.const_data_ptr();
  p.w_in = dims.order == 2 ? wc.const_data_ptr() : nullptr;
  p.saved_in = data_or_null(z);

  auto grad_x = need_grad_x ? at::empty({dims.batch, dims.in_features}, x.options())
                            : at::empty({0}, x.options());
  std::vector<at::Tensor> grad_weights, grad_biases;
  for (int64_t l = 0; need_grad_params && l < dims.num_layers(); ++l) {
    grad_weights.push_back(at::empty({dims.widths[l + 1], dims.widths[l]}, x.options()));
    p.grad_weights[l] = grad_weights.back().data_ptr();
    if (biases.empty()) continue;
    grad_biases.push_back(at::empty({dims.widths[l + 1]}, x.options()));
    p.grad_biases[l] = grad_biases.back().data_ptr();
  }
  p.grad_x = need_grad_x ? grad_x.data_ptr() : nullptr;
  LaunchPlan plan;
  C10_CUDA_CHECK(plan_backward(p, device_limits(), &plan));
  auto ws = workspace(plan.workspace_bytes, x);
  C10_CUDA_CHECK(
      launch_backward(p, plan, ws.data_ptr(), c10::cuda::getCurrentCUDAStream().stream()));
  if (plan.variant == KernelVariant::kFused && plan.fused.grads_by_gemm)
    weight_grads_by_gemm(p, plan, ws, grad_weights, grad_biases);
  return {grad_x, grad_weights, grad_biases};
}

at::Tensor weight_grad_gemm(const at::Tensor& adjoints, const at::Tensor& inputs) {
  check_weight_grad_gemm(adjoints, inputs);
  const c10::cuda::CUDAGuard guard(adjoints.device());
  auto dw = at::empty({adjoints.size(1), inputs.size(1)}, adjoints.options());
  if (!weight_grad_by_cutlass(adjoints, inputs, dw)) at::mm_out(dw, adjoints.t(), inputs);
  return dw;
}

// the definitions above are the declared ops (another signature would be an overload, and
// decltype of an overloaded name does not compile)
static_assert(std::is_same_v<decltype(sobolev_forward), ForwardOp>);
static_assert(std::is_same_v<decltype(sobolev_backward), BackwardOp>);
static_assert(std::is_same_v<decltype(weight_grad_gemm), WeightGradGemmOp>);

}  // namespace sobolev::cuda
