// The fused forward kernel: values, K tangents, saved z/tz and the projected loss in one
// launch. Mirrors forward_block in cpu/mlp_block.cpp, tile by tile. Launched by
// sobolev_forward.cu; also compiled on the host by emulation/ to check its logic without a GPU.
#pragma once

#include "cuda/tile_gemm.cuh"
#include "cuda/tile_plan.cuh"

namespace sobolev::cuda {

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    sobolev_forward_kernel(const __grid_constant__ KernelArgs args) {
  using acc_t = acc_type<scalar_t>;
  const SobolevLaunch& p = args.p;
  const TilePlan& plan = args.plan;
  extern __shared__ __align__(16) unsigned char smem[];
  acc_t* stage = reinterpret_cast<acc_t*>(smem);
  acc_t* buffers = block_buffers(args, stage);
  const int64_t tile_size = int64_t(plan.streams) * plan.rows * plan.max_width;
  acc_t* in = buffers;             // (1 + K, R, n): the stacked input [h; t] of a layer
  acc_t* out = buffers + tile_size;  // (1 + K, R, n): its output [z; tz]
  const int K = p.num_directions, m = p.out_features, L = p.num_layers;
  const acc_t slope = static_cast<acc_t>(p.negative_slope);
  const bool with_target = has_target(p);
  double value_sq = 0, tangent_sq = 0;  // this thread's share of the squared errors

  for (int64_t tile = blockIdx.x; tile < plan.num_tiles; tile += gridDim.x) {
    const int64_t r0 = tile * plan.rows;
    const int R = tile_rows(plan, p.batch, r0);
    const int M = plan.streams * R;
    load_input<scalar_t>(p, r0, R, in);
    // z/tz of this tile: layer l at streams * R * (n_1 + .. + n_{l-1}) from r0 * streams * hidden
    acc_t* saved = p.saved == nullptr
                       ? nullptr
                       : static_cast<acc_t*>(p.saved) + r0 * plan.streams * plan.hidden_total;
    for (int l = 1; l <= L; ++l) {
      const int n_in = p.widths[l - 1], n_out = p.widths[l];
      const auto* bias = static_cast<const scalar_t*>(p.biases[l - 1]);
      // z_l = h_{l-1} W_l^T + b_l,  tz_l = t_{l-1} W_l^T: one product over the stacked rows
      tile_gemm_nt(M, n_out, n_in, in, n_in, static_cast<const scalar_t*>(p.weights[l - 1]),
                   stage, plan.stage_elems, [&](int row, int col, acc_t v) {
                     if (bias != nullptr && row < R) v += to_acc<acc_t>(bias[col]);
                     out[row * n_out + col] = v;
                   });
      if (l == L) break;
      // h = s(z), t_k = s'(z) tz_k: the next layer's input; z and tz saved for the backward
      const int n = R * n_out;
      for (int e = threadIdx.x; e < n; e += blockDim.x) {
        acc_t s, s1, s2;
        const acc_t z = out[e];
        activation_at<acc_t>(p.activation, slope, z, s, s1, s2);
        in[e] = s;
        if (saved) saved[e] = z;
        for (int k = 1; k <= K; ++k) {
          const acc_t tz = out[k * n + e];
          in[k * n + e] = s1 * tz;
          if (saved) saved[k * n + e] = tz;
        }
      }
      if (saved) saved += int64_t(plan.streams) * n;
      __syncthreads();
    }
    // out = [f; u_1..u_K]: store them and add up (f - y)^2 and (u - g)^2
    auto* f = static_cast<scalar_t*>(p.f);
    auto* u = static_cast<scalar_t*>(p.u);
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
      const int64_t row = r0 + r;
      const acc_t uk = out[R * m + e];
      u[(row * K + k) * m + j] = from_acc<scalar_t>(uk);
      if (with_target) {
        const double diff = double(uk) - double(projected_target<scalar_t, acc_t>(p, row, k, j));
        tangent_sq += diff * diff;
      }
    }
    __syncthreads();  // the next tile overwrites in/out
  }

  // Block sums in a fixed tree order, one (value, tangent) pair per block...
  double* red = reinterpret_cast<double*>(smem);  // the weight stage is free now
  red[threadIdx.x] = value_sq;
  red[blockDim.x + threadIdx.x] = tangent_sq;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      red[threadIdx.x] += red[threadIdx.x + half];
      red[blockDim.x + threadIdx.x] += red[blockDim.x + threadIdx.x + half];
    }
    __syncthreads();
  }
  // ...and the last block to finish adds the pairs in block order: the loss, deterministic.
  __shared__ bool is_last;
  if (threadIdx.x == 0) {
    args.loss_partials[2 * blockIdx.x] = red[0];
    args.loss_partials[2 * blockIdx.x + 1] = red[blockDim.x];
    __threadfence();
    is_last = atomicAdd(args.counter, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (is_last && threadIdx.x == 0) {
    __threadfence();
    const volatile double* partials = args.loss_partials;
    double value = 0, tangent = 0;
    for (unsigned b = 0; b < gridDim.x; ++b) {
      value += partials[2 * b];
      tangent += partials[2 * b + 1];
    }
    // L = alpha mean((f - y)^2) + beta mean((u - g)^2)
    const double B = double(p.batch), md = m, Kd = K;
    double loss = 0;
    if (p.y != nullptr) loss += p.alpha * value / (B * md);
    if (with_target) loss += p.beta * tangent / (B * Kd * md);
    *static_cast<acc_t*>(p.loss) = static_cast<acc_t>(loss);
  }
}

}  // namespace sobolev::cuda
