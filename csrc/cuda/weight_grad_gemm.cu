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
constexpr int kTile = 128;          // the block's output tile, both sides

#ifdef SOBOLEV_WITH_CUTLASS
// In GEMM terms M = n_out, N = n_in, K = rows: A^T is A read column-major (M x K, leading
// dimension n_out), S is row-major K x N, dW row-major M x N. 128 x 128 block tiles on 8 warps
// of 64 x 32 (sm_90, ahead of time: 249 registers, no spills; the 64 x 64 warp tiles of the
// same block spill 1.4 KB), mma.sync m16n8k8 TF32, a 3-stage cp.async pipeline, 16-byte
// accesses (4 floats).
using Epilogue = cutlass::epilogue::thread::LinearCombination<float, 4, float, float>;
using Gemm = cutlass::gemm::device::GemmSplitKParallel<
    float, cutlass::layout::ColumnMajor, float, cutlass::layout::RowMajor, float,
    cutlass::layout::RowMajor, float, cutlass::arch::OpClassTensorOp, cutlass::arch::Sm80,
    cutlass::gemm::GemmShape<kTile, kTile, 16>, cutlass::gemm::GemmShape<64, 32, 16>,
    cutlass::gemm::GemmShape<16, 8, 8>, Epilogue,
    cutlass::epilogue::thread::Convert<float, 4, float>,
    cutlass::reduction::thread::ReduceAdd<float, float, 4>,
    cutlass::gemm::threadblock::GemmSplitKHorizontalThreadblockSwizzle, 3, 4, 4,
    cutlass::arch::OpMultiplyAddFastF32>;

Gemm::Arguments arguments(const float* a, const float* s, float* dw, const WeightGradGemm& g) {
  return Gemm::Arguments({g.n_out, g.n_in, g.rows}, {const_cast<float*>(a), g.n_out},
                         {const_cast<float*>(s), g.n_in}, {dw, g.n_in}, {dw, g.n_in},
                         {1.0f, 0.0f}, g.splits);
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

bool weight_grad_gemm_fits(const float* a, const float* s, const float* dw, int n_out, int n_in) {
  const auto aligned = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; };
  return n_out % 4 == 0 && n_in % 4 == 0 && aligned(a) && aligned(s) && aligned(dw);
}

int weight_grad_gemm_splits(int rows, int n_out, int n_in, int num_sms) {
  const int tiles = ((n_out + kTile - 1) / kTile) * ((n_in + kTile - 1) / kTile);
  int splits = num_sms / tiles;
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
  const auto args = arguments(a, s, dw, g);
  Gemm gemm;
  if (Gemm::can_implement(args) != cutlass::Status::kSuccess ||
      Gemm::get_workspace_size(args) > weight_grad_gemm_workspace_bytes(g))
    return cudaErrorInvalidValue;
  if (gemm.initialize(args, workspace) != cutlass::Status::kSuccess) return cudaErrorInvalidValue;
  if (gemm.run(stream) != cutlass::Status::kSuccess) {
    const cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? cudaErrorLaunchFailure : err;
  }
  return cudaSuccess;
#else
  (void)a, (void)s, (void)dw, (void)g, (void)workspace, (void)stream;
  return cudaErrorNotSupported;
#endif
}

}  // namespace sobolev::cuda
