// Launcher of the backward kernels: the plan, made once per call, and the launches. Tiled
// (backward_kernel.cuh): the tile kernel, then the sum of the blocks' partial weight gradients.
#include <cuda_runtime.h>

#include <type_traits>

#include "cuda/backward_kernel.cuh"
#include "cuda/fused_launch.h"
#include "cuda/sobolev_kernels.cuh"

namespace sobolev::cuda {
namespace {

// fp32 takes the tensor-core instantiation exactly where make_plan sizes its stage for it.
template <typename scalar_t>
auto tiled_kernel(const SobolevLaunch& p) {
  if constexpr (std::is_same_v<scalar_t, float>)
    if (uses_tensor_cores(p))
      return p.order == 2 ? sobolev_backward_kernel<float, 2, true>
                          : sobolev_backward_kernel<float, 1, true>;
  return p.order == 2 ? sobolev_backward_kernel<scalar_t, 2> : sobolev_backward_kernel<scalar_t, 1>;
}

// Tiles, and a grid of at most kBackwardBlocksPerSM (2) blocks per SM: each block keeps a
// full set of partial weight gradients, so more blocks cost memory and a longer final sum.
template <typename scalar_t>
cudaError_t plan_tiled(const SobolevLaunch& p, const DeviceLimits& device, LaunchPlan* plan) {
  using acc_t = acc_type<scalar_t>;
  plan->variant = uses_tensor_cores(p) && p.dtype == DType::kFloat32
                      ? KernelVariant::kTiledTensorCores
                      : KernelVariant::kTiled;
  TilePlan& tiles = plan->tiles;
  tiles = make_plan(p, kBackwardTileBuffers, backward_row_buffers(p), sizeof(acc_t),
                    device.smem_per_block);
  tiles.grid = static_cast<int>(
      std::min<int64_t>(tiles.num_tiles, int64_t(kBackwardBlocksPerSM) * device.num_sms));
  // no partial sums when the parameter gradients are not needed
  plan->partial_size = p.grad_weights[0] != nullptr ? partial_size(p) : 0;
  // partial gradients | tile scratch (see launch_tiled)
  const size_t partials = sizeof(acc_t) * plan->partial_size * tiles.grid;
  const size_t scratch =
      tiles.buffers_in_smem ? 0 : sizeof(acc_t) * tiles.buffer_elems * tiles.grid;
  plan->workspace_bytes = align_up(partials) + scratch;
  return cudaFuncSetAttribute(tiled_kernel<scalar_t>(p),
                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(tiles.smem_bytes));
}

template <typename scalar_t>
cudaError_t launch_tiled(const SobolevLaunch& p, const LaunchPlan& plan, void* workspace,
                         cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  KernelArgs args;
  args.p = p;
  args.plan = plan.tiles;
  args.partial_size = plan.partial_size;
  auto* base = static_cast<unsigned char*>(workspace);
  args.grad_partials = base;
  args.scratch = base + align_up(sizeof(acc_t) * plan.partial_size * plan.tiles.grid);
  tiled_kernel<scalar_t>(p)<<<plan.tiles.grid, kThreads, plan.tiles.smem_bytes, stream>>>(args);
  if (cudaError_t err = cudaGetLastError()) return err;
  if (p.grad_weights[0] == nullptr) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>((plan.partial_size + kThreads - 1) / kThreads,
                                           int64_t(plan.num_sms) * 8);
  sum_partials_kernel<scalar_t><<<static_cast<int>(blocks), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

// SOBOLEV_CUDA_KERNEL=fused runs the fused kernels where they take the problem.
template <typename scalar_t>
cudaError_t plan_for(const SobolevLaunch& p, const DeviceLimits& device, LaunchPlan* plan) {
  cudaError_t err = cudaSuccess;
  if (p.variant == KernelVariant::kFused && plan_fused_backward(p, device, plan, &err)) return err;
  return plan_tiled<scalar_t>(p, device, plan);
}

template <typename scalar_t>
cudaError_t launch_for(const SobolevLaunch& p, const LaunchPlan& plan, void* workspace,
                       cudaStream_t stream) {
  if (plan.variant == KernelVariant::kFused)
    return launch_fused_backward(p, plan, workspace, stream);
  return launch_tiled<scalar_t>(p, plan, workspace, stream);
}

}  // namespace

cudaError_t plan_backward(const SobolevLaunch& p, const DeviceLimits& device, LaunchPlan* plan) {
  *plan = LaunchPlan{};
  plan->num_sms = device.num_sms;
  switch (p.dtype) {
    case DType::kFloat64: return plan_for<double>(p, device, plan);
    case DType::kFloat32: return plan_for<float>(p, device, plan);
    case DType::kBFloat16: return plan_for<__nv_bfloat16>(p, device, plan);
    case DType::kFloat16: return plan_for<__half>(p, device, plan);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_backward(const SobolevLaunch& p, const LaunchPlan& plan, void* workspace,
                            cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat64: return launch_for<double>(p, plan, workspace, stream);
    case DType::kFloat32: return launch_for<float>(p, plan, workspace, stream);
    case DType::kBFloat16: return launch_for<__nv_bfloat16>(p, plan, workspace, stream);
    case DType::kFloat16: return launch_for<__half>(p, plan, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace sobolev::cuda
