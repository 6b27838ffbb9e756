// Launcher of the fused backward (backward_kernel.cuh): the tile kernel, then the sum of the
// blocks' partial weight gradients.
#include <cuda_runtime.h>

#include "cuda/backward_kernel.cuh"
#include "cuda/sobolev_kernels.cuh"

namespace sobolev::cuda {
namespace {

struct BackwardPlan {
  TilePlan tiles;
  int64_t partial_size;
};

// Tiles, and a grid of at most kBackwardBlocksPerSM (2) blocks per SM: each block keeps a
// full set of partial weight gradients, so more blocks cost memory and a longer final sum.
BackwardPlan plan_backward(const SobolevLaunch& p, size_t acc, int* num_sms_out) {
  int device = 0, num_sms = 0, smem_limit = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
  cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  // no partial sums when the parameter gradients are not needed
  BackwardPlan plan{
      make_plan(p, kBackwardTileBuffers, backward_row_buffers(p), acc, smem_limit),
      p.grad_weights[0] != nullptr ? partial_size(p) : 0};
  plan.tiles.grid = static_cast<int>(
      std::min<int64_t>(plan.tiles.num_tiles, int64_t(kBackwardBlocksPerSM) * num_sms));
  *num_sms_out = num_sms;
  return plan;
}

template <typename scalar_t>
cudaError_t launch(const SobolevLaunch& p, void* workspace, cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  const auto kernel = p.order == 2 ? sobolev_backward_kernel<scalar_t, 2>
                                   : sobolev_backward_kernel<scalar_t, 1>;
  int num_sms = 0;
  const BackwardPlan plan = plan_backward(p, sizeof(acc_t), &num_sms);
  KernelArgs args;
  args.p = p;
  args.plan = plan.tiles;
  args.partial_size = plan.partial_size;
  // workspace: partial gradients | tile scratch (see backward_workspace_bytes)
  auto* base = static_cast<unsigned char*>(workspace);
  args.grad_partials = base;
  args.scratch = base + align_up(sizeof(acc_t) * plan.partial_size * plan.tiles.grid);
  if (cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(plan.tiles.smem_bytes)))
    return err;
  kernel<<<plan.tiles.grid, kThreads, plan.tiles.smem_bytes, stream>>>(args);
  if (cudaError_t err = cudaGetLastError()) return err;
  if (p.grad_weights[0] == nullptr) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>((plan.partial_size + kThreads - 1) / kThreads,
                                           int64_t(num_sms) * 8);
  sum_partials_kernel<scalar_t><<<static_cast<int>(blocks), kThreads, 0, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace

size_t backward_workspace_bytes(const SobolevLaunch& p) {
  const size_t acc = p.dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  int num_sms = 0;
  const BackwardPlan plan = plan_backward(p, acc, &num_sms);
  const size_t partials = acc * plan.partial_size * plan.tiles.grid;
  const size_t scratch =
      plan.tiles.buffers_in_smem ? 0 : acc * plan.tiles.buffer_elems * plan.tiles.grid;
  return align_up(partials) + scratch;
}

cudaError_t launch_backward(const SobolevLaunch& p, void* workspace, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat64: return launch<double>(p, workspace, stream);
    case DType::kFloat32: return launch<float>(p, workspace, stream);
    case DType::kBFloat16: return launch<__nv_bfloat16>(p, workspace, stream);
    case DType::kFloat16: return launch<__half>(p, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace sobolev::cuda
