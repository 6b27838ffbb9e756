// How the CUDA kernels cut the batch into tiles and where each block keeps its tile buffers,
// plus the per-tile loads shared by the forward and backward kernels (the counterparts of
// cpu/rows_io.h).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "cuda/device_math.cuh"
#include "cuda/sobolev_kernels.cuh"

namespace sobolev::cuda {

// Threads per block; stacked rows S R per tile, and the shared memory for one staged weight
// panel of the FMA products. (Tensor cores might gain from 64 stacked rows: a tile stages
// every weight panel once, and at 32 rows staging a 128 x 128 bf16 layer takes about as long
// as its products, by L2 and tensor-core throughput. The fused kernels, fused_*.cuh, take 128.)
constexpr int kThreads = 256;
constexpr int kTileStackedRows = 32;
constexpr int kStageBytes = 32 * 1024;
// The tensor-core products (mma_gemm.cuh) stage, in the same place, the copies of a tile
// operand and of a weight panel (or a second tile operand) in the operand type (16-bit, or
// fp32 for TF32), padded to multiples of 16, each warp's 16 x 16 fp32 result block and two
// words for max |operand|. A panel has 64 columns: with 2 x 16 stacked rows, 8 result blocks,
// one per warp. Staged rows are kMmaSkew elements longer than their padded width, so that the
// rows WMMA loads together do not sit 2^n bytes apart, in the same shared-memory banks.
constexpr int kMmaBlock = 16;
constexpr int kMmaPanelColumns = 64;
constexpr int kMmaSkew = 8;  // 16 bytes: keeps WMMA's 32-byte alignment of 16-row steps
constexpr int kMmaResultBytes = kThreads / 32 * kMmaBlock * kMmaBlock * sizeof(float);
SK_HD int pad16(int n) { return (n + kMmaBlock - 1) / kMmaBlock * kMmaBlock; }
// Leading dimension of a staged operand with n columns.
SK_HD int mma_lead(int n) { return pad16(n) + kMmaSkew; }
// Whether the tiled kernels' products run on tensor cores (from sm_80): bf16 and fp16 always,
// fp32 in the variant kTiledTensorCores. Their operands then take this many bytes.
SK_HD bool uses_tensor_cores(const SobolevLaunch& p) {
  return p.dtype == DType::kBFloat16 || p.dtype == DType::kFloat16 ||
         (p.dtype == DType::kFloat32 && p.variant == KernelVariant::kTiledTensorCores);
}
SK_HD int operand_bytes(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }
// The two products of a tile with a layer's weights W_l (n_l x n_{l-1}, row-major in global
// memory): C = A W^T (the forward's z = [h; t] W^T) and C = A W (the backward's
// [a_h; a_t] = [a_z; a_tz] W).
enum class WeightProduct { kTransposed, kPlain };
// Loss terms summed per block: (f - y)^2, (u - g)^2, (w - g2)^2.
constexpr int kLossTerms = 3;
// Tile buffers (S R max_width each) and row buffers (R max_width each) of the kernels: the
// forward's input and output tiles; the backward's a, a_in and [h; t; tt] tiles and s', s''
// (and s''' for order 2) rows.
constexpr int kForwardTileBuffers = 2, kForwardRowBuffers = 0;
constexpr int kBackwardTileBuffers = 3;
// The backward's grid: at most this many blocks per SM (each keeps its partial gradients).
constexpr int kBackwardBlocksPerSM = 2;
SK_HD int backward_row_buffers(const SobolevLaunch& p) { return p.order == 2 ? 3 : 2; }

// Everything a kernel needs, passed by value (kernel parameter space).
struct KernelArgs {
  SobolevLaunch p;
  TilePlan plan;
  void* scratch = nullptr;           // tile buffers in global memory when they do not fit
  double* loss_partials = nullptr;   // forward: kLossTerms squared-error sums per block
  unsigned int* counter = nullptr;   // forward: blocks done, to find the last one
  void* grad_partials = nullptr;     // backward: per block dW_1..dW_L, db_1..db_L
  int64_t partial_size = 0;
};

// tile_buffers: (1 + K) R max_width buffers; row_buffers: R max_width buffers.
inline TilePlan make_plan(const SobolevLaunch& p, int tile_buffers, int row_buffers,
                          size_t acc_size, size_t smem_limit) {
  TilePlan plan;
  plan.streams = 1 + p.order * p.num_directions;
  plan.rows = std::max(1, kTileStackedRows / plan.streams);
  plan.num_tiles = (p.batch + plan.rows - 1) / plan.rows;
  for (int l = 0; l <= p.num_layers; ++l) plan.max_width = std::max(plan.max_width, p.widths[l]);
  for (int l = 1; l < p.num_layers; ++l) plan.hidden_total += p.widths[l];
  plan.stage_elems = static_cast<int>(kStageBytes / acc_size);
  plan.plain_tf32 = p.allow_tf32;
  if (uses_tensor_cores(p)) {
    // the whole stage (a GPU older than sm_80 runs the FMA products in it: >= 5K elements, a
    // panel of at least one column; the forward's final sums need 6 KB)
    plan.mma_tile_elems = pad16(plan.streams * plan.rows) * mma_lead(plan.max_width);
    plan.mma_panel_elems = std::max(plan.mma_tile_elems,
                                    (kMmaPanelColumns + kMmaSkew) * mma_lead(plan.max_width));
    const size_t bytes =
        operand_bytes(p.dtype) * size_t(plan.mma_tile_elems + plan.mma_panel_elems) +
        kMmaResultBytes + 32;
    plan.stage_elems = static_cast<int>((bytes + acc_size - 1) / acc_size);
  }
  const int64_t tile = static_cast<int64_t>(plan.streams) * plan.rows * plan.max_width;
  plan.buffer_elems = tile_buffers * tile + row_buffers * int64_t(plan.rows) * plan.max_width;
  const size_t with_buffers = (plan.stage_elems + plan.buffer_elems) * acc_size;
  plan.buffers_in_smem = with_buffers <= smem_limit;
  plan.smem_bytes = plan.buffers_in_smem ? with_buffers : plan.stage_elems * acc_size;
  return plan;
}

// Start of hidden layer `layer`'s z/tz(/ttz) in `saved` (layer 1..L-1): the layers before it,
// each (S, B, n_l); stream s of row r at offset (s B + r) n_l within the layer.
SK_HD int64_t saved_offset(const SobolevLaunch& p, int streams, int layer) {
  int64_t before = 0;
  for (int l = 1; l < layer; ++l) before += p.widths[l];
  return int64_t(streams) * p.batch * before;
}

// Rows of the tile starting at row r0 (the last tile may be short).
__device__ __forceinline__ int tile_rows(const TilePlan& plan, int64_t batch, int64_t r0) {
  return static_cast<int>(batch - r0 < plan.rows ? batch - r0 : plan.rows);
}

inline size_t align_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

// The block's tile buffers: after the weight stage in shared memory, or its slice of scratch.
template <typename acc_t>
__device__ __forceinline__ acc_t* block_buffers(const KernelArgs& args, acc_t* stage) {
  if (args.plan.buffers_in_smem) return stage + args.plan.stage_elems;
  return static_cast<acc_t*>(args.scratch) + blockIdx.x * args.plan.buffer_elems;
}

// Layer-1 input of rows r0..r0+R: [x; v_1..v_K] as (1 + K, R, d) (the second-order input
// tangents are 0: order 2 leaves them out of the layer-1 products).
template <typename scalar_t, typename acc_t>
__device__ void load_input(const SobolevLaunch& p, int64_t r0, int R, acc_t* in) {
  const int d = p.in_features, K = p.num_directions;
  const auto* x = static_cast<const scalar_t*>(p.x);
  const auto* dirs = static_cast<const scalar_t*>(p.directions);
  for (int e = threadIdx.x; e < (1 + K) * R * d; e += blockDim.x) {
    const int s = e / (R * d), r = (e / d) % R, i = e % d;
    const int64_t row = r0 + r;
    scalar_t v;
    if (s == 0)
      v = x[row * d + i];
    else
      v = p.shared_directions ? dirs[(s - 1) * d + i] : dirs[(row * K + s - 1) * d + i];
    in[e] = to_acc<acc_t>(v);
  }
}

// g_k of row `row`, output j: target_jvp, or target_grad contracted with v_k (targets in
// acc_t, directions in scalar_t).
template <typename scalar_t, typename acc_t>
__device__ acc_t projected_target(const SobolevLaunch& p, int64_t row, int k, int j) {
  const int d = p.in_features, K = p.num_directions, m = p.out_features;
  if (p.target_jvp != nullptr)
    return static_cast<const acc_t*>(p.target_jvp)[(row * K + k) * m + j];
  const auto* jac = static_cast<const acc_t*>(p.target_grad) + (row * m + j) * d;
  const auto* dirs = static_cast<const scalar_t*>(p.directions);
  const scalar_t* v = p.shared_directions ? dirs + k * d : dirs + (row * K + k) * d;
  acc_t acc = 0;
  for (int i = 0; i < d; ++i) acc = fma(jac[i], to_acc<acc_t>(v[i]), acc);
  return acc;
}

// g2_k of row `row`, output j: target_hvp2, or v_k^T H_g v_k = sum_i v_i sum_l H_il v_l
// contracted from target_hess.
template <typename scalar_t, typename acc_t>
__device__ acc_t projected_target2(const SobolevLaunch& p, int64_t row, int k, int j) {
  const int d = p.in_features, K = p.num_directions, m = p.out_features;
  if (p.target_hvp2 != nullptr)
    return static_cast<const acc_t*>(p.target_hvp2)[(row * K + k) * m + j];
  const auto* hess = static_cast<const acc_t*>(p.target_hess) + (row * m + j) * d * d;
  const auto* dirs = static_cast<const scalar_t*>(p.directions);
  const scalar_t* v = p.shared_directions ? dirs + k * d : dirs + (row * K + k) * d;
  acc_t acc = 0;
  for (int i = 0; i < d; ++i) {
    acc_t hv = 0;
    for (int l = 0; l < d; ++l) hv = fma(hess[i * d + l], to_acc<acc_t>(v[l]), hv);
    acc = fma(to_acc<acc_t>(v[i]), hv, acc);
  }
  return acc;
}

SK_HD bool has_target(const SobolevLaunch& p) {
  return p.target_jvp != nullptr || p.target_grad != nullptr;
}

// The second-order term is there for order 2 with a second-order target.
SK_HD bool has_target2(const SobolevLaunch& p) {
  return p.order == 2 && (p.target_hvp2 != nullptr || p.target_hess != nullptr);
}

}  // namespace sobolev::cuda
