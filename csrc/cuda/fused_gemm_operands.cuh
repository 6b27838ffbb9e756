// The fused backward's weight gradients by GEMM (SOBOLEV_CUDA_WEIGHT_GRADS=gemm): for each
// layer l, one elementwise kernel forms the two operands of
//   dW_l = A_l^T S_{l-1}     over the stacked rows s B + r (values, tangents, order 2: tt),
// and the ATen binding runs that product on cuBLAS (the same GEMMs as the Triton backend's
// `gemm` weight gradients, which took 0.37 ms at config M in fp32 on the H200, against 4.6 ms
// for fused_weight_grads.cuh). S_{l-1} is recomputed from the forward's saved z/tz(/ttz):
//   h = s(z),  t_k = s'(z) tz_k,  tt_k = s'(z) ttz_k + s''(z) tz_k^2   (layer 1: [x; v_k])
// Layer 1 has no tt rows (tt_0 = 0): its GEMM takes the first (1 + K) B rows only.
// Operands are bf16 for bf16 (the adjoints copied and rounded; tensor-core GEMMs) and fp32
// otherwise (fp32 GEMMs at torch's matmul precision; fp16 adjoints, O(1/B), would underflow).
// Also compiled on the host by emulation/.
#pragma once

#include <type_traits>

#include "cuda/backward_kernel.cuh"
#include "cuda/fused_common.cuh"

