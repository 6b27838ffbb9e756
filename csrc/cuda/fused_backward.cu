// Plan and launches of the fused backward: the tile kernel (fused_backward.cuh), then, for the
// parameter gradients, one product per layer over all stacked rows in row splits
// (fused_weight_grads.cuh) and the sum of the splits in order (sum_partials_kernel); or, for
// WeightGrads::kGemm, the GEMM operands per layer on the caller's request
// (fused_gemm_operands.cuh, launch_gemm_operands).
#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "cuda/fused_backward.cuh"
#include "cuda/fused_gemm_operands.cuh"
#include "cuda/fused_launch.h"
#include "cuda/fused_weight_grads.cuh"
#include "cuda/fused_weight_grads_tc.cuh"

namespace sobolev::cuda {
namespace {

template <typename scalar_t>
auto backward_kernel(const SobolevLaunch& p, const FusedPlan& plan) {
  return with_fused_shape<scalar_t>(
      plan.width, plan.high_occupancy, plan.staged_split, [&](auto w, auto high, auto staged) {
        constexpr int W = decltype(w)::value;
        constexpr bool H = decltype(high)::value, P = decltype(staged)::value;
        return p.order == 2 ? fused_backward_kernel<scalar_t, 2, W, H, P>
                            : fused_backward_kernel<scalar_t, 1, W, H, P>;
      });
}

// WeightGrads::kSplitK: dW blocks times row splits (fused_weight_grads.cuh), about four blocks
// per SM in all, a split at least one chunk of samples. kSplitKTensorCores (fp32 and bf16,
// where its chunk fits in shared memory): fused_weight_grads_tc.cuh's blocks, as many (two
// resident per SM: two waves, so the blocks of wide layers fill the SMs the narrow ones leave
// early).
template <typename scalar_t>
void plan_splitk_grads(const SobolevLaunch& p, const DeviceLimits& device, LaunchPlan* plan,
                       cudaError_t* err) {
  FusedPlan& fused = plan->fused;
  const int streams = 1 + p.order * p.num_directions;
  if constexpr (kHasTcGrads<scalar_t>)
    fused.grads_tc = p.weight_grads == WeightGrads::kSplitKTensorCores &&
                     tc_grad_smem_bytes<scalar_t>(p) <= device.smem_per_block;
  fused.grad_blocks = fused.grads_tc ? tc_grad_blocks(p) : grad_blocks(p);
  fused.partial_size = partial_size(p);
  const int per_chunk = fused.grads_tc ? tc_grad_samples(p) : kGradChunk / streams;
  const int64_t chunks = (p.batch + per_chunk - 1) / per_chunk;
  const int64_t want = (4 * int64_t(device.num_sms) + fused.grad_blocks - 1) / fused.grad_blocks;
  fused.grad_splits =
      static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({want, chunks, 1024})));
  if constexpr (kHasTcGrads<scalar_t>) {
    if (fused.grads_tc && *err == cudaSuccess)
      *err = cudaFuncSetAttribute(tc_grad_kernel<scalar_t>(p),
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(tc_grad_smem_bytes<scalar_t>(p)));
  }
  if (!fused.grads_tc && *err == cudaSuccess)
    *err = cudaFuncSetAttribute(fused_weight_grad_kernel<scalar_t>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize,
                                static_cast<int>(GradShape<scalar_t>::kSmemBytes));
  // adjoints | partial dW, db per split
  plan->workspace_bytes = align_up(sizeof(float) * fused.adjoint_elems) +
                          sizeof(float) * fused.partial_size * fused.grad_splits;
}

// plan_backward_operands' layer 1 inputs [x; v]: bytes into the workspace, after S_1..S_{L-1}.
template <typename op_t>
size_t first_layer_inputs_at(const SobolevLaunch& p, const FusedPlan& fused) {
  const int streams = 1 + p.order * p.num_directions;
  return fused.layer_inputs_at + align_up(sizeof(op_t) * saved_offset(p, streams, p.num_layers));
}

