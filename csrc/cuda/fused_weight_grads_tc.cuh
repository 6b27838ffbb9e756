// The fused backward's weight gradients as a tensor-core split-K
// (SOBOLEV_CUDA_WEIGHT_GRADS=splitk_tc, WeightGrads::kSplitKTensorCores): the same sums as
// fused_weight_grads.cuh,
//   dW_l = [a_z; a_tz (; a_ttz)]^T [h; t (; tt)]_{l-1},   db_l = sum over rows of a_z,
// the layer inputs recomputed from the saved z/tz/ttz as they are staged, one range of samples
// per block (split-K) and the splits added in order by sum_partials_kernel (deterministic).
// What differs, so that the products stay on the tensor cores rather than on the staging and
// the operand splits (fused_weight_grads.cuh: 4.6 ms at config M on the H200, run 5, against
// the GEMM path's 0.82 ms):
// - a block takes a 128 x 128 block of dW_l (8 warps, each 32 x 64): a layer of width 128 is
//   read once per split, not once per 64 x 64 block;
// - both operands are staged as they lie in memory, rows of stacked samples ([k][i] and
//   [k][j]), so the staging copies rows (consecutive threads, consecutive columns) instead of
//   transposing them; the row stride (kTcGradLead) puts a warp's fragment loads in 32
//   different banks;
// - fp32's operands are split into their 3xTF32 parts in registers by integer arithmetic
//   (tf32_parts<true>): three instructions a value where cvt.rna's split takes nine; bf16's
//   are rounded as they are staged, two consecutive rows to a word (the pair a fragment
//   register holds): one load a register;
// - the bias sums ride on the staging of the value rows: each thread sums its column.
// fp32 and bf16 (bf16's operands rounded as the GEMM path rounds them); fp16
// runs the GEMM path (its products need scaled operands). Also compiled on the host by
// emulation/.
#pragma once

#include <type_traits>

#include "cuda/backward_kernel.cuh"
#include "cuda/fused_common.cuh"
#include "cuda/fused_weight_grads.cuh"

