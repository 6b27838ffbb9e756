#include "cpu/mlp_block.h"

#include <algorithm>
#include <utility>

#include "activations.h"
#include "cpu/block_ops.h"
#include "cpu/gemm.h"

namespace sobolev::cpu {

template <typename T>
int64_t MlpView<T>::max_width() const {
  return *std::max_element(widths.begin(), widths.end());
}

template <typename T>
int64_t MlpView<T>::hidden_total() const {
  int64_t total = 0;
  for (int64_t l = 1; l + 1 < static_cast<int64_t>(widths.size()); ++l) total += widths[l];
  return total;
}

template <typename T>
std::vector<T*> block_layer_slots(const MlpView<T>& mlp, int64_t streams, int64_t rows, T* base) {
  std::vector<T*> slots;
  for (int64_t l = 1; l < mlp.num_layers(); ++l) {
    slots.push_back(base);
    base += streams * rows * mlp.widths[l];
  }
  return slots;
}

template <typename T>
void forward_block(const MlpView<T>& mlp, const Streams& streams, int64_t R, const T* input,
                   const T* tz1_shared, const std::vector<T*>& zt, T* out, BlockScratch<T>& s) {
  const int64_t L = mlp.num_layers();
  const int64_t K = streams.K, S = streams.count();
  const bool second_order = streams.order == 2;
  const bool smooth = is_smooth(mlp.activation);
  for (int64_t l = 1; l <= L; ++l) {
    const int64_t n_in = mlp.widths[l - 1], n_out = mlp.widths[l];
    T* z = l < L ? zt[l - 1] : out;
    if (z == nullptr) return;  // backward recomputation stops below the output layer
    const T* w = mlp.weights[l - 1];
    // z_l = h_{l-1} W_l^T + b_l,  tz_l = t_{l-1} W_l^T,  ttz_l = tt_{l-1} W_l^T: one GEMM over
    // all stacked rows
    if (l == 1) {
      if (tz1_shared != nullptr) {
        // shared directions: tz_1 = V W_1^T was formed once for all rows, copy it per row
        gemm_nt<T>(R, n_out, n_in, input, n_in, w, n_in, T(0), z, n_out, mlp.use_blas);
        for (int64_t k = 0; k < K; ++k)
          for (int64_t r = 0; r < R; ++r)
            std::copy_n(tz1_shared + k * n_out, n_out, z + ((1 + k) * R + r) * n_out);
      } else {
        gemm_nt<T>((1 + K) * R, n_out, n_in, input, n_in, w, n_in, T(0), z, n_out,
                   mlp.use_blas);
      }
      // ttz_1 = tt_0 W_1^T = 0: the input moves linearly along v_k
      if (second_order) std::fill_n(z + (1 + K) * R * n_out, K * R * n_out, T(0));
    } else {
      gemm_nt<T>(S * R, n_out, n_in, input, n_in, w, n_in, T(0), z, n_out, mlp.use_blas);
    }
    if (!mlp.biases.empty()) add_bias(z, R, n_out, mlp.biases[l - 1]);
    if (l == L) return;
    const int64_t n = R * n_out;
    T* h = s.stack.data();
    if (!second_order) {
      // h = s(z), t_k = s'(z) tz_k: the next layer's stacked input
      activation_values(mlp.activation, mlp.negative_slope, z, n, h, s.s1.data());
      for (int64_t k = 0; k < K; ++k) multiply(s.s1.data(), z + (1 + k) * n, n, h + (1 + k) * n);
    } else {
      // h = s(z), t_k = s'(z) tz_k, tt_k = s'(z) ttz_k + s''(z) tz_k^2
      T* s2 = smooth ? s.s2.data() : nullptr;
      activation_series(mlp.activation, mlp.negative_slope, z, n, h, s.s1.data(), s2,
                        static_cast<T*>(nullptr));
      taylor_tangents(K, n, s.s1.data(), s2, z + n, z + (1 + K) * n, h + n, h + (1 + K) * n);
    }
    input = h;
  }
}

template <typename T>
void backward_block(const MlpView<T>& mlp, const Streams& streams, int64_t R, const T* input,
                    bool shared, const std::vector<T*>& zt, GradSlots<T>& grads, T* grad_x,
                    BlockScratch<T>& s) {
  const int64_t L = mlp.num_layers();
  const int64_t K = streams.K, S = streams.count();
  const bool second_order = streams.order == 2;
  const bool need_params = !grads.weights.empty();
  const bool smooth = is_smooth(mlp.activation);
  T* s1 = s.s1.data();
  T* s2 = smooth ? s.s2.data() : nullptr;
  T* s3 = smooth && second_order ? s.s3.data() : nullptr;
  T* a = s.adjoint.data();  // [a_z; a_tz_k; a_ttz_k] of layer l's output, (S, R, n_l)
  T* a_in = s.adjoint_in.data();
  for (int64_t l = L; l >= 2; --l) {
    const int64_t n_in = mlp.widths[l - 1], n_out = mlp.widths[l];
    const int64_t n = R * n_in;
    const T* z = zt[l - 2];  // z_{l-1}, tz_{l-1}, ttz_{l-1}: the pre-activations below layer l
    const T* tz = z + n;
    const T* ttz = z + (1 + K) * n;
    // recompute the layer's input [h; t; tt], and s'' (s''') for the adjoint
    T* h = s.stack.data();
    activation_series(mlp.activation, mlp.negative_slope, z, n, h, s1, s2, s3);
    if (!second_order) {
      for (int64_t k = 0; k < K; ++k) multiply(s1, tz + k * n, n, h + (1 + k) * n);
    } else {
      taylor_tangents(K, n, s1, s2, tz, ttz, h + n, h + (1 + K) * n);
    }
    if (need_params) {
      // dW_l += a_z^T h_{l-1} + sum_k (a_tz_k^T t_{l-1,k} + a_ttz_k^T tt_{l-1,k}): one GEMM
      // over the stacked rows
      gemm_tn<T>(n_out, n_in, S * R, a, n_out, h, n_in, T(1), grads.weights[l - 1], n_in,
                 mlp.use_blas);
      // db_l += sum over rows of a_z
      if (!grads.biases.empty()) add_column_sums(a, R, n_out, grads.biases[l - 1]);
    }
    // [a_h; a_t_k; a_tt_k] = [a_z; a_tz_k; a_ttz_k] W_l
    gemm_nn<T>(S * R, n_in, n_out, a, n_out, mlp.weights[l - 1], n_in, T(0), a_in, n_in,
               mlp.use_blas);
    if (!second_order) {
      // a_z = a_h s'(z) + s''(z) sum_k a_t_k tz_k,  a_tz_k = a_t_k s'(z)
      activation_adjoint(K, n, s1, s2, tz, a_in, s.work.data());
    } else {
      // a_z     = a_h s' + s'' sum_k (a_t_k tz_k + a_tt_k ttz_k) + s''' sum_k a_tt_k tz_k^2
      // a_tz_k  = a_t_k s' + 2 s'' a_tt_k tz_k,   a_ttz_k = a_tt_k s'
      activation_adjoint_order2(K, n, s1, s2, s3, tz, ttz, a_in, s.work.data());
    }
    std::swap(a, a_in);
  }
  // layer 1: its input is [x; v_k; 0] (tt_0 = 0, so the a_ttz_k rows add nothing to dW_1)
  const int64_t d = mlp.widths[0], n_1 = mlp.widths[1];
  if (need_params) {
    // dW_1 += a_z^T x + sum_k a_tz_k^T v_k; with shared directions the tangent part is
    // (sum over rows of a_tz_k)^T v_k, finished once per call from grads.tangent_sums
    gemm_tn<T>(n_1, d, (shared ? 1 : 1 + K) * R, a, n_1, input, d, T(1), grads.weights[0], d,
               mlp.use_blas);
    if (shared)
      for (int64_t k = 0; k < K; ++k)
        add_column_sums(a + (1 + k) * R * n_1, R, n_1, grads.tangent_sums + k * n_1);
    if (!grads.biases.empty()) add_column_sums(a, R, n_1, grads.biases[0]);
  }
  // dL/dx = a_z W_1 (the directions get no gradient)
  if (grad_x != nullptr)
    gemm_nn<T>(R, d, n_1, a, n_1, mlp.weights[0], d, T(0), grad_x, d, mlp.use_blas);
}

#define SK_INSTANTIATE_MLP_BLOCK(T)                                                           \
  template struct MlpView<T>;                                                                 \
  template std::vector<T*> block_layer_slots<T>(const MlpView<T>&, int64_t, int64_t, T*);    \
  template void forward_block<T>(const MlpView<T>&, const Streams&, int64_t, const T*,        \
                                 const T*, const std::vector<T*>&, T*, BlockScratch<T>&);     \
  template void backward_block<T>(const MlpView<T>&, const Streams&, int64_t, const T*, bool, \
                                  const std::vector<T*>&, GradSlots<T>&, T*, BlockScratch<T>&);
SK_INSTANTIATE_MLP_BLOCK(float)
SK_INSTANTIATE_MLP_BLOCK(double)
#undef SK_INSTANTIATE_MLP_BLOCK

}  // namespace sobolev::cpu