// WeightGrads::kGemm with gemm_operands_in_backward: the backward kernel's operands, all
// layers' at once (no reuse: they are formed before the first GEMM): the adjoints as the
// GEMMs read them (fp32, or the 16-bit copies alone) | S_1..S_{L-1} | layer 1's [x; v] (the
// operand kernel's) | bias partials, a row per block of the backward.
template <typename scalar_t>
void plan_backward_operands(const SobolevLaunch& p, LaunchPlan* plan) {
  using op_t = gemm_operand_t<scalar_t>;
  FusedPlan& fused = plan->fused;
  fused.operands_in_backward = true;
  fused.gemm_input_elems = gemm_rows(p, 1) * p.in_features;
  fused.layer_inputs_at = align_up(sizeof(op_t) * fused.adjoint_elems);
  fused.bias_chunks = p.grad_biases[0] != nullptr ? fused.grid : 0;
  fused.bias_partials_at =
      first_layer_inputs_at<op_t>(p, fused) + align_up(sizeof(op_t) * fused.gemm_input_elems);
  const size_t all_columns = output_columns_before(p, p.num_layers + 1);
  plan->workspace_bytes = fused.bias_partials_at + sizeof(float) * fused.bias_chunks * all_columns;
}

// WeightGrads::kGemm: buffers for the largest layer's GEMM operands, reused layer by layer;
// with SOBOLEV_CUDA_BIAS_SUMS=operands, the bias sums' partials of every layer, in as many
// chunks of samples as the smallest of the operand kernels' grids.
template <typename scalar_t>
void plan_gemm_grads(const SobolevLaunch& p, const DeviceLimits& device, LaunchPlan* plan) {
  using op_t = gemm_operand_t<scalar_t>;
  FusedPlan& fused = plan->fused;
  fused.grads_by_gemm = true;
  if (p.gemm_operands_in_backward) return plan_backward_operands<scalar_t>(p, plan);
  const bool bias_partials = p.bias_sums_in_operands && p.grad_biases[0] != nullptr;
  fused.bias_chunks = bias_partials ? static_cast<int>(operand_blocks(p, 1, device.num_sms)) : 0;
  for (int l = 1; l <= p.num_layers; ++l) {
    if (!gemm_inputs_over_adjoints(p, l))
      fused.gemm_input_elems =
          std::max(fused.gemm_input_elems, gemm_rows(p, l) * p.widths[l - 1]);
    if (!std::is_same_v<op_t, float>)
      fused.gemm_copy_elems = std::max(fused.gemm_copy_elems, gemm_rows(p, l) * p.widths[l]);
    if (bias_partials)
      fused.bias_chunks = std::min(fused.bias_chunks,
                                   static_cast<int>(operand_blocks(p, l, device.num_sms)));
  }
  // adjoints | layer input stack (of the layers whose inputs are not formed over the adjoints)
  // | adjoint copy | bias partials
  fused.bias_partials_at = align_up(sizeof(float) * fused.adjoint_elems) +
                           align_up(sizeof(op_t) * fused.gemm_input_elems) +
                           align_up(sizeof(op_t) * fused.gemm_copy_elems);
  const size_t all_columns = output_columns_before(p, p.num_layers + 1);
  plan->workspace_bytes = fused.bias_partials_at + sizeof(float) * fused.bias_chunks * all_columns;
}

template <typename scalar_t>
bool plan_for(const SobolevLaunch& p, const DeviceLimits& device, LaunchPlan* plan,
              cudaError_t* err) {
  if (!make_fused_plan<scalar_t>(p, device, &plan->fused)) return false;
  FusedPlan& fused = plan->fused;
  const auto kernel = backward_kernel<scalar_t>(p, fused);
  int per_sm = 0;
  *err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(fused.smem_bytes));
  if (*err == cudaSuccess)
    *err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 2 * fused.tile_rows,
                                                         fused.smem_bytes);
  fused.grid = static_cast<int>(
      std::min<int64_t>(fused.num_tiles, int64_t(std::max(per_sm, 1)) * device.num_sms));
  plan->variant = KernelVariant::kFused;
  if (p.grad_weights[0] != nullptr) {  // (else no workspace for them)
    fused.adjoint_elems = adjoint_offset(p, 1 + p.order * p.num_directions, p.num_layers + 1);
    const bool tc = p.weight_grads == WeightGrads::kSplitKTensorCores;
    if (p.weight_grads == WeightGrads::kGemm || (tc && !kHasTcGrads<scalar_t>))
      plan_gemm_grads<scalar_t>(p, device, plan);
    else
      plan_splitk_grads<scalar_t>(p, device, plan, err);
  }
  if (fused.staged_split) {  // (| weight images)
    fused.weight_images_at = align_up(plan->workspace_bytes);
    plan->workspace_bytes =
        fused.weight_images_at + weight_image_bytes(p, fused_lead<scalar_t>(fused), true);
  }
  return true;
}