namespace sobolev::cuda {

constexpr int kOperandThreads = 256;

// Stacked rows of layer l's GEMM (l = 1..L): 1 + K streams for layer 1, else S.
SK_HD int64_t gemm_rows(const SobolevLaunch& p, int layer) {
  const int streams = layer == 1 ? 1 + p.num_directions : 1 + p.order * p.num_directions;
  return int64_t(streams) * p.batch;
}

// Whether layer l's input operand S_{l-1} is formed over layer l-1's adjoints in the workspace
// (l >= 2, where those start 16-byte aligned, as cuBLAS's vector loads want): the binding runs
// the layers in order on one stream, so layer l-1's GEMM and bias sums have read them by then.
// Else S_{l-1} takes a buffer of its own after the adjoints, sized for such layers only (layer
// 1's [x; v] at least): not a stack of the largest layer beside the adjoints (config M in fp32:
// 13 MB instead of 100 MB).
SK_HD bool gemm_inputs_over_adjoints(const SobolevLaunch& p, int layer) {
  return layer >= 2 && adjoint_offset(p, 1 + p.order * p.num_directions, layer - 1) % 4 == 0;
}

// The operand kernel's blocks for layer l: a grid-stride loop over its larger stack, at most
// 8 blocks of kOperandThreads per SM.
SK_HD int64_t operand_blocks(const SobolevLaunch& p, int layer, int num_sms) {
  const int widest = p.widths[layer - 1] > p.widths[layer] ? p.widths[layer - 1] : p.widths[layer];
  const int64_t blocks = (gemm_rows(p, layer) * widest + kOperandThreads - 1) / kOperandThreads;
  return blocks < 1 ? 1 : blocks < int64_t(num_sms) * 8 ? blocks : int64_t(num_sms) * 8;
}

struct GemmOperandArgs {
  SobolevLaunch p;
  int layer = 1;                   // l, 1..L
  const float* adjoints = nullptr;  // the backward's A_l, (S B, n_l) fp32
  void* inputs = nullptr;          // out: S_{l-1}, (gemm_rows, n_{l-1}) operands
  void* adjoint_copy = nullptr;    // out: A_l's first gemm_rows rows as operands; null for fp32
  // SOBOLEV_CUDA_BIAS_SUMS=operands, else null: out, the column sums of A_l's value rows over
  // each of bias_chunks ranges of samples, (bias_chunks, output_columns_before(p, L + 1)) fp32:
  // db_l's columns stacked, [n_1, ..., n_L], layer l's from output_columns_before(p, l); blocks
  // 0..bias_chunks-1 sum one range each (dynamic shared memory: kBiasSumSmem bytes)
  float* bias_partials = nullptr;
  int bias_chunks = 0;
};

constexpr int kBiasSumSmem = sizeof(float) * (kOperandThreads > kMaxWidth ? kOperandThreads
                                                                          : kMaxWidth);

// This block's partial sums of db_l = the column sums of A_l's (B, n_l) value rows: its range
// of samples, `lanes` rows side by side per column (coalesced), the lanes added in order.
__device__ __forceinline__ void bias_partials(const GemmOperandArgs& args) {
  extern __shared__ __align__(128) unsigned char smem[];
  const SobolevLaunch& p = args.p;
  const int n = p.widths[args.layer], columns = output_columns_before(p, p.num_layers + 1);
  const int64_t per = (p.batch + args.bias_chunks - 1) / args.bias_chunks;
  const int64_t r0 = blockIdx.x * per, r1 = r0 + per < p.batch ? r0 + per : p.batch;
  const int lanes = int(blockDim.x) > n ? int(blockDim.x) / n : 1;
  const int lane = threadIdx.x / n;  // (0 wherever n >= the block's threads)
  auto* red = reinterpret_cast<float*>(smem);  // (lanes, n)
  for (int c = threadIdx.x % n; lane < lanes && c < n; c += blockDim.x) {
    float sum = 0;
    for (int64_t r = r0 + lane; r < r1; r += lanes) sum += args.adjoints[r * n + c];
    red[lane * n + c] = sum;
  }
  __syncthreads();
  float* out =
      args.bias_partials + int64_t(blockIdx.x) * columns + output_columns_before(p, args.layer);
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    float sum = 0;
    for (int i = 0; i < lanes; ++i) sum += red[i * n + c];
    out[c] = sum;
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kOperandThreads)
    fused_gemm_operands_kernel(const __grid_constant__ GemmOperandArgs args) {
  using op_t = gemm_operand_t<scalar_t>;
  const SobolevLaunch& p = args.p;
  const int l = args.layer, S = 1 + p.order * p.num_directions;
  const int n_in = p.widths[l - 1], n_out = p.widths[l];
  const int64_t rows = gemm_rows(p, l), B = p.batch;
  const int64_t first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const float* z = l > 1 ? static_cast<const float*>(p.saved_in) + saved_offset(p, S, l - 1)
                         : nullptr;
  auto* inputs = static_cast<op_t*>(args.inputs);
  // one (sample, column) at a time, all its streams: s(z) and its derivatives once for them
  const int streams = static_cast<int>(rows / B);
  const int64_t next = B * n_in;  // from one stream's rows to the next
  for (int64_t at = first; at < next; at += stride) {
    layer_inputs_at<scalar_t>(p, l, z, at / n_in, static_cast<int>(at % n_in), streams,
                              [&](int s, float v) { inputs[s * next + at] = from_acc<op_t>(v); });
  }
  if (args.bias_partials != nullptr && int(blockIdx.x) < args.bias_chunks) bias_partials(args);
  if (args.adjoint_copy == nullptr) return;
  auto* copy = static_cast<op_t*>(args.adjoint_copy);
  for (int64_t e = first; e < rows * n_out; e += stride) copy[e] = from_acc<op_t>(args.adjoints[e]);
}

struct BiasSumArgs {
  SobolevLaunch p;
  const float* partials = nullptr;  // GemmOperandArgs::bias_partials, every layer's
  int chunks = 0;
};

// SOBOLEV_CUDA_BIAS_SUMS=operands, after every layer's operand kernel: db_l = the sums of the
// partials, in chunk order. A block per 32 stacked columns; warp w adds chunks w, w + warps, ..
// (a row of 32 columns a load), then warp 0 adds the warps' sums in order.
template <typename scalar_t>
__global__ void __launch_bounds__(kOperandThreads)
    bias_sums_kernel(const __grid_constant__ BiasSumArgs args) {
  extern __shared__ __align__(128) unsigned char smem[];
  const SobolevLaunch& p = args.p;
  const int columns = output_columns_before(p, p.num_layers + 1), warps = blockDim.x / 32;
  const int w = threadIdx.x / 32, c = blockIdx.x * 32 + threadIdx.x % 32;
  auto* red = reinterpret_cast<float*>(smem);  // (warps, 32)
  float sum = 0;
  for (int b = w; c < columns && b < args.chunks; b += warps)
    sum += args.partials[int64_t(b) * columns + c];
  red[threadIdx.x] = sum;
  __syncthreads();
  if (w != 0 || c >= columns) return;
  float total = 0;
  for (int i = 0; i < warps; ++i) total += red[i * 32 + threadIdx.x];
  int layer = 1;
  while (c >= output_columns_before(p, layer + 1)) ++layer;
  static_cast<scalar_t*>(p.grad_biases[layer - 1])[c - output_columns_before(p, layer)] =
      from_acc<scalar_t>(total);
}

}  // namespace sobolev::cuda
