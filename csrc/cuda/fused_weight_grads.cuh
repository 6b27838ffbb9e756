// The weight gradients of the fused backward: one product per layer over all S B stacked rows,
//   dW_l = [a_z; a_tz (; a_ttz)]^T [h; t (; tt)]_{l-1},   db_l = sum over rows of a_z,
// the adjoints from fused_backward.cuh, the layer inputs recomputed from the saved z/tz/ttz as
// they are loaded (layer 1's are [x; v_k; 0]). A block computes a 64 x 64 block of one dW_l
// over one range of samples (split-K); sum_partials_kernel then adds the splits in order, so
// the sums are deterministic. 4 warps, each 16 rows of the block, on tensor cores
// (mma_fragments.cuh); the operands are staged in fp32, transposed, 128 stacked rows at a time.
#pragma once

#include "cuda/backward_kernel.cuh"
#include "cuda/fused_common.cuh"

namespace sobolev::cuda {

constexpr int kGradBlock = 64;    // rows and columns of a dW block
constexpr int kGradThreads = 128;
constexpr int kGradChunk = 128;   // stacked rows staged at once

template <typename scalar_t>
struct GradShape {
  static constexpr int kLead = kGradChunk + (std::is_same_v<scalar_t, float> ? 4 : 8);
  static constexpr size_t kSmemBytes =
      sizeof(float) * 2 * kGradBlock * kLead + 2 * sizeof(unsigned);
};

// dW_l's blocks of tile x tile.
SK_HD int64_t dw_blocks_of_layer(const SobolevLaunch& p, int tile, int layer) {
  return int64_t((p.widths[layer] + tile - 1) / tile) * ((p.widths[layer - 1] + tile - 1) / tile);
}

// Blocks of one split: the tile x tile blocks of dW_1, then dW_2, ...
SK_HD int64_t dw_blocks(const SobolevLaunch& p, int tile) {
  int64_t blocks = 0;
  for (int l = 1; l <= p.num_layers; ++l) blocks += dw_blocks_of_layer(p, tile, l);
  return blocks;
}

// Block b of dw_blocks' order: its layer (1..L) and its first row i0 and column j0 of dW_l.
struct DwBlock {
  int layer, i0, j0;
};
SK_HD DwBlock dw_block(const SobolevLaunch& p, int tile, int64_t b) {
  int layer = 1;
  for (; b >= dw_blocks_of_layer(p, tile, layer); ++layer) b -= dw_blocks_of_layer(p, tile, layer);
  const int j_blocks = (p.widths[layer - 1] + tile - 1) / tile;
  return {layer, static_cast<int>(b / j_blocks) * tile, static_cast<int>(b % j_blocks) * tile};
}

SK_HD int64_t grad_blocks(const SobolevLaunch& p) { return dw_blocks(p, kGradBlock); }

// grid (grad_blocks, grad_splits): block (b, split) takes dW block b over split's samples and
// writes it to the split's partial sums (the layout of backward_kernel.cuh's partial_size).
template <typename scalar_t>
__global__ void __launch_bounds__(kGradThreads)
    fused_weight_grad_kernel(const __grid_constant__ FusedArgs args) {
  using Shape = GradShape<scalar_t>;
  constexpr int ld = Shape::kLead;
  const SobolevLaunch& p = args.p;
  const int K = p.num_directions, S = 1 + p.order * K;
  const bool split = !p.allow_tf32;
  extern __shared__ __align__(128) unsigned char smem[];
  float* A = reinterpret_cast<float*>(smem);  // a^T: A[i][s Q + q]
  float* H = A + kGradBlock * ld;             // h^T: H[j][s Q + q]
  auto* amax = reinterpret_cast<unsigned*>(H + kGradBlock * ld);
  const auto [layer, i0, j0] = dw_block(p, kGradBlock, blockIdx.x);
  const int n_out = p.widths[layer], n_in = p.widths[layer - 1];
  // the split's samples, Q per chunk (S Q <= 128 stacked rows)
  const int Q = kGradChunk / S;
  const int64_t per_split = (p.batch + gridDim.y - 1) / gridDim.y;
  const int64_t first = blockIdx.y * per_split;
  const int64_t last = first + per_split < p.batch ? first + per_split : p.batch;
  const int k_pad = pad16(S * Q);
  const float* a_l = args.adjoints + adjoint_offset(p, S, layer);
  const float* z_saved =
      layer > 1 ? static_cast<const float*>(p.saved_in) + saved_offset(p, S, layer - 1) : nullptr;
  for (int e = threadIdx.x; e < 2 * kGradBlock * ld; e += blockDim.x) A[e] = 0;  // k padding
  if (threadIdx.x < 2) amax[threadIdx.x] = 0;

  const int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  float acc[kGradBlock / 8][4] = {};
  for (int64_t b0 = first; b0 < last; b0 += Q) {
    __syncthreads();  // the previous chunk is no longer read; amax is reset
    // a^T and h^T of samples b0..b0+Q (zeros past `last` and past the layer's widths)
    float largest_a = 0, largest_h = 0;
    for (int e = threadIdx.x; e < Q * kGradBlock; e += blockDim.x) {
      const int q = e / kGradBlock, c = e % kGradBlock;
      const int64_t row = b0 + q;
      const bool in_rows = row < last;
      const int i = i0 + c;
      for (int s = 0; s < S; ++s) {
        const float v = in_rows && i < n_out ? a_l[(s * p.batch + row) * n_out + i] : 0.0f;
        A[c * ld + s * Q + q] = v;
        largest_a = fmaxf(largest_a, fabsf(v));
      }
      const int j = j0 + c;
      if (!in_rows || j >= n_in) {
        for (int s = 0; s < S; ++s) H[c * ld + s * Q + q] = 0.0f;
      } else {
        layer_inputs_at<scalar_t>(p, layer, z_saved, row, j, S, [&](int s, float v) {
          H[c * ld + s * Q + q] = v;
          largest_h = fmaxf(largest_h, fabsf(v));
        });
      }
    }
    note_max<scalar_t>(amax, largest_a);
    note_max<scalar_t>(amax + 1, largest_h);
    __syncthreads();
    const float scale_a = scale_from<scalar_t>(amax), scale_h = scale_from<scalar_t>(amax + 1);
    const float unscale = 1.0f / scale_a / scale_h;  // powers of two: exact
    // dW block (16 rows of this warp) += a^T h over the chunk's stacked rows
    float part[kGradBlock / 8][4] = {};
    for (int k0 = 0; k0 < k_pad; k0 += kMmaK<scalar_t>) {
      const FragmentA fa = load_a<scalar_t>(A + warp * 16 * ld, ld, k0, scale_a, split);
#pragma unroll
      for (int jt = 0; jt < kGradBlock / 8; ++jt) {
        if (j0 + jt * 8 >= n_in) break;
        const FragmentB fb = load_b<scalar_t>(H + jt * 8 * ld, ld, k0, scale_h, split);
        mma<scalar_t>(part[jt], fa, fb, split);
      }
    }
#pragma unroll
    for (int jt = 0; jt < kGradBlock / 8; ++jt)
      for (int v = 0; v < 4; ++v) acc[jt][v] += part[jt][v] * unscale;
    __syncthreads();  // every thread has read amax
    if (threadIdx.x < 2) amax[threadIdx.x] = 0;
  }

  // the block's dW and (first column block) db into this split's partial sums
  float* partial = args.grad_partials + blockIdx.y * args.plan.partial_size;
  float* dw = partial + weight_offset(p, layer - 1);
#pragma unroll
  for (int jt = 0; jt < kGradBlock / 8; ++jt)
    for (int v = 0; v < 4; ++v) {
      const int i = i0 + warp * 16 + g + 8 * (v / 2), j = j0 + jt * 8 + 2 * t + v % 2;
      if (i < n_out && j < n_in) dw[int64_t(i) * n_in + j] = acc[jt][v];
    }
  if (p.biases[0] != nullptr && j0 == 0)
    for (int c = threadIdx.x; c < kGradBlock && i0 + c < n_out; c += blockDim.x) {
      float sum = 0;
      for (int64_t row = first; row < last; ++row) sum += a_l[row * n_out + i0 + c];
      partial[bias_offset(p, layer - 1) + i0 + c] = sum;
    }
}

}  // namespace sobolev::cuda