template <typename scalar_t>
cudaError_t launch_for(const SobolevLaunch& p, const LaunchPlan& plan, void* workspace,
                       cudaStream_t stream) {
  const FusedPlan& fused = plan.fused;
  FusedArgs args;
  args.p = p;
  args.plan = fused;
  auto* base = static_cast<unsigned char*>(workspace);
  args.adjoints = reinterpret_cast<float*>(base);
  args.grad_partials =
      reinterpret_cast<float*>(base + align_up(sizeof(float) * fused.adjoint_elems));
  if (fused.operands_in_backward) {  // (plan_backward_operands' layout)
    if (!std::is_same_v<gemm_operand_t<scalar_t>, float>) {
      args.operand_adjoints = base;
      args.adjoints = nullptr;
    }
    args.layer_inputs = base + fused.layer_inputs_at;
    args.grad_partials = nullptr;
    if (fused.bias_chunks > 0)
      args.bias_partials = reinterpret_cast<float*>(base + fused.bias_partials_at);
  }
  if (fused.staged_split) {
    void* images = base + fused.weight_images_at;
    if (cudaError_t err = launch_split_weights(p, fused_lead<scalar_t>(fused), true, images,
                                               plan.num_sms, stream))
      return err;
    args.weight_images = static_cast<const Tf32Parts*>(images);
  }
  backward_kernel<scalar_t>(p, fused)<<<fused.grid, 2 * fused.tile_rows, fused.smem_bytes,
                                       stream>>>(args);
  if (cudaError_t err = cudaGetLastError()) return err;
  if (p.grad_weights[0] == nullptr || fused.grads_by_gemm) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(fused.grad_blocks), fused.grad_splits);
  bool launched = false;
  if constexpr (kHasTcGrads<scalar_t>) {
    if (fused.grads_tc)
      tc_grad_kernel<scalar_t>(p)<<<grid, kTcGradThreads, tc_grad_smem_bytes<scalar_t>(p),
                                    stream>>>(args);
    launched = fused.grads_tc;
  }
  if (!launched)
    fused_weight_grad_kernel<scalar_t>
        <<<grid, kGradThreads, GradShape<scalar_t>::kSmemBytes, stream>>>(args);
  if (cudaError_t err = cudaGetLastError()) return err;
  // the splits' partial sums, added in order (sum_partials_kernel's layout)
  KernelArgs sums;
  sums.p = p;
  sums.plan.grid = fused.grad_splits;
  sums.partial_size = fused.partial_size;
  sums.grad_partials = args.grad_partials;
  const int64_t blocks = std::min<int64_t>((fused.partial_size + kThreads - 1) / kThreads,
                                           int64_t(plan.num_sms) * 8);
  sum_partials_kernel<scalar_t><<<static_cast<int>(blocks), kThreads, 0, stream>>>(sums);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t gemm_operands_for(const SobolevLaunch& p, const LaunchPlan& plan, void* workspace,
                              int layer, GemmOperands* out, cudaStream_t stream) {
  using op_t = gemm_operand_t<scalar_t>;
  const FusedPlan& fused = plan.fused;
  const int streams = 1 + p.order * p.num_directions;
  auto* base = static_cast<unsigned char*>(workspace);
  GemmOperandArgs args;
  args.p = p;
  args.layer = layer;
  out->rows = gemm_rows(p, layer);
  out->dtype = std::is_same_v<op_t, float> ? DType::kFloat32 : p.dtype;
  if (fused.operands_in_backward) {  // stored by the backward kernel but layer 1's [x; v]
    out->adjoints = base + sizeof(op_t) * adjoint_offset(p, streams, layer);
    out->bias_adjoints = nullptr;  // (the bias sums come from the backward's partials)
    if (layer >= 2) {  // S_{l-1}, as saved's hidden layer l-1
      out->inputs =
          base + fused.layer_inputs_at + sizeof(op_t) * saved_offset(p, streams, layer - 1);
      return cudaSuccess;
    }
    args.inputs = base + first_layer_inputs_at<op_t>(p, fused);
    out->inputs = args.inputs;
    fused_gemm_operands_kernel<scalar_t>
        <<<static_cast<int>(operand_blocks(p, 1, plan.num_sms)), kOperandThreads, 0, stream>>>(
            args);
    return cudaGetLastError();
  }
  args.adjoints = reinterpret_cast<const float*>(base) + adjoint_offset(p, streams, layer);
  unsigned char* own_inputs = base + align_up(sizeof(float) * fused.adjoint_elems);
  args.inputs = gemm_inputs_over_adjoints(p, layer)
                    ? base + sizeof(float) * adjoint_offset(p, streams, layer - 1)
                    : own_inputs;
  if (fused.gemm_copy_elems > 0)
    args.adjoint_copy = own_inputs + align_up(sizeof(op_t) * fused.gemm_input_elems);
  if (fused.bias_chunks > 0) {
    args.bias_partials = reinterpret_cast<float*>(base + fused.bias_partials_at);
    args.bias_chunks = fused.bias_chunks;
  }
  out->inputs = args.inputs;
  out->adjoints = args.adjoint_copy != nullptr ? args.adjoint_copy : args.adjoints;
  out->bias_adjoints = args.adjoints;
  const int blocks = static_cast<int>(operand_blocks(p, layer, plan.num_sms));
  const int smem = args.bias_partials != nullptr ? kBiasSumSmem : 0;
  fused_gemm_operands_kernel<scalar_t><<<blocks, kOperandThreads, smem, stream>>>(args);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t bias_sums_for(const SobolevLaunch& p, const LaunchPlan& plan, void* workspace,
                          cudaStream_t stream) {
  BiasSumArgs args;
  args.p = p;
  args.partials = reinterpret_cast<const float*>(static_cast<unsigned char*>(workspace) +
                                                 plan.fused.bias_partials_at);
  args.chunks = plan.fused.bias_chunks;
  const int blocks = (output_columns_before(p, p.num_layers + 1) + 31) / 32;
  bias_sums_kernel<scalar_t><<<blocks, kOperandThreads, sizeof(float) * kOperandThreads,
                               stream>>>(args);
  return cudaGetLastError();
}

}  // namespace

