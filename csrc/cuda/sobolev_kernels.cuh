// The fused CUDA kernels' interface: a torch-free description of one problem, filled by the
// ATen binding (sobolev_cuda_binding.cpp), the plans and the launchers, which run on a given
// stream. The binding makes one plan per call (plan_forward/plan_backward: which kernels, grid,
// shared memory, workspace), allocates the workspace it asks for and launches with it.
//
// Two families of kernels, chosen per call by SobolevLaunch::variant (KernelVariant):
// - tiled (the least memory; forward_kernel.cuh, backward_kernel.cuh; the CPU kernel's
//   structure, csrc/cpu, which checks its logic on every CI run): a persistent grid of thread
//   blocks walks over tiles of 32 stacked rows, S R rows [values; tangents] (S = 1 + K), or
//   [values; tangents; second-order tangents] (S = 1 + 2K, order 2, docs/math.md), in shared
//   memory, through all layers, the weights staged through shared memory panel by panel.
//     forward  (1 launch): layers, activation, tangent products, f/u/w stores, the loss sums
//              per block and, in the last block to finish, their sum in block order.
//     backward (2 launches): the adjoint recursion per tile, each block adding its weight
//              gradients into its own partial sums; then one kernel adds the partials in order.
//   Products (tile_gemm.cuh): FMA for fp64 and fp32; bf16 and fp16 on tensor cores (WMMA, fp32
//   accumulation, mma_gemm.cuh) from sm_80, their tile operands rounded to the storage type as
//   torch's GEMMs see them; fp32 on tensor cores too in the variant tiled_tc (3xTF32).
// - fused (the default; fused_common.cuh): tiny-cuda-nn's fully fused MLP with the tangent
//   streams as extra 16-row fragments, every product on tensor cores (mma.sync; fp32 as
//   3xTF32), 128 stacked rows per block; its backward stores the layers' adjoints and forms
//   dW in one product per layer over all rows (fused_weight_grads.cuh; or, WeightGrads::kGemm,
//   cuBLAS GEMMs that the binding runs on operands from fused_gemm_operands.cuh). fp64 runs
//   the tiled kernels.
// Everything else (activations, tangent updates, sums) runs in the accumulation type. All
// kernels are deterministic: no floating-point atomics, fixed tile-to-block assignment and
// summation orders. emulation/ runs them on the host to test their logic without a GPU. Needs
// sm_70 or newer (__grid_constant__ kernel arguments); the fused kernels sm_80.
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

// Which kernels run; the binding reads it from SOBOLEV_CUDA_KERNEL on every call.
enum class KernelVariant : int {
  kTiled,             // "tiled": the tile kernels (forward_kernel.cuh,
                      // backward_kernel.cuh), fp32 and fp64 products on FMA
  kTiledTensorCores,  // "tiled_tc": the same kernels, fp32 products on tensor cores (3xTF32,
                      // or TF32 where allow_tf32)
  kFused,             // "fused" (default): the fully fused tensor-core MLP (fused_*.cuh); fp64, and
                      // problems it cannot take, run kTiled
};

