// The fully fused forward kernel (fused_common.cuh): values, K tangents (order 2: and K
// second-order tangents), saved z/tz/ttz and the projected loss in one launch, each tile of
// stacked rows carried through every layer on chip. Launched by fused_forward.cu; also
// compiled on the host by emulation/.
#pragma once

#include "cuda/fused_common.cuh"
#include "cuda/loss_sums.cuh"

namespace sobolev::cuda {

template <typename scalar_t, int ORDER, int WIDTH, bool HIGH_OCCUPANCY = false,
          bool STAGED_SPLIT = false>
__global__ void __launch_bounds__(
    FusedShape<scalar_t, WIDTH, HIGH_OCCUPANCY, STAGED_SPLIT>::kThreads,
    FusedShape<scalar_t, WIDTH, HIGH_OCCUPANCY, STAGED_SPLIT>::kMinBlocks)
    fused_forward_kernel(const __grid_constant__ FusedArgs args) {
  using Shape = FusedShape<scalar_t, WIDTH, HIGH_OCCUPANCY, STAGED_SPLIT>;
  constexpr int ld = Shape::kLead;
  constexpr bool second_order = ORDER == 2;
  const SobolevLaunch& p = args.p;
  const int K = p.num_directions, m = p.out_features, L = p.num_layers;
  const int S = 1 + ORDER * K, R = args.plan.rows;
  const bool split = !p.allow_tf32;  // fp32: 3xTF32 unless plain TF32 is allowed
  const float slope = static_cast<float>(p.negative_slope);
  const bool with_target = has_target(p), with_target2 = has_target2(p);
  extern __shared__ __align__(128) unsigned char smem[];
  float* X = reinterpret_cast<float*>(smem);  // the tile: (tile_rows, WIDTH), row s R + r
  auto* staged = reinterpret_cast<typename Shape::staged_type*>(X + Shape::kTileRows * ld);
  auto* amax = reinterpret_cast<unsigned*>(staged + Shape::kPanel * ld);  // fp16 scales
  const auto weights = [&](int l) { return static_cast<const scalar_t*>(p.weights[l - 1]); };
  // rows past S R (and columns past a layer) stay zero: 0 W = 0 keeps them so
  for (int e = threadIdx.x; e < Shape::kTileRows * ld; e += blockDim.x) X[e] = 0;
  if (threadIdx.x < 2) amax[threadIdx.x] = 0;
  double value_sq = 0, tangent_sq = 0, second_sq = 0;  // this thread's squared errors
  int step = 0;  // products so far; the fp16 scale of product `step` is in amax[step % 2]
  __syncthreads();

  for (int64_t tile = blockIdx.x; tile < args.plan.num_tiles; tile += gridDim.x) {
    const int64_t r0 = tile * R;
    const int valid = static_cast<int>(p.batch - r0 < R ? p.batch - r0 : R);
    note_max<scalar_t>(amax + step % 2, load_fused_input<scalar_t>(p, r0, R, valid, S, X, ld));
    stage_layer<false, Shape>(args, 1, weights(1), p.widths[1], p.widths[0], 0, staged);
    __syncthreads();
    for (int l = 1; l <= L; ++l) {
      const int n_in = p.widths[l - 1], n_out = p.widths[l];
      // z_l = h_{l-1} W_l^T,  tz_l = t_{l-1} W_l^T (, ttz_l = tt_{l-1} W_l^T): every stream
      // through the same staged weights (the bias is added below)
      const float scale = scale_from<scalar_t>(amax + step % 2);
      if (threadIdx.x == 0) amax[(step + 1) % 2] = 0;  // its last reader was product step - 1
      fused_product<Shape>(X, staged, pad16(n_in), pad16(n_out), scale, split, [&](int panel) {
        stage_layer<false, Shape>(args, l, weights(l), n_out, n_in, panel, staged);
      });
      ++step;
      __syncthreads();
      if (l == L) break;
      stage_layer<false, Shape>(args, l + 1, weights(l + 1), p.widths[l + 1], n_out, 0, staged);
      // h = s(z), t_k = s'(z) tz_k (, tt_k = s'(z) ttz_k + s''(z) tz_k^2) in place: the next
      // layer's input; z, tz (, ttz) saved for the backward. Padding stays zero.
      const auto* bias = static_cast<const scalar_t*>(p.biases[l - 1]);
      float* saved = p.saved == nullptr ? nullptr
                                        : static_cast<float*>(p.saved) + saved_offset(p, S, l);
      const int64_t next = p.batch * n_out;  // from one stream of `saved` to the next
      const int cols = pad16(n_out);
      float largest = 0;
      // SOBOLEV_CUDA_FORWARD_PASS=batched, 16-bit kernels: kPassBatch elements at a time,
      // their loads, then their math and stores, so that a warp has independent chains to
      // interleave (run 5's counters had the fp32 fused kernels, bf16's not reached, issuing
      // in 30-38% of their cycles at 12% occupancy, waiting on dependent instructions; bf16's
      // run at 25%). Not in fp32: its high-occupancy shapes sit at their 128-register cap,
      // and this path beside the loop below made them spill (on the loop's path too).
      int single_rows = R;  // the rows of the one-at-a-time loop below
      if constexpr (!std::is_same_v<scalar_t, float>) {
        if (p.fused_batched_forward_pass) {
          single_rows = 0;
          const int64_t first_at = r0 * n_out;  // the tile's first element of a stream of `saved`
          for (TileWalk walk(threadIdx.x, blockDim.x, cols); walk.i < R;) {
            int x_at[kPassBatch], at[kPassBatch];  // into X (stream s: s R ld on), into `saved`
            float z[kPassBatch], s1[kPassBatch], s2[kPassBatch];
            bool live[kPassBatch];
#pragma unroll
            for (int i = 0; i < kPassBatch; ++i) {
              const int r = walk.i, c = walk.j;
              walk.next();
              x_at[i] = r * ld + c;
              at[i] = r * n_out + c;
              live[i] = r < valid && c < n_out;  // (valid <= R)
              if (r < R && !live[i])  // padding rows and columns stay zero
                for (int s = 0; s < S; ++s) X[x_at[i] + s * R * ld] = 0.0f;
              z[i] = !live[i]          ? 0.0f
                     : bias == nullptr ? X[x_at[i]]
                                       : X[x_at[i]] + to_acc<float>(bias[c]);
            }
#pragma unroll
            for (int i = 0; i < kPassBatch; ++i) {
              if (!live[i]) continue;
              float a, s3;
              activation_at<float>(p.activation, slope, z[i], a, s1[i], s2[i], s3);
              X[x_at[i]] = a;
              largest = fmaxf(largest, fabsf(a));
              if (saved) saved[first_at + at[i]] = z[i];
            }
            for (int k = 1; k <= K; ++k) {
              float tz[kPassBatch], ttz[kPassBatch];
#pragma unroll
              for (int i = 0; i < kPassBatch; ++i) {
                tz[i] = live[i] ? X[x_at[i] + k * R * ld] : 0.0f;
                ttz[i] = second_order && live[i] ? X[x_at[i] + (K + k) * R * ld] : 0.0f;
              }
#pragma unroll
              for (int i = 0; i < kPassBatch; ++i) {
                if (!live[i]) continue;
                const float t = s1[i] * tz[i];
                X[x_at[i] + k * R * ld] = t;
                largest = fmaxf(largest, fabsf(t));
                if (saved) saved[k * next + first_at + at[i]] = tz[i];
                if constexpr (second_order) {
                  const float tt = fmaf(s1[i], ttz[i], s2[i] * tz[i] * tz[i]);
                  X[x_at[i] + (K + k) * R * ld] = tt;
                  largest = fmaxf(largest, fabsf(tt));
                  if (saved) saved[(K + k) * next + first_at + at[i]] = ttz[i];
                }
              }
            }
          }
        }
      }
      // one element after the other (none where the batched pass ran)
      for (TileWalk at(threadIdx.x, blockDim.x, cols); at.i < single_rows; at.next()) {
        const int r = at.i, c = at.j;
        float* x = X + r * ld + c;  // stream s at x[s R ld]
        if (r >= valid || c >= n_out) {
          for (int s = 0; s < S; ++s) x[s * R * ld] = 0.0f;
          continue;
        }
        const float z = bias == nullptr ? x[0] : x[0] + to_acc<float>(bias[c]);
        float a, s1, s2, s3;
        activation_at<float>(p.activation, slope, z, a, s1, s2, s3);
        x[0] = a;
        largest = fmaxf(largest, fabsf(a));
        float* z_saved = saved == nullptr ? nullptr : saved + (r0 + r) * n_out + c;
        if (z_saved) z_saved[0] = z;
        for (int k = 1; k <= K; ++k) {
          const float tz = x[k * R * ld], t = s1 * tz;
          x[k * R * ld] = t;
          largest = fmaxf(largest, fabsf(t));
          if (z_saved) z_saved[k * next] = tz;
          if constexpr (second_order) {
            const float ttz = x[(K + k) * R * ld], tt = fmaf(s1, ttz, s2 * tz * tz);
            x[(K + k) * R * ld] = tt;
            largest = fmaxf(largest, fabsf(tt));
            if (z_saved) z_saved[(K + k) * next] = ttz;
          }
        }
      }
      note_max<scalar_t>(amax + step % 2, largest);
      __syncthreads();
    }
    // the tile's rows are [f; u_1..u_K (; w_1..w_K)] (f without its bias): store them and add
    // up the squared errors
    const auto* bias = static_cast<const scalar_t*>(p.biases[L - 1]);
    auto* f = static_cast<scalar_t*>(p.f);
    auto* u = static_cast<scalar_t*>(p.u);
    auto* w = static_cast<scalar_t*>(p.w);
    const auto* y = static_cast<const float*>(p.y);
    for (int e = threadIdx.x; e < valid * m; e += blockDim.x) {
      const int r = e / m, j = e % m;
      const float fv = X[r * ld + j] + (bias == nullptr ? 0.0f : to_acc<float>(bias[j]));
      f[r0 * m + e] = from_acc<scalar_t>(fv);
      if (y != nullptr) {
        const double diff = double(fv) - double(y[r0 * m + e]);
        value_sq += diff * diff;
      }
    }
    for (int e = threadIdx.x; e < K * valid * m; e += blockDim.x) {
      const int k = e / (valid * m), r = e / m % valid, j = e % m;
      const int64_t row = r0 + r, idx = (row * K + k) * m + j;
      const float uk = X[((1 + k) * R + r) * ld + j];
      u[idx] = from_acc<scalar_t>(uk);
      if (with_target) {
        const double diff = double(uk) - double(projected_target<scalar_t, float>(p, row, k, j));
        tangent_sq += diff * diff;
      }
      if constexpr (second_order) {
        const float wk = X[((1 + K + k) * R + r) * ld + j];
        w[idx] = from_acc<scalar_t>(wk);
        if (with_target2) {
          const double diff =
              double(wk) - double(projected_target2<scalar_t, float>(p, row, k, j));
          second_sq += diff * diff;
        }
      }
    }
    __syncthreads();  // the next tile overwrites X
  }
  // the tile is free now: the block's sums go through it
  add_up_loss<float>(p, second_order ? kLossTerms : kLossTerms - 1,
                     {value_sq, tangent_sq, second_sq}, reinterpret_cast<double*>(smem),
                     args.loss_partials, args.counter);
}

}  // namespace sobolev::cuda
