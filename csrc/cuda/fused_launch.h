// The fused kernels' plans and launches (fused_forward.cu, fused_backward.cu), called by the
// launchers of sobolev_forward.cu and sobolev_backward.cu for SOBOLEV_CUDA_KERNEL=fused.
#pragma once

#include "cuda/sobolev_kernels.cuh"

namespace sobolev::cuda {

// Fills plan (variant kFused, its FusedPlan and workspace) and returns true where the fused
// kernels take p; false leaves the tiled kernels to it. *err: a failed attribute query or set.
bool plan_fused_forward(const SobolevLaunch& p, const DeviceLimits& device, LaunchPlan* plan,
                        cudaError_t* err);
bool plan_fused_backward(const SobolevLaunch& p, const DeviceLimits& device, LaunchPlan* plan,
                         cudaError_t* err);

cudaError_t launch_fused_forward(const SobolevLaunch& p, const LaunchPlan& plan, void* workspace,
                                 cudaStream_t stream);
cudaError_t launch_fused_backward(const SobolevLaunch& p, const LaunchPlan& plan,
                                  void* workspace, cudaStream_t stream);

}  // namespace sobolev::cuda
