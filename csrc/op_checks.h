// Checks on the arguments of the fused ops, shared by the CPU kernel and the CUDA binding.
// The Python side validates user input first (sobolev_kernels/api.py); these TORCH_CHECKs
// catch direct calls of torch.ops.sobolev_kernels.* with inconsistent tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace sobolev {

// Sizes of one problem, read off checked arguments.
struct SobolevDims {
  int64_t batch = 0;           // B
  int64_t in_features = 0;     // d
  int64_t num_directions = 0;  // K
  int64_t out_features = 0;    // m
  int64_t order = 1;           // 1, or 2 with the second-order tangent streams
  bool shared_directions = false;  // directions (K, d) rather than (B, K, d)
  std::vector<int64_t> widths;     // d, n_1, ..., m

  int64_t num_layers() const { return static_cast<int64_t>(widths.size()) - 1; }
  // stacked rows per batch row: [values; K tangents] and, for order 2, K second-order ones
  int64_t streams() const { return 1 + order * num_directions; }
  // n_1 + ... + n_{L-1}: hidden features saved per stream and row
  int64_t hidden_total() const;
  // numel of the `saved` output: z, tz (and ttz) of every hidden layer, or nothing
  int64_t saved_numel(bool save_activations) const;
};

// dtype in which losses, the saved pre-activations, y and the targets are kept: fp32 for
// bf16/fp16.
at::ScalarType accumulation_type(at::ScalarType dtype);

// y or a target (optional) as a contiguous tensor in the accumulation dtype, or undefined.
at::Tensor target_in_accumulation_type(const std::optional<at::Tensor>& t);

// The optional targets of one problem, as the ops receive them.
struct TargetArgs {
  const std::optional<at::Tensor>& y;
  const std::optional<at::Tensor>& target_jvp;   // (B, K, m)
  const std::optional<at::Tensor>& target_grad;  // (B, m, d)
  const std::optional<at::Tensor>& target_hvp2;  // (B, K, m), order 2
  const std::optional<at::Tensor>& target_hess;  // (B, m, d, d), order 2
};

SobolevDims check_forward_inputs(const at::Tensor& x, const at::Tensor& directions,
                                 const TargetArgs& targets, at::TensorList weights,
                                 at::TensorList biases, int64_t activation, int64_t order);

// grad_w and w: (B, K, m) for order 2; w is empty and grad_w None for order 1.
void check_backward_inputs(const SobolevDims& dims, const at::Tensor& x,
                           const std::optional<at::Tensor>& grad_loss,
                           const std::optional<at::Tensor>& grad_f,
                           const std::optional<at::Tensor>& grad_u,
                           const std::optional<at::Tensor>& grad_w, const at::Tensor& f,
                           const at::Tensor& u, const at::Tensor& w, const at::Tensor& saved);

// weight_grad_gemm's: adjoints (R, n_out) and inputs (R, n_in), one dtype and device.
void check_weight_grad_gemm(const at::Tensor& adjoints, const at::Tensor& inputs);

}  // namespace sobolev
