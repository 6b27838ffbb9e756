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

// STAGED_SPLIT: the workspace bytes of the weight images (weight_image_offset) of the forward
// or (transpose) the backward, and their split into them (split_weights_kernel), at row
// stride ld (fused_lead). fp32 weights only.
size_t weight_image_bytes(const SobolevLaunch& p, int ld, bool transpose);
cudaError_t launch_split_weights(const SobolevLaunch& p, int ld, bool transpose, void* images,
                                 int num_sms, cudaStream_t stream);

}  // namespace sobolev::cuda
