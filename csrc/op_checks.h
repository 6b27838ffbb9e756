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
  bool shared_directions = false;  // directions (K, d) rather than (B, K, d)
  std::vector<int64_t> widths;     // d, n_1, ..., m

  int64_t num_layers() const { return static_cast<int64_t>(widths.size()) - 1; }
  int64_t streams() const { return 1 + num_directions; }
  // n_1 + ... + n_{L-1}: hidden features saved per stream and row
  int64_t hidden_total() const;
  // numel of the `saved` output: z and tz of every hidden layer, or nothing
  int64_t saved_numel(bool save_activations) const;
};

// dtype in which losses, the saved pre-activations, y and the targets are kept: fp32 for
// bf16/fp16.
at::ScalarType accumulation_type(at::ScalarType dtype);

// y or a target (optional) as a contiguous tensor in the accumulation dtype, or undefined.
at::Tensor target_in_accumulation_type(const std::optional<at::Tensor>& t);

SobolevDims check_forward_inputs(const at::Tensor& x, const at::Tensor& directions,
                                 const std::optional<at::Tensor>& y,
                                 const std::optional<at::Tensor>& target_jvp,
                                 const std::optional<at::Tensor>& target_grad,
                                 at::TensorList weights, at::TensorList biases, int64_t activation);

void check_backward_inputs(const SobolevDims& dims, const at::Tensor& x,
                           const std::optional<at::Tensor>& grad_loss,
                           const std::optional<at::Tensor>& grad_f,
                           const std::optional<at::Tensor>& grad_u, const at::Tensor& f,
                           const at::Tensor& u, const at::Tensor& saved);

}  // namespace sobolev