bool plan_fused_backward(const SobolevLaunch& p, const DeviceLimits& device, LaunchPlan* plan,
                         cudaError_t* err) {
  *err = cudaSuccess;
  switch (p.dtype) {
    case DType::kFloat32: return plan_for<float>(p, device, plan, err);
    case DType::kBFloat16: return plan_for<__nv_bfloat16>(p, device, plan, err);
    case DType::kFloat16: return plan_for<__half>(p, device, plan, err);
    default: return false;  // fp64 stays on the tiled kernels' FMA products
  }
}

cudaError_t launch_fused_backward(const SobolevLaunch& p, const LaunchPlan& plan,
                                  void* workspace, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat32: return launch_for<float>(p, plan, workspace, stream);
    case DType::kBFloat16: return launch_for<__nv_bfloat16>(p, plan, workspace, stream);
    case DType::kFloat16: return launch_for<__half>(p, plan, workspace, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_gemm_operands(const SobolevLaunch& p, const LaunchPlan& plan, void* workspace,
                                 int layer, GemmOperands* out, cudaStream_t stream) {
  if (plan.variant != KernelVariant::kFused || !plan.fused.grads_by_gemm || layer < 1 ||
      layer > p.num_layers)
    return cudaErrorInvalidValue;
  switch (p.dtype) {
    case DType::kFloat32: return gemm_operands_for<float>(p, plan, workspace, layer, out, stream);
    case DType::kBFloat16:
      return gemm_operands_for<__nv_bfloat16>(p, plan, workspace, layer, out, stream);
    case DType::kFloat16: return gemm_operands_for<__half>(p, plan, workspace, layer, out, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t launch_bias_sums(const SobolevLaunch& p, const LaunchPlan& plan, void* workspace,
                             cudaStream_t stream) {
  if (plan.variant != KernelVariant::kFused || plan.fused.bias_chunks == 0)
    return cudaErrorInvalidValue;
  switch (p.dtype) {
    case DType::kFloat32: return bias_sums_for<float>(p, plan, workspace, stream);
    case DType::kBFloat16: return bias_sums_for<__nv_bfloat16>(p, plan, workspace, stream);
    case DType::kFloat16: return bias_sums_for<__half>(p, plan, workspace, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace sobolev::cuda
