// Launcher of the forward kernels: the plan (variant, grid, shared memory, workspace), made
// once per call, and the launch. Tiled: forward_kernel.cuh; fused: fused_forward.cuh.
#include <cuda_runtime.h>

#include <mutex>
#include <type_traits>
#include <vector>

#include "cuda/forward_kernel.cuh"
#include "cuda/fused_launch.h"
#include "cuda/sobolev_kernels.cuh"

namespace sobolev::cuda {
namespace {

// fp32 takes the tensor-core instantiation exactly where make_plan sizes its stage for it.
template <typename scalar_t>
auto tiled_kernel(const SobolevLaunch& p) {
  if constexpr (std::is_same_v<scalar_t, float>)
    if (uses_tensor_cores(p))
      return p.order == 2 ? sobolev_forward_kernel<float, 2, true>
                          : sobolev_forward_kernel<float, 1, true>;
  return p.order == 2 ? sobolev_forward_kernel<scalar_t, 2> : sobolev_forward_kernel<scalar_t, 1>;
}

template <typename scalar_t>
cudaError_t plan_tiled(const SobolevLaunch& p, const DeviceLimits& device, LaunchPlan* plan) {
  using acc_t = acc_type<scalar_t>;
  const auto kernel = tiled_kernel<scalar_t>(p);
  plan->variant = uses_tensor_cores(p) && p.dtype == DType::kFloat32
                      ? KernelVariant::kTiledTensorCores
                      : KernelVariant::kTiled;
  TilePlan& tiles = plan->tiles;
  tiles = make_plan(p, kForwardTileBuffers, kForwardRowBuffers, sizeof(acc_t),
                    device.smem_per_block);
  if (cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(tiles.smem_bytes)))
    return err;
  int per_sm = 0;
  if (cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads,
                                                                      tiles.smem_bytes))
    return err;
  tiles.grid = static_cast<int>(
      std::min<int64_t>(tiles.num_tiles, int64_t(std::max(per_sm, 1)) * device.num_sms));
  // counter | loss partials | tile scratch (see launch_tiled)
  const size_t scratch =
      tiles.buffers_in_smem ? 0 : tiles.grid * tiles.buffer_elems * sizeof(acc_t);
  plan->workspace_bytes = 256 + align_up(kLossTerms * sizeof(double) * tiles.grid) + scratch;
  return cudaSuccess;
}

template <typename scalar_t>
cudaError_t launch_tiled(const SobolevLaunch& p, const LaunchPlan& plan, void* workspace,
                         cudaStream_t stream) {
  KernelArgs args;
  args.p = p;
  args.plan = plan.tiles;
  auto* base = static_cast<unsigned char*>(workspace);
  args.counter = reinterpret_cast<unsigned int*>(base);
  args.loss_partials = reinterpret_cast<double*>(base + 256);
  args.scratch = base + 256 + align_up(kLossTerms * sizeof(double) * args.plan.grid);
  if (cudaError_t err = cudaMemsetAsync(args.counter, 0, sizeof(unsigned int), stream)) return err;
  tiled_kernel<scalar_t>(p)<<<args.plan.grid, kThreads, args.plan.smem_bytes, stream>>>(args);
  return cudaGetLastError();
}

// SOBOLEV_CUDA_KERNEL=fused runs the fused kernels where they take the problem.
template <typename scalar_t>
cudaError_t plan_for(const SobolevLaunch& p, const DeviceLimits& device, LaunchPlan* plan) {
  cudaError_t err = cudaSuccess;
  if (p.variant == KernelVariant::kFused && plan_fused_forward(p, device, plan, &err)) return err;
  return plan_tiled<scalar_t>(p, device, plan);
}

template <typename scalar_t>
cudaError_t launch_for(const SobolevLaunch& p, const LaunchPlan& plan, void* workspace,
                       cudaStream_t stream) {
  if (plan.variant == KernelVariant::kFused)
    return launch_fused_forward(p, plan, workspace, stream);
  return launch_tiled<scalar_t>(p, plan, workspace, stream);
}

}  // namespace

DeviceLimits device_limits() {
  static std::mutex mutex;
  static std::vector<int> known;  // 0: not yet asked; 1: in `limits`
  static std::vector<DeviceLimits> limits;
  int device = 0;
  cudaGetDevice(&device);
  const std::lock_guard<std::mutex> lock(mutex);
  if (size_t(device) >= known.size()) {
    known.resize(device + 1, 0);
    limits.resize(device + 1);
  }
  if (!known[device]) {
    int smem = 0;
    DeviceLimits& d = limits[device];
    cudaDeviceGetAttribute(&d.num_sms, cudaDevAttrMultiProcessorCount, device);
    cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
    cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, device);
    d.smem_per_block = static_cast<size_t>(smem);
    known[device] = 1;
  }
  return limits[device];
}

cudaError_t plan_forward(const SobolevLaunch& p, const DeviceLimits& device, LaunchPlan* plan) {
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

cudaError_t launch_forward(const SobolevLaunch& p, const LaunchPlan& plan, void* workspace,
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
