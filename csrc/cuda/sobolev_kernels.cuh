// The fused CUDA kernels' interface: a torch-free description of one problem, filled by the
// ATen binding (sobolev_cuda_binding.cpp), and the launchers, which run on a given stream.
//
// Structure (the same as the CPU kernel in csrc/cpu, which checks its logic on every CI run):
// a persistent grid of thread blocks walks over tiles of rows; each tile holds its S R
// stacked rows [values; tangents] (S = 1 + K), or [values; tangents; second-order tangents]
// (S = 1 + 2K, order 2, docs/math.md), in shared memory and goes through all layers, the
// weights staged through shared memory panel by panel.
//   forward  (1 launch): layers, activation, tangent products, f/u/w stores, the loss sums per
//            block and, in the last block to finish, their sum in block order.
//   backward (2 launches): the adjoint recursion per tile, each block adding its weight
//            gradients into its own partial sums; then one kernel adds the partials in order.
// Both are deterministic: no floating-point atomics, fixed tile-to-block assignment.
// The kernels are in forward_kernel.cuh and backward_kernel.cuh, the launchers in the .cu
// files; emulation/ runs the kernels on the host to test their logic without a GPU. Needs
// sm_70 or newer (__grid_constant__ kernel arguments). Products (tile_gemm.cuh): FMA for fp64
// and fp32; bf16 and fp16 on tensor cores (WMMA, fp32 accumulation, mma_gemm.cuh) from sm_80,
// their tile operands rounded to the storage type as torch's GEMMs see them. Everything else
// (activations, tangent updates, sums) runs in the accumulation type.
#pragma once

#ifndef SK_HOST_EMULATION  // emulation/host_shim.h stands in for the CUDA runtime
#include <cuda_runtime.h>
#endif

#include <cstddef>
#include <cstdint>

namespace sobolev::cuda {

constexpr int kMaxLayers = 32;
constexpr int kMaxWidth = 256;

enum class DType : int { kFloat64, kFloat32, kBFloat16, kFloat16 };

// One problem as raw device pointers. x, directions, weights, biases, f, u, w and their
// gradients in `dtype`; y, the targets, saved, loss and grad_loss in the accumulation type
// (fp64 for fp64, else fp32). Optional pointers are null when absent.
struct SobolevLaunch {
  DType dtype = DType::kFloat32;
  int64_t batch = 0;        // B
  int in_features = 0;      // d
  int num_directions = 0;   // K
  int out_features = 0;     // m
  bool shared_directions = false;
  const void* x = nullptr;            // (B, d)
  const void* directions = nullptr;   // (K, d) or (B, K, d)
  const void* y = nullptr;            // (B, m)
  const void* target_jvp = nullptr;   // (B, K, m)
  const void* target_grad = nullptr;  // (B, m, d)
  const void* target_hvp2 = nullptr;  // (B, K, m), order 2
  const void* target_hess = nullptr;  // (B, m, d, d), order 2
  double alpha = 1, beta = 1, gamma = 1;
  int order = 1;  // 2: also w_k = v_k^T H_f v_k, a third stream per direction (Taylor mode)
  // fp32 products may run in plain TF32 (the user allowed it, as torch.backends.cuda.matmul
  // .allow_tf32); otherwise they must be fp32-accurate
  bool allow_tf32 = false;

  int num_layers = 0;
  int widths[kMaxLayers + 1] = {};            // d, n_1, ..., m
  const void* weights[kMaxLayers] = {};       // (n_l, n_{l-1})
  const void* biases[kMaxLayers] = {};        // (n_l), all null without bias
  int activation = 0;
  double negative_slope = 0;

  // forward outputs
  void* f = nullptr;      // (B, m)
  void* u = nullptr;      // (B, K, m)
  void* w = nullptr;      // (B, K, m), order 2
  void* saved = nullptr;  // z/tz(/ttz) of the hidden layers, S B (n_1 + .. + n_{L-1}), or null
  void* loss = nullptr;   // 0-dim

  // backward inputs and outputs
  const void* grad_loss = nullptr;  // 0-dim, or null: no gradient on the loss
  const void* grad_f = nullptr;     // (B, m)
  const void* grad_u = nullptr;     // (B, K, m)
  const void* grad_w = nullptr;     // (B, K, m), order 2
  const void* f_in = nullptr;       // the forward's f, u and (order 2) w
  const void* u_in = nullptr;
  const void* w_in = nullptr;
  const void* saved_in = nullptr;
  void* grad_x = nullptr;                 // (B, d), or null: not needed
  void* grad_weights[kMaxLayers] = {};    // all null: parameter gradients not needed
  void* grad_biases[kMaxLayers] = {};
};

// Bytes of device workspace each launcher needs (no alignment demands beyond 256 bytes).
size_t forward_workspace_bytes(const SobolevLaunch& p);
size_t backward_workspace_bytes(const SobolevLaunch& p);

// Launch on `stream` (the caller's current stream). Returns the launch error, if any.
cudaError_t launch_forward(const SobolevLaunch& p, void* workspace, cudaStream_t stream);
cudaError_t launch_backward(const SobolevLaunch& p, void* workspace, cudaStream_t stream);

}  // namespace sobolev::cuda
