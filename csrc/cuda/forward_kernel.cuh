// The fused forward kernel: values, K tangents (and, for order 2, K second-order tangents),
// saved z/tz/ttz and the projected loss in one launch. Mirrors forward_block in
// cpu/mlp_block.cpp, tile by tile. Launched by sobolev_forward.cu; also compiled on the host
// by emulation/ to check its logic without a GPU.
#pragma once

#include "cuda/tile_gemm.cuh"
#include "cuda/tile_plan.cuh"

namespace sobolev::cuda {

// ORDER (1 or 2, = p.order) is a template parameter, so order 1 compiles to the first-order
// kernel alone: no registers or branches of the second-order streams. TF32: fp32 products on
// tensor cores (the variant kTiledTensorCores; only fp32 instantiates it).
template <typename scalar_t, int ORDER, bool TF32 = false>
__global__ void __launch_bounds__(kThreads)
    sobolev_forward_kernel(const __grid_constant__ KernelArgs args) {
  using acc_t = acc_type<scalar_t>;
  const SobolevLaunch& p = args.p;
  const TilePlan& plan = args.plan;
  extern __shared__ __align__(128) unsigned char smem[];  // 32-byte aligned for WMMA
  acc_t* buffers = block_buffers(args, reinterpret_cast<acc_t*>(smem));
  const int64_t tile_size = int64_t(plan.streams) * plan.rows * plan.max_width;
  acc_t* in = buffers;               // (S, R, n): the stacked input [h; t (; tt)] of a layer
  acc_t* out = buffers + tile_size;  // (S, R, n): its output [z; tz (; ttz)]
  const int K = p.num_directions, m = p.out_features, L = p.num_layers;
  constexpr bool second_order = ORDER == 2;
  const acc_t slope = static_cast<acc_t>(p.negative_slope);
  const bool with_target = has_target(p), with_target2 = has_target2(p);
  // this thread's share of the squared errors (f - y)^2, (u - g)^2, (w - g2)^2
  double value_sq = 0, tangent_sq = 0, second_sq = 0;

  for (int64_t tile = blockIdx.x; tile < plan.num_tiles; tile += gridDim.x) {
    const int64_t r0 = tile * plan.rows;
    const int R = tile_rows(plan, p.batch, r0);
    const int M = plan.streams * R;
    load_input<scalar_t>(p, r0, R, in);
    // z/tz/ttz of this tile's rows in layer l: (s B + r0 + r) n_l from saved_offset
    acc_t* saved = static_cast<acc_t*>(p.saved);
    for (int l = 1; l <= L; ++l) {
      const int n_in = p.widths[l - 1], n_out = p.widths[l];
      const auto* bias = static_cast<const scalar_t*>(p.biases[l - 1]);
      // ttz_1 = tt_0 W_1^T = 0 (the input moves linearly along v_k): layer 1 multiplies only
      // the (1 + K) R rows [x; v_k] and its ttz rows are zeros
      const int rows = second_order && l == 1 ? (1 + K) * R : M;
      if constexpr (second_order)
        for (int e = rows * n_out + threadIdx.x; e < M * n_out; e += blockDim.x)
          out[e] = acc_t(0);
      // z_l = h_{l-1} W_l^T + b_l,  tz_l = t_{l-1} W_l^T,  ttz_l = tt_{l-1} W_l^T: one product
      // over the stacked rows (it ends with a barrier, so the zeros above are visible too)
      tile_gemm_weights<WeightProduct::kTransposed, TF32>(
          rows, n_out, n_in, in, n_in, static_cast<const scalar_t*>(p.weights[l - 1]), smem, plan,
          [&](int row, int col, acc_t v) {
            if (bias != nullptr && row < R) v += to_acc<acc_t>(bias[col]);
            out[row * n_out + col] = v;
          });
      if (l == L) break;
      // h = s(z), t_k = s'(z) tz_k (, tt_k = s'(z) ttz_k + s''(z) tz_k^2): the next layer's
      // input; z, tz (, ttz) saved for the backward
      const int n = R * n_out;
      acc_t* z_saved = saved == nullptr ? nullptr
                                        : saved + saved_offset(p, plan.streams, l) + r0 * n_out;
      const int64_t next_stream = int64_t(p.batch) * n_out;  // of z_saved
      for (int e = threadIdx.x; e < n; e += blockDim.x) {
        acc_t s, s1, s2, s3;
        const acc_t z = out[e];
        activation_at<acc_t>(p.activation, slope, z, s, s1, s2, s3);
        in[e] = s;
        if (z_saved) z_saved[e] = z;
        for (int k = 1; k <= K; ++k) {
          const acc_t tz = out[k * n + e];
          in[k * n + e] = s1 * tz;
          if (z_saved) z_saved[k * next_stream + e] = tz;
          if (!second_order) continue;
          const acc_t ttz = out[(K + k) * n + e];
          in[(K + k) * n + e] = fma(s1, ttz, s2 * tz * tz);
          if (z_saved) z_saved[(K + k) * next_stream + e] = ttz;
        }
      }
      __syncthreads();
    }
    // out = [f; u_1..u_K (; w_1..w_K)]: store them and add up the squared errors
    auto* f = static_cast<scalar_t*>(p.f);
    auto* u = static_cast<scalar_t*>(p.u);
    auto* w = static_cast<scalar_t*>(p.w);
    const auto* y = static_cast<const acc_t*>(p.y);
    for (int e = threadIdx.x; e < R * m; e += blockDim.x) {
      const int64_t idx = r0 * m + e;
      f[idx] = from_acc<scalar_t>(out[e]);
      if (y != nullptr) {
        const double diff = double(out[e]) - double(y[idx]);
        value_sq += diff * diff;
      }
    }
    for (int e = threadIdx.x; e < K * R * m; e += blockDim.x) {
      const int k = e / (R * m), r = (e / m) % R, j = e % m;
      const int64_t row = r0 + r, idx = (row * K + k) * m + j;
      const acc_t uk = out[R * m + e];
      u[idx] = from_acc<scalar_t>(uk);
      if (with_target) {
        const double diff = double(uk) - double(projected_target<scalar_t, acc_t>(p, row, k, j));
        tangent_sq += diff * diff;
      }
      if (!second_order) continue;
      const acc_t wk = out[(1 + K) * R * m + e];
      w[idx] = from_acc<scalar_t>(wk);
      if (with_target2) {
        const double diff = double(wk) - double(projected_target2<scalar_t, acc_t>(p, row, k, j));
        second_sq += diff * diff;
      }
    }
    __syncthreads();  // the next tile overwrites in/out
  }

  // Block sums in a fixed tree order, one per loss term (order 1 has no (w - g2)^2)...
  constexpr int terms = second_order ? kLossTerms : kLossTerms - 1;
  const double sums[kLossTerms] = {value_sq, tangent_sq, second_sq};
  double* red = reinterpret_cast<double*>(smem);  // the weight stage is free now
  for (int t = 0; t < terms; ++t) red[t * blockDim.x + threadIdx.x] = sums[t];
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half)
      for (int t = 0; t < terms; ++t)
        red[t * blockDim.x + threadIdx.x] += red[t * blockDim.x + threadIdx.x + half];
    __syncthreads();
  }
  // ...and the last block to finish adds them in block order: the loss, deterministic.
  __shared__ bool is_last;
  if (threadIdx.x == 0) {
    for (int t = 0; t < terms; ++t)
      args.loss_partials[kLossTerms * blockIdx.x + t] = red[t * blockDim.x];
    __threadfence();
    is_last = atomicAdd(args.counter, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (is_last && threadIdx.x == 0) {
    __threadfence();
    const volatile double* partials = args.loss_partials;
    double total[kLossTerms] = {};
    for (unsigned b = 0; b < gridDim.x; ++b)
      for (int t = 0; t < terms; ++t) total[t] += partials[kLossTerms * b + t];
    // L = alpha mean((f - y)^2) + beta mean((u - g)^2) [+ gamma mean((w - g2)^2)]
    const double B = double(p.batch), md = m, Kd = K;
    double loss = 0;
    if (p.y != nullptr) loss += p.alpha * total[0] / (B * md);
    if (with_target) loss += p.beta * total[1] / (B * Kd * md);
    if (with_target2) loss += p.gamma * total[2] / (B * Kd * md);
    *static_cast<acc_t*>(p.loss) = static_cast<acc_t>(loss);
  }
}

}  // namespace sobolev::cuda