// How the fused backward forms the weight gradients; the binding reads it from
// SOBOLEV_CUDA_WEIGHT_GRADS on every call. The tiled kernels ignore it.
enum class WeightGrads : int {
  kSplitK,  // "splitk": fused_weight_grads.cuh, in-kernel products over row splits
  kGemm,    // "gemm" (default): per layer, fused_gemm_operands.cuh forms the operands and
            // the binding runs one cuBLAS GEMM (launch_gemm_operands below)
  kSplitKTensorCores,  // "splitk_tc": fp32 and bf16, fused_weight_grads_tc.cuh (a
                       // tensor-core split-K in 128 x 128 blocks); fp16 runs kGemm's
};

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
  KernelVariant variant = KernelVariant::kTiled;  // the kernels asked for (the plan says which run)
  WeightGrads weight_grads = WeightGrads::kSplitK;
  // the fused kernels' shapes with more warps per SM at widths 128 and 256 (fused_common.cuh's
  // FusedShape); the binding reads it from SOBOLEV_CUDA_FUSED_OCCUPANCY
  bool fused_high_occupancy = false;
  // the fused kernels' fp32 weights staged as 3xTF32 pairs (FusedShape's STAGED_SPLIT); the
  // binding reads it from SOBOLEV_CUDA_FUSED_WEIGHT_SPLIT
  bool fused_staged_split = false;
  // WeightGrads::kGemm's bias sums as per-block partials of the operand kernels, added by
  // launch_bias_sums; the binding reads it from SOBOLEV_CUDA_BIAS_SUMS ("operands")
  bool bias_sums_in_operands = false;
  // WeightGrads::kGemm's operands stored by the fused backward kernel itself as it forms the
  // adjoints (16-bit adjoints in the GEMMs' type, the layer inputs from the z/tz it has read,
  // the bias sums' per-block partials), instead of one operand kernel per layer reading them
  // again (fused_gemm_operands.cuh: layer 1's [x; v] only); the binding reads it from
  // SOBOLEV_CUDA_GEMM_OPERANDS ("backward")
  bool gemm_operands_in_backward = false;
  // 16-bit types: the fused forward's activation pass kPassBatch elements at a time (their
  // loads, then their math and stores) instead of one; the binding reads it from
  // SOBOLEV_CUDA_FORWARD_PASS ("batched")
  bool fused_batched_forward_pass = false;

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
  // z/tz(/ttz) of the hidden layers, or null: layer l (1..L-1) at S B (n_1 + .. + n_{l-1}), as
  // (S, B, n_l) (saved_offset). Every variant uses this layout, so a backward may run other
  // kernels than its forward did.
  void* saved = nullptr;
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

// The device's limits the plans depend on.
struct DeviceLimits {
  int num_sms = 1;
  size_t smem_per_block = 48 * 1024;  // opt-in maximum of dynamic shared memory per block
  int major = 8;                      // compute capability
};

// How the tiled kernels cut the batch (tile_plan.cuh's make_plan).
struct TilePlan {
  int streams = 1;           // S = 1 + order K
  int rows = 1;              // R, rows per tile
  int64_t num_tiles = 0;
  int max_width = 1;
  int hidden_total = 0;      // n_1 + ... + n_{L-1}
  int grid = 1;              // persistent blocks, each walking tiles blockIdx.x, + gridDim.x, ...
  int stage_elems = 0;       // accumulation-type elements of the weight stage
  int mma_tile_elems = 0;    // tensor cores: pad16(S R) mma_lead(max_width) operand elements
  int mma_panel_elems = 0;   // and the panel (>= mma_tile_elems)
  bool plain_tf32 = false;   // fp32 tensor-core products in one TF32 product (allow_tf32)
  int64_t buffer_elems = 0;  // elements of all tile buffers of one block
  bool buffers_in_smem = true;
  size_t smem_bytes = 0;     // dynamic shared memory per block
};

