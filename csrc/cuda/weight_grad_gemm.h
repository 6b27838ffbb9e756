// dW = A^T S over the stacked rows in fp32 at fp32 accuracy on tensor cores: CUTLASS's
// 3xTF32 GEMM (each operand split into a TF32 high part and remainder, three TF32 products,
// fp32 accumulation; NVIDIA's examples/27) with the reduction over rows split K-wise into
// slices whose partial products a second kernel adds in slice order, so the result is the same
// bits on every run. tiny-cuda-nn forms its MLP's weight gradients the same way
// (fc_multiply_split_k: CUTLASS GemmSplitKParallel). Torch-free; the ATen side is in
// sobolev_cuda_binding.cpp. Without the vendored CUTLASS headers (third_party/cutlass) the
// functions are compiled without it and report cudaErrorNotSupported.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace sobolev::cuda {

// A: (rows, n_out) row-major; S: (rows, n_in) row-major; dW: (n_out, n_in) row-major, all
// fp32, 16-byte aligned. splits slices of the rows, each a block column of tiles.
struct WeightGradGemm {
  int rows = 0;
  int n_out = 0;
  int n_in = 0;
  int splits = 1;
};

// Whether the vendored CUTLASS was compiled in.
bool weight_grad_gemm_compiled();
// The block's output tile, both sides: 128 where both widths pass 64, 64 where the narrower is
// 32 to 64 (config S's 64 x 64 layers; a 128 x 128 tile would leave three quarters of its
// products on padding), 0 where it is narrower still (a model's first and last layers: cuBLAS).
int weight_grad_gemm_tile(int n_out, int n_in);
// Whether the shape and pointers suit the GEMM: a tile (above), and its 16-byte accesses
// (widths multiples of 4, aligned pointers).
bool weight_grad_gemm_fits(const float* a, const float* s, const float* dw, int n_out, int n_in);
// Slices of the rows: one wave of the blocks an SM holds over the output tiles, each slice at
// least kMinSliceRows rows long.
int weight_grad_gemm_splits(int rows, int n_out, int n_in, int num_sms);
// The partial products' workspace: splits * n_out * n_in fp32.
size_t weight_grad_gemm_workspace_bytes(const WeightGradGemm& g);
cudaError_t weight_grad_gemm_3xtf32(const float* a, const float* s, float* dw,
                                    const WeightGradGemm& g, void* workspace,
                                    cudaStream_t stream);

}  // namespace sobolev::cuda