namespace sobolev::cuda {

constexpr int kTcGradTile = 128;     // rows and columns of a dW block
constexpr int kTcGradThreads = 256;  // 8 warps: 4 along dW's rows (32 each) x 2 along its columns
constexpr int kTcGradRows = 64;      // stacked rows staged at once, about
static_assert(kTcGradThreads % kTcGradTile == 0, "a thread stages one column of each operand");

// The staged rows' stride, in words, so that a warp's fragment loads hit 32 banks: lane 4 g + t
// reads word t ld + g (TF32: row t; bf16: the word of rows 2t and 2t + 1), ld = 8 mod 32.
constexpr int kTcGradLead = kTcGradTile + 8;

// The dtypes it takes: fp32 (3xTF32 or TF32) and bf16 (fp16 would need its scaled operands).
template <typename scalar_t>
inline constexpr bool kHasTcGrads =
    std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, __nv_bfloat16>;

// Samples staged at once, all their streams: Q with S Q <= kTcGradRows (at least one).
SK_HD int tc_grad_samples(const SobolevLaunch& p) {
  const int S = 1 + p.order * p.num_directions;
  return S < kTcGradRows ? kTcGradRows / S : 1;
}

// The staged rows (S Q, padded to the k of a product: zero rows past S Q).
template <typename scalar_t>
SK_HD int tc_grad_chunk_rows(const SobolevLaunch& p) {
  const int S = 1 + p.order * p.num_directions, k = kMmaK<scalar_t>;
  return (S * tc_grad_samples(p) + k - 1) / k * k;
}

// Words a staged row takes per operand column: one fp32, or half a word (bf16 rows in pairs).
template <typename scalar_t>
SK_HD int tc_grad_staged_words(const SobolevLaunch& p) {
  const int rows = tc_grad_chunk_rows<scalar_t>(p);
  return std::is_same_v<scalar_t, float> ? rows : rows / 2;
}

template <typename scalar_t>
SK_HD size_t tc_grad_smem_bytes(const SobolevLaunch& p) {
  return sizeof(float) * 2 * size_t(tc_grad_staged_words<scalar_t>(p)) * kTcGradLead +
         sizeof(float) * 2 * kTcGradTile;
}

// Blocks of one split: the 128 x 128 blocks of dW_1, then dW_2, ...
SK_HD int64_t tc_grad_blocks(const SobolevLaunch& p) { return dw_blocks(p, kTcGradTile); }

// Stores v as staged row `row`, column c of an operand: an fp32 word, or bf16 (rounded as the
// GEMM path rounds) in the half of word (row / 2, c) that mma_fragments.cuh's layouts put row
// `row` in (k and k + 1 in a pair, k in the low half).
template <typename scalar_t>
__device__ __forceinline__ void tc_grad_stage(float* staged, int row, int c, float v) {
  if constexpr (std::is_same_v<scalar_t, float>)
    staged[row * kTcGradLead + c] = v;
  else
    reinterpret_cast<scalar_t*>(staged)[(row / 2 * kTcGradLead + c) * 2 + row % 2] =
        from_acc<scalar_t>(v);
}

// The A fragment of rows i0..i0+15 (A(i, k) = As[k0 + k][i]) and the B fragment of columns
// j0..j0+7 (B(k, n) = Hs[k0 + k][n]) of staged operands: fp32 split into TF32 parts by
// tf32_parts<true> (SPLIT: 3xTF32), or bf16 pairs, a word a register.
template <typename scalar_t, bool SPLIT>
__device__ __forceinline__ FragmentA tc_grad_a(const float* As, int ld, int k0, int i0) {
  const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  FragmentA f;
  if constexpr (std::is_same_v<scalar_t, float>) {  // a0 (g, t), a1 (g + 8, t), a2, a3: k + 4
    const float* at = As + (k0 + t) * ld + i0 + g;
    tf32_parts<true>(at[0], SPLIT, f.hi[0], f.lo[0]);
    tf32_parts<true>(at[8], SPLIT, f.hi[1], f.lo[1]);
    tf32_parts<true>(at[4 * ld], SPLIT, f.hi[2], f.lo[2]);
    tf32_parts<true>(at[4 * ld + 8], SPLIT, f.hi[3], f.lo[3]);
  } else {  // a0 (g, 2t..2t+1), a1 (g + 8, ..), a2, a3: k + 8
    const auto* at = reinterpret_cast<const uint32_t*>(As) + (k0 / 2 + t) * ld + i0 + g;
#pragma unroll
    for (int r = 0; r < 4; ++r) f.hi[r] = at[(r & 1) * 8 + (r >> 1) * 4 * ld];
  }
  return f;
}

template <typename scalar_t, bool SPLIT>
__device__ __forceinline__ FragmentB tc_grad_b(const float* Hs, int ld, int k0, int j0) {
  const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  FragmentB f;
  if constexpr (std::is_same_v<scalar_t, float>) {  // b0 (t, g), b1 (t + 4, g)
    const float* at = Hs + (k0 + t) * ld + j0 + g;
    tf32_parts<true>(at[0], SPLIT, f.hi[0], f.lo[0]);
    tf32_parts<true>(at[4 * ld], SPLIT, f.hi[1], f.lo[1]);
  } else {  // b0 (2t..2t+1, g), b1 (2t+8..2t+9, g)
    const auto* at = reinterpret_cast<const uint32_t*>(Hs) + (k0 / 2 + t) * ld + j0 + g;
    f.hi[0] = at[0];
    f.hi[1] = at[4 * ld];
  }
  return f;
}

// grid (tc_grad_blocks, grad_splits), kTcGradThreads threads, tc_grad_smem_bytes: block
// (b, split) takes dW block b over split's samples into the split's partial sums (the layout
// of backward_kernel.cuh's partial_size). fp32: SPLIT, 3xTF32 (else plain TF32, allow_tf32);
// bf16: the operands rounded to bf16 as the GEMM path's are (SPLIT false).
template <typename scalar_t, bool SPLIT>
__global__ void __launch_bounds__(kTcGradThreads, 2)
    fused_weight_grad_tc_kernel(const __grid_constant__ FusedArgs args) {
  static_assert(kHasTcGrads<scalar_t> && (SPLIT ? std::is_same_v<scalar_t, float> : true));
  constexpr int ld = kTcGradLead, kK = kMmaK<scalar_t>;
  const SobolevLaunch& p = args.p;
  const int K = p.num_directions, S = 1 + p.order * K, Q = tc_grad_samples(p);
  const int rows = tc_grad_chunk_rows<scalar_t>(p), words = tc_grad_staged_words<scalar_t>(p);
  extern __shared__ __align__(128) unsigned char smem[];
  float* As = reinterpret_cast<float*>(smem);  // a: row s Q + q, column i - i0 (tc_grad_stage)
  float* Hs = As + words * ld;                 // h: row s Q + q, column j - j0
  float* bias_sums = Hs + words * ld;          // (2, kTcGradTile)
  const auto [layer, i0, j0] = dw_block(p, kTcGradTile, blockIdx.x);
  const int n_out = p.widths[layer], n_in = p.widths[layer - 1];
  const int64_t per_split = (p.batch + gridDim.y - 1) / gridDim.y;
  const int64_t first = blockIdx.y * per_split;
  const int64_t last = first + per_split < p.batch ? first + per_split : p.batch;
  const float* a_l = args.adjoints + adjoint_offset(p, S, layer);
  const float* z_saved =
      layer > 1 ? static_cast<const float*>(p.saved_in) + saved_offset(p, S, layer - 1) : nullptr;
  const bool with_bias = p.biases[0] != nullptr && j0 == 0;
  // this thread's column of both operands, and its first sample of each chunk (then every
  // kTcGradThreads / kTcGradTile-th)
  const int c = threadIdx.x % kTcGradTile, q_first = threadIdx.x / kTcGradTile;
  constexpr int q_step = kTcGradThreads / kTcGradTile;
  const int i = i0 + c, j = j0 + c;
  for (int e = threadIdx.x; e < 2 * words * ld; e += blockDim.x) As[e] = 0;  // rows past S Q
  float bias = 0;  // db_l[i] over this thread's value rows

  const int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  const int wi = warp % 4 * 32, wj = warp / 4 * 64;  // the warp's dW rows and columns
  // the warp's live 16-row halves and 8-column tiles (uniform: no products past the layer)
  const int halves = n_out - i0 - wi >= 32 ? 2 : n_out - i0 - wi > 0 ? 1 + (n_out - i0 - wi > 16)
                                                                      : 0;
  const int col_tiles = n_in - j0 - wj >= 64 ? 8 : n_in - j0 - wj > 0 ? (n_in - j0 - wj + 7) / 8
                                                                       : 0;
  float acc[2][8][4] = {};
  for (int64_t b0 = first; b0 < last; b0 += Q) {
    __syncthreads();  // the previous chunk is no longer read
    // the chunk's rows: a_l's and the recomputed inputs (zeros past `last` and the layer)
#pragma unroll 2
    for (int q = q_first; q < Q; q += q_step) {
      const int64_t row = b0 + q;
      const bool live = row < last;
      for (int s = 0; s < S; ++s) {
        const float v = live && i < n_out ? a_l[(s * p.batch + row) * n_out + i] : 0.0f;
        tc_grad_stage<scalar_t>(As, s * Q + q, c, v);
        if (s == 0) bias += v;
      }
      if (!live || j >= n_in) {
        for (int s = 0; s < S; ++s) tc_grad_stage<scalar_t>(Hs, s * Q + q, c, 0.0f);
      } else {
        layer_inputs_at<scalar_t>(p, layer, z_saved, row, j, S, [&](int s, float v) {
          tc_grad_stage<scalar_t>(Hs, s * Q + q, c, v);
        });
      }
    }
    __syncthreads();
    // dW block (the warp's 32 x 64) += a^T h over the chunk's rows; a loop of its own for a
    // warp whose block is whole (FULL: no tile predicates, which also had nvcc guard each
    // product with a WARPSYNC)
    const auto products = [&](auto full) {
      constexpr bool FULL = decltype(full)::value;
      for (int k0 = 0; k0 < rows; k0 += kK) {
        const FragmentA fa[2] = {tc_grad_a<scalar_t, SPLIT>(As, ld, k0, wi),
                                 tc_grad_a<scalar_t, SPLIT>(As, ld, k0, wi + 16)};
#pragma unroll
        for (int jt = 0; jt < 8; ++jt) {
          if (!FULL && jt >= col_tiles) break;
          const FragmentB fb = tc_grad_b<scalar_t, SPLIT>(Hs, ld, k0, wj + 8 * jt);
          mma<scalar_t>(acc[0][jt], fa[0], fb, SPLIT);
          if (FULL || halves > 1) mma<scalar_t>(acc[1][jt], fa[1], fb, SPLIT);
        }
      }
    };
    if (halves == 2 && col_tiles == 8)
      products(std::true_type{});
    else if (halves > 0)
      products(std::false_type{});
  }

  // the block's dW and (first column block) db into this split's partial sums
  float* partial = args.grad_partials + blockIdx.y * args.plan.partial_size;
  float* dw = partial + weight_offset(p, layer - 1);
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int jt = 0; jt < 8; ++jt)
      for (int v = 0; v < 4; ++v) {
        const int row = i0 + wi + 16 * h + g + 8 * (v / 2), col = j0 + wj + 8 * jt + 2 * t + v % 2;
        if (row < n_out && col < n_in) dw[int64_t(row) * n_in + col] = acc[h][jt][v];
      }
  if (!with_bias) return;
  bias_sums[threadIdx.x] = bias;  // (q_step, kTcGradTile), then added in order
  __syncthreads();
  if (threadIdx.x >= kTcGradTile || i >= n_out) return;
  float sum = 0;
  for (int r = 0; r < q_step; ++r) sum += bias_sums[r * kTcGradTile + threadIdx.x];
  partial[bias_offset(p, layer - 1) + i] = sum;
}

// The kernel for p: fp32 in 3xTF32 or (allow_tf32) plain TF32; bf16.
template <typename scalar_t>
auto tc_grad_kernel(const SobolevLaunch& p) {
  if constexpr (std::is_same_v<scalar_t, float>)
    return p.allow_tf32 ? fused_weight_grad_tc_kernel<float, false>
                        : fused_weight_grad_tc_kernel<float, true>;
  else
    return fused_weight_grad_tc_kernel<scalar_t, false>;
}

}  // namespace sobolev::cuda
