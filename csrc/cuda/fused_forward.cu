// Plan and launch of the fused forward kernel (fused_forward.cuh).
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/fused_forward.cuh"
#include "cuda/fused_launch.h"

namespace sobolev::cuda {
namespace {

template <typename scalar_t>
auto forward_kernel(const SobolevLaunch& p, const FusedPlan& plan) {
  return with_fused_shape<scalar_t>(
      plan.width, plan.high_occupancy, plan.staged_split, [&](auto w, auto high, auto staged) {
        constexpr int W = decltype(w)::value;
        constexpr bool H = decltype(high)::value, P = decltype(staged)::value;
        return p.order == 2 ? fused_forward_kernel<scalar_t, 2, W, H, P>
                            : fused_forward_kernel<scalar_t, 1, W, H, P>;
      });
}

template <typename scalar_t>
bool plan_for(const SobolevLaunch& p, const DeviceLimits& device, LaunchPlan* plan,
              cudaError_t* err) {
  if (!make_fused_plan<scalar_t>(p, device, &plan->fused)) return false;
  FusedPlan& fused = plan->fused;
  const auto kernel = forward_kernel<scalar_t>(p, fused);
  const int threads = 2 * fused.tile_rows;  // a warp per 16 rows
  int per_sm = 0;
  *err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(fused.smem_bytes));
  if (*err == cudaSuccess)
    *err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads,
                                                         fused.smem_bytes);
  fused.grid = static_cast<int>(
      std::min<int64_t>(fused.num_tiles, int64_t(std::max(per_sm, 1)) * device.num_sms));
  plan->variant = KernelVariant::kFused;
  // counter | loss partials (| weight images)
  plan->workspace_bytes = 256 + align_up(kLossTerms * sizeof(double) * fused.grid);
  if (fused.staged_split) {
    fused.weight_images_at = plan->workspace_bytes;
    plan->workspace_bytes += weight_image_bytes(p, fused_lead<scalar_t>(fused), false);
  }
  return true;
}

template <typename scalar_t>
cudaError_t launch_for(const SobolevLaunch& p, const LaunchPlan& plan, void* workspace,
                       cudaStream_t stream) {
  FusedArgs args;
  args.p = p;
  args.plan = plan.fused;
  auto* base = static_cast<unsigned char*>(workspace);
  args.counter = reinterpret_cast<unsigned int*>(base);
  args.loss_partials = reinterpret_cast<double*>(base + 256);
  if (cudaError_t err = cudaMemsetAsync(args.counter, 0, sizeof(unsigned int), stream)) return err;
  if (plan.fused.staged_split) {
    void* images = base + plan.fused.weight_images_at;
    if (cudaError_t err = launch_split_weights(p, fused_lead<scalar_t>(plan.fused), false, images,
                                               plan.num_sms, stream))
      return err;
    args.weight_images = static_cast<const Tf32Parts*>(images);
  }
  const int threads = 2 * plan.fused.tile_rows;
  forward_kernel<scalar_t>(p, plan.fused)<<<plan.fused.grid, threads, plan.fused.smem_bytes,
                                            stream>>>(args);
  return cudaGetLastError();
}

}  // namespace

size_t weight_image_bytes(const SobolevLaunch& p, int ld, bool transpose) {
  return align_up(sizeof(Tf32Parts) * weight_image_offset(p, ld, p.num_layers + 1, transpose));
}

cudaError_t launch_split_weights(const SobolevLaunch& p, int ld, bool transpose, void* images,
                                 int num_sms, cudaStream_t stream) {
  WeightImageArgs args;
  args.p = p;
  args.ld = ld;
  args.images = static_cast<Tf32Parts*>(images);
  const int64_t words = 2 * weight_image_offset(p, ld, p.num_layers + 1, transpose);
  const int blocks = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>((words + 255) / 256, int64_t(num_sms) * 4)));
  if (transpose)
    split_weights_kernel<true><<<blocks, 256, 0, stream>>>(args);
  else
    split_weights_kernel<false><<<blocks, 256, 0, stream>>>(args);
  return cudaGetLastError();
}

bool plan_fused_forward(const SobolevLaunch& p, const DeviceLimits& device, LaunchPlan* plan,
                        cudaError_t* err) {
  *err = cudaSuccess;
  switch (p.dtype) {
    case DType::kFloat32: return plan_for<float>(p, device, plan, err);
    case DType::kBFloat16: return plan_for<__nv_bfloat16>(p, device, plan, err);
    case DType::kFloat16: return plan_for<__half>(p, device, plan, err);
    default: return false;  // fp64 stays on the tiled kernels' FMA products
  }
}

cudaError_t launch_fused_forward(const SobolevLaunch& p, const LaunchPlan& plan, void* workspace,
                                 cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat32: return launch_for<float>(p, plan, workspace, stream);
    case DType::kBFloat16: return launch_for<__nv_bfloat16>(p, plan, workspace, stream);
    case DType::kFloat16: return launch_for<__half>(p, plan, workspace, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace sobolev::cuda
