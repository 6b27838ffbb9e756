// The fully fused backward kernel (fused_common.cuh): the adjoint recursion of DESIGN section 2
// (order 2: docs/math.md) per tile, mirroring the forward: each layer's input adjoints
// [a_h; a_t (; a_tt)] = [a_z; a_tz (; a_ttz)] W_l on tensor cores through the staged weights,
// then through the activation in place. It stores every layer's output adjoints, from which
// fused_weight_grads.cuh forms dW and db in one product per layer over all stacked rows (or
// the binding's GEMMs; with FusedPlan::operands_in_backward this kernel also stores those
// GEMMs' other operands, the layer inputs, and the bias sums' partials).
// Launched by fused_backward.cu; also compiled on the host by emulation/.
#pragma once

#include "cuda/fused_common.cuh"

namespace sobolev::cuda {

// One adjoint of a layer's stack, where the weight-gradient products read it: fp32 (acc), or
// the GEMMs' 16-bit operand (op); each null where not stored.
template <typename op_t>
__device__ __forceinline__ void store_adjoint(float* acc, op_t* op, int64_t at, float v) {
  if (acc != nullptr) acc[at] = v;
  if (op != nullptr) op[at] = from_acc<op_t>(v);
}

// operands_in_backward: this tile's column sums of a layer's value-row adjoints (the first
// `valid` rows of X, n columns) into the block's bias partials `out` (its first tile sets them):
// a column per thread, rows in order, the tiles in the block's order (deterministic).
__device__ __forceinline__ void add_bias_partials(const float* X, int ld, int valid, int n,
                                                  float* out, bool first) {
  for (int c = threadIdx.x; c < n; c += blockDim.x) {
    float sum = 0;
    for (int r = 0; r < valid; ++r) sum += X[r * ld + c];
    out[c] = first ? sum : out[c] + sum;
  }
}

template <typename scalar_t, int ORDER, int WIDTH, bool HIGH_OCCUPANCY = false,
          bool STAGED_SPLIT = false>
__global__ void __launch_bounds__(
    FusedShape<scalar_t, WIDTH, HIGH_OCCUPANCY, STAGED_SPLIT>::kThreads,
    FusedShape<scalar_t, WIDTH, HIGH_OCCUPANCY, STAGED_SPLIT>::kMinBlocks)
    fused_backward_kernel(const __grid_constant__ FusedArgs args) {
  using Shape = FusedShape<scalar_t, WIDTH, HIGH_OCCUPANCY, STAGED_SPLIT>;
  constexpr int ld = Shape::kLead;
  constexpr bool second_order = ORDER == 2;
  const SobolevLaunch& p = args.p;
  const int K = p.num_directions, m = p.out_features, d = p.in_features, L = p.num_layers;
  const int S = 1 + ORDER * K, R = args.plan.rows;
  const bool split = !p.allow_tf32;
  const float slope = static_cast<float>(p.negative_slope);
  const bool smooth = is_smooth(p.activation);
  using op_t = gemm_operand_t<scalar_t>;
  const bool params = p.grad_weights[0] != nullptr;
  float* adjoints = params ? args.adjoints : nullptr;
  auto* operand_adjoints = params ? static_cast<op_t*>(args.operand_adjoints) : nullptr;
  auto* layer_inputs = params ? static_cast<op_t*>(args.layer_inputs) : nullptr;
  float* bias_partials =
      params && args.bias_partials != nullptr
          ? args.bias_partials + int64_t(blockIdx.x) * output_columns_before(p, L + 1)
          : nullptr;
  extern __shared__ __align__(128) unsigned char smem[];
  float* X = reinterpret_cast<float*>(smem);  // the tile: (tile_rows, WIDTH), row s R + r
  auto* staged = reinterpret_cast<typename Shape::staged_type*>(X + Shape::kTileRows * ld);
  auto* amax = reinterpret_cast<unsigned*>(staged + Shape::kPanel * ld);  // fp16 scales
  const auto weights = [&](int l) { return static_cast<const scalar_t*>(p.weights[l - 1]); };
  for (int e = threadIdx.x; e < Shape::kTileRows * ld; e += blockDim.x) X[e] = 0;
  if (threadIdx.x < 2) amax[threadIdx.x] = 0;
  int step = 0;  // products so far; the fp16 scale of product `step` is in amax[step % 2]

  // seeds: a_f = value_scale (f - y) + grad_f,  a_u = tangent_scale (u - g) + grad_u,
  //        a_w = second_scale (w - g2) + grad_w (order 2)
  const float upstream = p.grad_loss == nullptr ? 0.0f : *static_cast<const float*>(p.grad_loss);
  const float value_scale = upstream * float(2 * p.alpha / (double(p.batch) * m));
  const float tangent_scale = upstream * float(2 * p.beta / (double(p.batch) * K * m));
  const float second_scale = upstream * float(2 * p.gamma / (double(p.batch) * K * m));
  const auto* f = static_cast<const scalar_t*>(p.f_in);
  const auto* u = static_cast<const scalar_t*>(p.u_in);
  const auto* w = static_cast<const scalar_t*>(p.w_in);
  const auto* y = static_cast<const float*>(p.y);
  const auto* grad_f = static_cast<const scalar_t*>(p.grad_f);
  const auto* grad_u = static_cast<const scalar_t*>(p.grad_u);
  const auto* grad_w = static_cast<const scalar_t*>(p.grad_w);
  __syncthreads();

  for (int64_t tile = blockIdx.x; tile < args.plan.num_tiles; tile += gridDim.x) {
    const int64_t r0 = tile * R;
    const int valid = static_cast<int>(p.batch - r0 < R ? p.batch - r0 : R);
    const bool first_tile = tile == blockIdx.x;
    {
      float* a_out = adjoints == nullptr ? nullptr : adjoints + adjoint_offset(p, S, L);
      op_t* a_op = operand_adjoints == nullptr ? nullptr
                                               : operand_adjoints + adjoint_offset(p, S, L);
      const int cols = pad16(m);
      float largest = 0;
      for (TileWalk at(threadIdx.x, blockDim.x, cols); at.i < R; at.next()) {
        const int r = at.i, j = at.j;
        float* x = X + r * ld + j;
        if (r >= valid || j >= m) {
          for (int s = 0; s < S; ++s) x[s * R * ld] = 0.0f;
          continue;
        }
        const int64_t row = r0 + r;
        float seed = 0;
        if (y != nullptr) seed = value_scale * (to_acc<float>(f[row * m + j]) - y[row * m + j]);
        if (grad_f != nullptr) seed += to_acc<float>(grad_f[row * m + j]);
        x[0] = seed;
        largest = fmaxf(largest, fabsf(seed));
        store_adjoint(a_out, a_op, row * m + j, seed);
        for (int k = 0; k < K; ++k) {
          const int64_t idx = (row * K + k) * m + j;
          float a_u = 0;
          if (has_target(p))
            a_u = tangent_scale *
                  (to_acc<float>(u[idx]) - projected_target<scalar_t, float>(p, row, k, j));
          if (grad_u != nullptr) a_u += to_acc<float>(grad_u[idx]);
          x[(1 + k) * R * ld] = a_u;
          largest = fmaxf(largest, fabsf(a_u));
          store_adjoint(a_out, a_op, ((1 + k) * p.batch + row) * m + j, a_u);
          if constexpr (second_order) {
            float a_w = 0;
            if (has_target2(p))
              a_w = second_scale *
                    (to_acc<float>(w[idx]) - projected_target2<scalar_t, float>(p, row, k, j));
            if (grad_w != nullptr) a_w += to_acc<float>(grad_w[idx]);
            x[(1 + K + k) * R * ld] = a_w;
            largest = fmaxf(largest, fabsf(a_w));
            store_adjoint(a_out, a_op, ((1 + K + k) * p.batch + row) * m + j, a_w);
          }
        }
      }
      note_max<scalar_t>(amax + step % 2, largest);
    }
    stage_layer<true, Shape>(args, L, weights(L), m, p.widths[L - 1], 0, staged);
    __syncthreads();
    if (bias_partials != nullptr) {
      add_bias_partials(X, ld, valid, m, bias_partials + output_columns_before(p, L), first_tile);
      __syncthreads();  // the product overwrites X in place
    }

    for (int l = L; l >= 1; --l) {
      // layer 1's input adjoint is dL/dx, only when asked for (the directions get none)
      if (l == 1 && p.grad_x == nullptr) break;
      const int n_in = p.widths[l - 1], n_out = p.widths[l];
      // [a_h; a_t_k (; a_tt_k)] = [a_z; a_tz_k (; a_ttz_k)] W_l in place
      const float scale = scale_from<scalar_t>(amax + step % 2);
      if (threadIdx.x == 0) amax[(step + 1) % 2] = 0;  // its last reader was product step - 1
      fused_product<Shape>(X, staged, pad16(n_out), pad16(n_in), scale, split, [&](int panel) {
        stage_layer<true, Shape>(args, l, weights(l), n_out, n_in, panel, staged);
      });
      ++step;
      __syncthreads();
      if (l == 1) {  // dL/dx = a_h of the value rows
        auto* grad_x = static_cast<scalar_t*>(p.grad_x);
        for (int e = threadIdx.x; e < valid * d; e += blockDim.x)
          grad_x[r0 * d + e] = from_acc<scalar_t>(X[e / d * ld + e % d]);
        break;
      }
      if (l > 2 || p.grad_x != nullptr)  // layer 1's product only makes dL/dx
        stage_layer<true, Shape>(args, l - 1, weights(l - 1), n_in, p.widths[l - 2], 0, staged);
      // through the activation of layer l - 1 (z = z_{l-1}, from the forward):
      //   a_z = a_h s'(z) + s''(z) sum_k a_t_k tz_k,  a_tz_k = a_t_k s'(z)
      // order 2:
      //   a_z    = a_h s' + s'' sum_k (a_t_k tz_k + a_tt_k ttz_k) + s''' sum_k a_tt_k tz_k^2
      //   a_tz_k = a_t_k s' + 2 s'' a_tt_k tz_k,   a_ttz_k = a_tt_k s'
      const float* z_saved = static_cast<const float*>(p.saved_in) + saved_offset(p, S, l - 1);
      float* a_out = adjoints == nullptr ? nullptr : adjoints + adjoint_offset(p, S, l - 1);
      op_t* a_op = operand_adjoints == nullptr
                       ? nullptr
                       : operand_adjoints + adjoint_offset(p, S, l - 1);
      // operands_in_backward: layer l's GEMM input S_{l-1} = [s(z); s'(z) tz_k (; s'(z) ttz_k +
      // s''(z) tz_k^2)], as layer_inputs_at forms it, from the z/tz(/ttz) read here
      op_t* in_out = layer_inputs == nullptr ? nullptr : layer_inputs + saved_offset(p, S, l - 1);
      const int64_t next = p.batch * n_in;  // from one stream of z_saved (or a_out) to the next
      const int cols = pad16(n_in);
      float largest = 0;
      // kPassBatch elements at a time, their loads of z, then of each tz_k (and ttz_k), issued
      // together: one at a time, each was an L2 round trip the block waited for
      for (TileWalk walk(threadIdx.x, blockDim.x, cols); walk.i < R;) {
        int64_t at[kPassBatch];
        float* x[kPassBatch];
        float z[kPassBatch], h[kPassBatch], s1[kPassBatch], s2[kPassBatch], s3[kPassBatch],
            coupling[kPassBatch];
        bool live[kPassBatch];
#pragma unroll
        for (int i = 0; i < kPassBatch; ++i) {
          const int r = walk.i, c = walk.j;  // (the batch's i-th element)
          walk.next();
          x[i] = X + r * ld + c;
          live[i] = r < valid && c < n_in;  // (valid <= R)
          at[i] = (r0 + r) * n_in + c;
          if (r < R && !live[i])  // padding rows and columns stay zero
            for (int s = 0; s < S; ++s) x[i][s * R * ld] = 0.0f;
          z[i] = live[i] ? z_saved[at[i]] : 0.0f;
          coupling[i] = 0;
        }
#pragma unroll
        for (int i = 0; i < kPassBatch; ++i) {
          activation_at<float>(p.activation, slope, z[i], h[i], s1[i], s2[i], s3[i]);
          if (in_out != nullptr && live[i]) in_out[at[i]] = from_acc<op_t>(h[i]);
        }
        for (int k = 1; k <= K; ++k) {
          float tz[kPassBatch], ttz[kPassBatch];
#pragma unroll
          for (int i = 0; i < kPassBatch; ++i) {
            tz[i] = live[i] ? z_saved[k * next + at[i]] : 0.0f;
            // (without s'', every ttz is 0: tt_0 = 0 and tt = s' ttz, also for the inputs)
            ttz[i] = second_order && smooth && live[i] ? z_saved[(K + k) * next + at[i]] : 0.0f;
          }
#pragma unroll
          for (int i = 0; i < kPassBatch; ++i) {
            if (!live[i]) continue;
            if (in_out != nullptr) {
              in_out[k * next + at[i]] = from_acc<op_t>(s1[i] * tz[i]);
              if constexpr (second_order)
                in_out[(K + k) * next + at[i]] =
                    from_acc<op_t>(fmaf(s1[i], ttz[i], s2[i] * tz[i] * tz[i]));
            }
            const float a_t = x[i][k * R * ld];
            float a_tz = a_t * s1[i];
            if constexpr (second_order) {
              const float a_tt = x[i][(K + k) * R * ld];
              if (smooth) {
                coupling[i] += s2[i] * fmaf(a_t, tz[i], a_tt * ttz[i]) +
                               s3[i] * a_tt * tz[i] * tz[i];
                a_tz = fmaf(a_t, s1[i], 2.0f * s2[i] * a_tt * tz[i]);
              }
              const float a_ttz = a_tt * s1[i];
              x[i][(K + k) * R * ld] = a_ttz;
              largest = fmaxf(largest, fabsf(a_ttz));
              store_adjoint(a_out, a_op, (K + k) * next + at[i], a_ttz);
            } else if (smooth) {
              coupling[i] = fmaf(a_t, tz[i], coupling[i]);
            }
            x[i][k * R * ld] = a_tz;
            largest = fmaxf(largest, fabsf(a_tz));
            store_adjoint(a_out, a_op, k * next + at[i], a_tz);
          }
        }
#pragma unroll
        for (int i = 0; i < kPassBatch; ++i) {
          if (!live[i]) continue;
          const float a_z = second_order ? fmaf(x[i][0], s1[i], coupling[i])
                                         : fmaf(x[i][0], s1[i], s2[i] * coupling[i]);
          x[i][0] = a_z;
          largest = fmaxf(largest, fabsf(a_z));
          store_adjoint(a_out, a_op, at[i], a_z);
        }
      }
      note_max<scalar_t>(amax + step % 2, largest);
      __syncthreads();
      if (bias_partials != nullptr) {
        add_bias_partials(X, ld, valid, n_in, bias_partials + output_columns_before(p, l - 1),
                          first_tile);
        __syncthreads();  // the next product overwrites X in place
      }
    }
    __syncthreads();  // the next tile overwrites X
  }
}

}  // namespace sobolev::cuda