// How the fused kernels cut the batch (fused_plan.cuh's make_fused_plan).
struct FusedPlan {
  int width = 0;          // the kernels' WIDTH: the widest layer (d, n_l, m) rounded up to 16..256
  bool high_occupancy = false;  // the kernels' HIGH_OCCUPANCY shape
  bool staged_split = false;    // the kernels' STAGED_SPLIT shape
  size_t weight_images_at = 0;  // STAGED_SPLIT: the weight images' bytes into the workspace
  int tile_rows = 0;      // stacked rows per tile, 16 per warp (128, or 64 at width 256)
  int rows = 0;           // R samples per tile: S R <= tile_rows
  int64_t num_tiles = 0;
  int grid = 1;
  size_t smem_bytes = 0;
  // backward: the weight-gradient products (fused_weight_grads.cuh)
  int64_t adjoint_elems = 0;  // the layers' output adjoints [a_z; a_tz (; a_ttz)], S B sum n_l
  int grad_splits = 1;        // row ranges whose partial dW are added in order
  int64_t grad_blocks = 0;    // blocks of one split: (layer, 64 x 64 block of dW_l) pairs
  int64_t partial_size = 0;   // dW_1..dW_L, db_1..db_L
  bool grads_tc = false;      // the splits by fused_weight_grads_tc.cuh's kernel
  // WeightGrads::kGemm: the caller forms dW and db (launch_gemm_operands)
  bool grads_by_gemm = false;
  int64_t gemm_input_elems = 0;  // the largest layer input stack S_{l-1}
  int64_t gemm_copy_elems = 0;   // the largest adjoint copy (16-bit operands), else 0
  int bias_chunks = 0;           // bias partials' rows (sample ranges, or blocks), else 0
  size_t bias_partials_at = 0;   // and their bytes into the workspace
  // gemm_operands_in_backward: the backward kernel stores the adjoints as the GEMMs' operands
  // (fp32, or 16-bit copies only), S_1..S_{L-1} at layer_inputs_at (bytes into the workspace;
  // saved_offset's layout) and the bias partials, one row a block
  bool operands_in_backward = false;
  size_t layer_inputs_at = 0;
};

// One call's launch plan: made once (plan_*), sizes the workspace, then launches (launch_*).
struct LaunchPlan {
  KernelVariant variant = KernelVariant::kTiled;  // the kernels that run
  TilePlan tiles;                                 // kTiled, kTiledTensorCores
  FusedPlan fused;                                // kFused
  int64_t partial_size = 0;                       // tiled backward: per-block dW, db
  int num_sms = 1;                                // the device's, for grids sized by it
  size_t workspace_bytes = 0;  // device workspace (no alignment demands beyond 256 bytes)
};

// The current device's limits, queried once per device and cached.
DeviceLimits device_limits();

// Plans for p on a device with these limits (sets the kernels' shared-memory attributes).
cudaError_t plan_forward(const SobolevLaunch& p, const DeviceLimits& device, LaunchPlan* plan);
cudaError_t plan_backward(const SobolevLaunch& p, const DeviceLimits& device, LaunchPlan* plan);

// Launch on `stream` (the caller's current stream). Returns the launch error, if any.
cudaError_t launch_forward(const SobolevLaunch& p, const LaunchPlan& plan, void* workspace,
                           cudaStream_t stream);
cudaError_t launch_backward(const SobolevLaunch& p, const LaunchPlan& plan, void* workspace,
                            cudaStream_t stream);

// WeightGrads::kGemm, after launch_backward: layer l's (1..L) operands of
//   dW_l = adjoints^T inputs    (rows x n_l, rows x n_{l-1}, row-major, in `dtype`),
// formed in the workspace by one launch on `stream`, and bias_adjoints, the (B, n_l) fp32 value
// rows of A_l (db_l = their column sums). The caller runs both before asking for the next
// layer, whose operands reuse the same buffers.
struct GemmOperands {
  const void* adjoints = nullptr;
  const void* inputs = nullptr;
  const float* bias_adjoints = nullptr;
  int64_t rows = 0;
  DType dtype = DType::kFloat32;  // bf16 for bf16, else fp32
};
cudaError_t launch_gemm_operands(const SobolevLaunch& p, const LaunchPlan& plan, void* workspace,
                                 int layer, GemmOperands* out, cudaStream_t stream);
// With bias_sums_in_operands (plan.fused.bias_chunks > 0), after every layer's
// launch_gemm_operands: db_1..db_L from the partials those launches wrote, in one launch.
cudaError_t launch_bias_sums(const SobolevLaunch& p, const LaunchPlan& plan, void* workspace,
                             cudaStream_t stream);

}  // namespace sobolev::cuda
