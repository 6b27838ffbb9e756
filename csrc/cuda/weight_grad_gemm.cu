// CUTLASS's split-K 3xTF32 GEMM for the weight gradients: see weight_grad_gemm.h.
#include "cuda/weight_grad_gemm.h"

#include <cstdint>

#if __has_include("cutlass/gemm/device/gemm_splitk_parallel.h")
#define SOBOLEV_WITH_CUTLASS 1
#include "cutlass/epilogue/thread/linear_combination.h"
#include "cutlass/gemm/device/gemm_splitk_parallel.h"
#endif

namespace sobolev::cuda {
namespace {

constexpr int kMinSliceRows = 256;  // 16 k steps of 16 a slice: the 3-stage pipeline's fill

#ifdef SOBOLEV_WITH_CUTLASS
// In GEMM terms M = n_out, N = n_in, K = rows: A^T is A read column-major (M x K, leading
// dimension n_out), S is row-major K x N, dW row-major M x N. mma.sync m16n8k8 TF32, a 3-stage
// cp.async pipeline, 16-byte accesses (4 floats). Block tiles of TILE x TILE on warps of
// WARP_M x WARP_N (sm_90, ahead of time: 128 x 128 on 8 warps of 64 x 32, 249 registers; 64 x
// 64 on 4 of 32 x 32, 168; no spills; 128 x 128 on 64 x 64 warp tiles spills 1.4 KB).
template <int TILE, int WARP_M, int WARP_N>
using Gemm = cutlass::gemm::device::GemmSplitKParallel<
    float, cutlass::layout::ColumnMajor, float, cutlass::layout::RowMajor, float,
    cutlass::layout::RowMajor, float, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80,
    cutlass::gemm::GemmShape<TILE, TILE, 16>, cutlass::gemm::GemmShape<WARP_M, WARP_N, 16>,
    cutlass::gemm::GemmShape<16, 8, 8>,
    cutlass::epilogue::thread::LinearCombination<float, 4, float, float>,
    cutlass::epilogue::thread::Convert<float, 4, float>,
    cutlass::reduction::thread::ReduceAdd<float, float, 4>,
    cutlass::gemm::threadblock::GemmSplitKHorizontalThreadblockSwizzle, 3, 4, 4,
    cutlass::arch::OpMultiplyAddFastF32>;

template <typename G>
typename G::Arguments arguments(const float* a, const float* s, float* dw,
                                const WeightGradGemm& g) {
  return typename G::Arguments({g.n_out, g.n_in, g.rows}, {const_cast<float*>(a), g.n_out},
                               {const_cast<float*>(s), g.n_in}, {dw, g.n_in}, {dw, g.n_in},
                               {1.0f, 0.0f}, g.splits);
}

template <typename G>
cudaError_t run(const float* a, const float* s, float* dw, const WeightGradGemm& g,
                void* workspace, cudaStream_t stream) {
  const auto args = arguments<G>(a, s, dw, g);
  if (G::get_workspace_size(args) > weight_grad_gemm_workspace_bytes(g))
    return cudaErrorInvalidValue;
  G gemm;
  if (gemm.initialize(args, workspace) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
  if (gemm.run(stream) != cutlass::Status::kSuccess) {
    const cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? cudaErrorLaunchFailure : err;
  }
  return cudaSuccess;
}
#endif

}  // namespace

bool weight_grad_gemm_compiled() {
#ifdef SOBOLEV_WITH_CUTLASS
  return true;
#else
  return false;
#endif
}

int weight_grad_gemm_tile(int n_out, int n_in) {
  const int narrower = n_out < n_in ? n_out : n_in;
  return narrower > 64 ? 128 : narrower >= 32 ? 64 : 0;
}

bool weight_grad_gemm_fits(const float* a, const float* s, const float* dw, int n_out, int n_in) {
  const auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  return weight_grad_gemm_tile(n_out, n_in) > 0 && n_out % 4 == 0 && n_in % 4 == 0 &&
         aligned(a) && aligned(s) && aligned(dw);
}

int weight_grad_gemm_splits(int rows, int n_out, int n_in, int num_sms) {
  const int tile = weight_grad_gemm_tile(n_out, n_in);
  if (tile == 0) return 1;
  const int tiles = ((n_out + tile - 1) / tile) * ((n_in + tile - 1) / tile);
  const int blocks_per_sm = tile == 128 ? 1 : 2;  // (by registers: 249 x 256, 168 x 128)
  int splits = blocks_per_sm * num_sms / tiles;
  if (splits > rows / kMinSliceRows) splits = rows / kMinSliceRows;
  return splits < 1 ? 1 : splits;
}

size_t weight_grad_gemm_workspace_bytes(const WeightGradGemm& g) {
  return size_t(g.splits) * size_t(g.n_out) * size_t(g.n_in) * sizeof(float);
}

cudaError_t weight_grad_gemm_3xtf32(const float* a, const float* s, float* dw,
                                    const WeightGradGemm& g, void* workspace,
                                    cudaStream_t stream) {
#ifdef SOBOLEV_WITH_CUTLASS
  switch (weight_grad_gemm_tile(g.n_out, g.n_in)) {
    case 128: return run<Gemm<128, 64, 32>>(a, s, dw, g, workspace, stream);
    case 64: return run<Gemm<64, 32, 32>>(a, s, dw, g, workspace, stream);
    default: return cudaErrorInvalidValue;
  }
#else
  (void)a, (void)s, (void)dw, (void)g, (void)workspace, (void)stream;
  return cudaErrorNotSupported;
#endif
}

}  // namespace sobolev::cuda
