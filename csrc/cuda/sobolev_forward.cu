// Launcher of the fused forward kernel (forward_kernel.cuh): grid, shared memory, workspace.
#include <cuda_runtime.h>

#include "cuda/forward_kernel.cuh"
#include "cuda/sobolev_kernels.cuh"

namespace sobolev::cuda {
namespace {

template <typename scalar_t>
cudaError_t launch(const SobolevLaunch& p, void* workspace, cudaStream_t stream) {
  using acc_t = acc_type<scalar_t>;
  const auto kernel = p.order == 2 ? sobolev_forward_kernel<scalar_t, 2>
                                   : sobolev_forward_kernel<scalar_t, 1>;
  int device = 0, num_sms = 0, smem_limit = 0, per_sm = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
  cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  KernelArgs args;
  args.p = p;
  args.plan = make_plan(p, kForwardTileBuffers, kForwardRowBuffers, sizeof(acc_t), smem_limit);
  if (cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(args.plan.smem_bytes)))
    return err;
  cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, args.plan.smem_bytes);
  args.plan.grid = static_cast<int>(
      std::min<int64_t>(args.plan.num_tiles, int64_t(std::max(per_sm, 1)) * num_sms));
  // workspace: counter | loss partials | tile scratch (see forward_workspace_bytes)
  auto* base = static_cast<unsigned char*>(workspace);
  args.counter = reinterpret_cast<unsigned int*>(base);
  args.loss_partials = reinterpret_cast<double*>(base + 256);
  args.scratch = base + 256 + align_up(kLossTerms * sizeof(double) * args.plan.grid);
  if (cudaError_t err = cudaMemsetAsync(args.counter, 0, sizeof(unsigned int), stream)) return err;
  kernel<<<args.plan.grid, kThreads, args.plan.smem_bytes, stream>>>(args);
  return cudaGetLastError();
}

}  // namespace

size_t forward_workspace_bytes(const SobolevLaunch& p) {
  const size_t acc = p.dtype == DType::kFloat64 ? sizeof(double) : sizeof(float);
  int device = 0, num_sms = 0, smem_limit = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, device);
  cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  const TilePlan plan = make_plan(p, kForwardTileBuffers, kForwardRowBuffers, acc, smem_limit);
  // an upper bound on the grid: every tile its own block, or all blocks resident at once
  const int64_t grid = std::min<int64_t>(plan.num_tiles, int64_t(num_sms) * 2048 / kThreads);
  const size_t scratch = plan.buffers_in_smem ? 0 : grid * plan.buffer_elems * acc;
  return 256 + align_up(kLossTerms * sizeof(double) * grid) + scratch;
}

cudaError_t launch_forward(const SobolevLaunch& p, void* workspace, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat64: return launch<double>(p, workspace, stream);
    case DType::kFloat32: return launch<float>(p, workspace, stream);
    case DType::kBFloat16: return launch<__nv_bfloat16>(p, workspace, stream);
    case DType::kFloat16: return launch<__half>(p, workspace, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace sobolev::cuda
