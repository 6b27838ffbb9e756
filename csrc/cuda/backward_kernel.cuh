// The fused backward kernels: the adjoint recursion of DESIGN section 2 (and of order 2,
// docs/math.md) per tile, mirroring backward_block in cpu/mlp_block.cpp, each block adding its
// weight gradients into its own partial sums, and the kernel that adds the partials in block
// order (deterministic). Launched by sobolev_backward.cu; also compiled on the host by
// emulation/.
#pragma once

#include "cuda/tile_gemm.cuh"
#include "cuda/tile_plan.cuh"

namespace sobolev::cuda {

// One block's partial sums: dW_1..dW_L, then db_1..db_L. Offsets are recomputed by loops
// rather than kept in per-thread arrays (which would live in local memory).
SK_HD int64_t weight_offset(const SobolevLaunch& p, int layer) {  // layer 0-based
  int64_t offset = 0;
  for (int l = 0; l < layer; ++l) offset += int64_t(p.widths[l + 1]) * p.widths[l];
  return offset;
}

SK_HD int64_t bias_offset(const SobolevLaunch& p, int layer) {
  int64_t offset = weight_offset(p, p.num_layers);
  for (int l = 0; l < layer; ++l) offset += p.widths[l + 1];
  return offset;
}

SK_HD int64_t partial_size(const SobolevLaunch& p) {
  return p.biases[0] != nullptr ? bias_offset(p, p.num_layers) : weight_offset(p, p.num_layers);
}

// ORDER (1 or 2, = p.order) and TF32: template parameters, as for the forward kernel. The launcher
// puts at most kBackwardBlocksPerSM blocks on an SM (each keeps its own partial gradients), so
// ptxas may give each thread that share of the registers: without the bound it kept to 64 and
// spilled (44 bytes, bf16 on sm_90); with it, 90-122 registers and no spills.
template <typename scalar_t, int ORDER, bool TF32 = false>
__global__ void __launch_bounds__(kThreads, kBackwardBlocksPerSM)
    sobolev_backward_kernel(const __grid_constant__ KernelArgs args) {
  using acc_t = acc_type<scalar_t>;
  const SobolevLaunch& p = args.p;
  const TilePlan& plan = args.plan;
  extern __shared__ __align__(128) unsigned char smem[];  // 32-byte aligned for WMMA
  acc_t* buffers = block_buffers(args, reinterpret_cast<acc_t*>(smem));
  const int64_t tile_size = int64_t(plan.streams) * plan.rows * plan.max_width;
  const int64_t row_size = int64_t(plan.rows) * plan.max_width;
  acc_t* a = buffers;                   // [a_z; a_tz (; a_ttz)] of the current layer's output
  acc_t* a_in = buffers + tile_size;    // [a_h; a_t (; a_tt)] of its input
  acc_t* h = buffers + 2 * tile_size;   // the layer's input [h; t (; tt)], recomputed
  acc_t* s1 = buffers + 3 * tile_size;  // s'(z), (R, n)
  acc_t* s2 = s1 + row_size;            // s''(z)
  acc_t* s3 = s2 + row_size;            // s'''(z), order 2 only
  const int K = p.num_directions, m = p.out_features, d = p.in_features, L = p.num_layers;
  constexpr bool second_order = ORDER == 2;
  const acc_t slope = static_cast<acc_t>(p.negative_slope);
  const bool smooth = is_smooth(p.activation);
  const bool need_params = p.grad_weights[0] != nullptr;
  const bool with_bias = p.biases[0] != nullptr;
  acc_t* partial = static_cast<acc_t*>(args.grad_partials) + blockIdx.x * args.partial_size;
  for (int64_t e = threadIdx.x; need_params && e < args.partial_size; e += blockDim.x)
    partial[e] = acc_t(0);

  // seeds: a_f = value_scale (f - y) + grad_f,  a_u = tangent_scale (u - g) + grad_u,
  //        a_w = second_scale (w - g2) + grad_w (order 2)
  const acc_t upstream =
      p.grad_loss == nullptr ? acc_t(0) : *static_cast<const acc_t*>(p.grad_loss);
  const acc_t value_scale = upstream * acc_t(2 * p.alpha / (double(p.batch) * m));
  const acc_t tangent_scale = upstream * acc_t(2 * p.beta / (double(p.batch) * K * m));
  const acc_t second_scale = upstream * acc_t(2 * p.gamma / (double(p.batch) * K * m));
  const auto* f = static_cast<const scalar_t*>(p.f_in);
  const auto* u = static_cast<const scalar_t*>(p.u_in);
  const auto* w = static_cast<const scalar_t*>(p.w_in);
  const auto* y = static_cast<const acc_t*>(p.y);
  const auto* grad_f = static_cast<const scalar_t*>(p.grad_f);
  const auto* grad_u = static_cast<const scalar_t*>(p.grad_u);
  const auto* grad_w = static_cast<const scalar_t*>(p.grad_w);
  __syncthreads();

  for (int64_t tile = blockIdx.x; tile < plan.num_tiles; tile += gridDim.x) {
    const int64_t r0 = tile * plan.rows;
    const int R = tile_rows(plan, p.batch, r0);
    const int M = plan.streams * R;
    for (int e = threadIdx.x; e < R * m; e += blockDim.x) {
      const int64_t idx = r0 * m + e;
      acc_t seed = 0;
      if (y != nullptr) seed = value_scale * (to_acc<acc_t>(f[idx]) - y[idx]);
      if (grad_f != nullptr) seed += to_acc<acc_t>(grad_f[idx]);
      a[e] = seed;
    }
    for (int e = threadIdx.x; e < K * R * m; e += blockDim.x) {
      const int k = e / (R * m), r = (e / m) % R, j = e % m;
      const int64_t idx = ((r0 + r) * K + k) * m + j;
      acc_t seed = 0;
      if (has_target(p))
        seed = tangent_scale * (to_acc<acc_t>(u[idx]) -
                                projected_target<scalar_t, acc_t>(p, r0 + r, k, j));
      if (grad_u != nullptr) seed += to_acc<acc_t>(grad_u[idx]);
      a[R * m + e] = seed;
      if (!second_order) continue;
      acc_t seed2 = 0;
      if (has_target2(p))
        seed2 = second_scale * (to_acc<acc_t>(w[idx]) -
                                projected_target2<scalar_t, acc_t>(p, r0 + r, k, j));
      if (grad_w != nullptr) seed2 += to_acc<acc_t>(grad_w[idx]);
      a[(1 + K) * R * m + e] = seed2;
    }
    __syncthreads();

    for (int l = L; l >= 2; --l) {
      const int n_in = p.widths[l - 1], n_out = p.widths[l];
      const int n = R * n_in;
      // this tile's z_{l-1}; tz_{l-1, k} at z + k B n_in; ttz_{l-1, k} at z + (K + k) B n_in
      const acc_t* z = static_cast<const acc_t*>(p.saved_in) +
                       saved_offset(p, plan.streams, l - 1) + r0 * n_in;
      const int64_t next = int64_t(p.batch) * n_in;
      // recompute the layer's input [h; t (; tt)] = [s(z); s'(z) tz_k (; s'(z) ttz_k +
      // s''(z) tz_k^2)], keep s', s'' (and s''')
      for (int e = threadIdx.x; e < n; e += blockDim.x) {
        acc_t s, d1, d2, d3;
        activation_at<acc_t>(p.activation, slope, z[e], s, d1, d2, d3);
        h[e] = s;
        s1[e] = d1;
        s2[e] = d2;
        if (second_order) s3[e] = d3;
        for (int k = 1; k <= K; ++k) {
          const acc_t tz = z[k * next + e];
          h[k * n + e] = d1 * tz;
          if (second_order) h[(K + k) * n + e] = fma(d1, z[(K + k) * next + e], d2 * tz * tz);
        }
      }
      __syncthreads();
      if (need_params) {
        // dW_l += a_z^T h_{l-1} + sum_k (a_tz_k^T t_{l-1,k} + a_ttz_k^T tt_{l-1,k}): one
        // product over the stacked rows
        acc_t* dw = partial + weight_offset(p, l - 1);
        tile_gemm_tn<scalar_t, TF32>(n_out, n_in, M, a, n_out, h, n_in, smem, plan,
                               [&](int i, int j, acc_t v) { dw[i * n_in + j] += v; });
        // db_l += sum over rows of a_z
        for (int j = threadIdx.x; with_bias && j < n_out; j += blockDim.x) {
          acc_t sum = 0;
          for (int r = 0; r < R; ++r) sum += a[r * n_out + j];
          partial[bias_offset(p, l - 1) + j] += sum;
        }
      }
      // [a_h; a_t_k (; a_tt_k)] = [a_z; a_tz_k (; a_ttz_k)] W_l
      tile_gemm_weights<WeightProduct::kPlain, TF32>(
          M, n_in, n_out, a, n_out, static_cast<const scalar_t*>(p.weights[l - 1]), smem, plan,
          [&](int row, int col, acc_t v) { a_in[row * n_in + col] = v; });
      for (int e = threadIdx.x; e < n; e += blockDim.x) {
        acc_t coupling = 0;
        if constexpr (!second_order) {
          // a_z = a_h s'(z) + s''(z) sum_k a_t_k tz_k,  a_tz_k = a_t_k s'(z)
          for (int k = 1; smooth && k <= K; ++k)
            coupling = fma(a_in[k * n + e], z[k * next + e], coupling);
          a_in[e] = a_in[e] * s1[e] + s2[e] * coupling;
          for (int k = 1; k <= K; ++k) a_in[k * n + e] *= s1[e];
        } else {
          // a_z    = a_h s' + s'' sum_k (a_t_k tz_k + a_tt_k ttz_k) + s''' sum_k a_tt_k tz_k^2
          // a_tz_k = a_t_k s' + 2 s'' a_tt_k tz_k,   a_ttz_k = a_tt_k s'
          for (int k = 1; k <= K; ++k) {
            const acc_t at = a_in[k * n + e], att = a_in[(K + k) * n + e], tz = z[k * next + e];
            if (smooth) {
              coupling +=
                  s2[e] * fma(at, tz, att * z[(K + k) * next + e]) + s3[e] * att * tz * tz;
              a_in[k * n + e] = fma(at, s1[e], acc_t(2) * s2[e] * att * tz);
            } else {
              a_in[k * n + e] = at * s1[e];
            }
            a_in[(K + k) * n + e] = att * s1[e];
          }
          a_in[e] = fma(a_in[e], s1[e], coupling);
        }
      }
      __syncthreads();
      acc_t* swap = a;
      a = a_in;
      a_in = swap;
    }

    // layer 1: its input is [x; v_k] (and tt_0 = 0: the a_ttz_k rows add nothing to dW_1)
    const int n_1 = p.widths[1];
    load_input<scalar_t>(p, r0, R, h);
    __syncthreads();
    if (need_params) {
      // dW_1 += a_z^T x + sum_k a_tz_k^T v_k,  db_1 += sum over rows of a_z
      acc_t* dw = partial + weight_offset(p, 0);
      tile_gemm_tn<scalar_t, TF32>(n_1, d, (1 + K) * R, a, n_1, h, d, smem, plan,
                             [&](int i, int j, acc_t v) { dw[i * d + j] += v; });
      for (int j = threadIdx.x; with_bias && j < n_1; j += blockDim.x) {
        acc_t sum = 0;
        for (int r = 0; r < R; ++r) sum += a[r * n_1 + j];
        partial[bias_offset(p, 0) + j] += sum;
      }
    }
    // dL/dx = a_z W_1 (the directions get no gradient)
    if (p.grad_x != nullptr) {
      auto* grad_x = static_cast<scalar_t*>(p.grad_x);
      tile_gemm_weights<WeightProduct::kPlain, TF32>(
          R, d, n_1, a, n_1, static_cast<const scalar_t*>(p.weights[0]), smem, plan,
          [&](int row, int col, acc_t v) { grad_x[(r0 + row) * d + col] = from_acc<scalar_t>(v); });
    }
    __syncthreads();  // the next tile overwrites the buffers
  }
}

// dW and db: the blocks' partial sums added in block order.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    sum_partials_kernel(const __grid_constant__ KernelArgs args) {
  using acc_t = acc_type<scalar_t>;
  const SobolevLaunch& p = args.p;
  const auto* partials = static_cast<const acc_t*>(args.grad_partials);
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < args.partial_size;
       e += int64_t(gridDim.x) * blockDim.x) {
    acc_t sum = 0;
    for (int b = 0; b < args.plan.grid; ++b) sum += partials[b * args.partial_size + e];
    // which parameter e belongs to: walk the regions (weights, then biases) in order
    scalar_t* dst = nullptr;
    int64_t start = 0;
    for (int l = 0; l < p.num_layers; ++l) {
      const int64_t size = int64_t(p.widths[l + 1]) * p.widths[l];
      if (e >= start && e < start + size) dst = static_cast<scalar_t*>(p.grad_weights[l]);
      if (dst != nullptr) break;
      start += size;
    }
    for (int l = 0; dst == nullptr && l < p.num_layers; ++l) {
      const int64_t size = p.widths[l + 1];
      if (e >= start && e < start + size) dst = static_cast<scalar_t*>(p.grad_biases[l]);
      if (dst != nullptr) break;
      start += size;
    }
    dst[e - start] = from_acc<scalar_t>(sum);
  }
}

}  // namespace sobolev::cuda
