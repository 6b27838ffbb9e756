// The C++ signatures of the two ops (schemas and semantics in ops.cpp), shared by every
// backend: `ForwardOp sobolev_forward;` declares a backend's implementation
// (cpu/sobolev_cpu.h, cuda/sobolev_cuda.h), and each definition is checked against it
// (a definition with other parameters would be an overload, and the check fails to compile).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

namespace sobolev {

// (loss, f, u, w, saved)
using ForwardOp = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor& x, const at::Tensor& directions, const std::optional<at::Tensor>& y,
    const std::optional<at::Tensor>& target_jvp, const std::optional<at::Tensor>& target_grad,
    const std::optional<at::Tensor>& target_hvp2, const std::optional<at::Tensor>& target_hess,
    at::TensorList weights, at::TensorList biases, int64_t activation, double negative_slope,
    double alpha, double beta, double gamma, int64_t order, bool allow_tf32,
    bool save_activations);

// (grad_x, grad_weights, grad_biases)
using BackwardOp = std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>>(
    const std::optional<at::Tensor>& grad_loss, const std::optional<at::Tensor>& grad_f,
    const std::optional<at::Tensor>& grad_u, const std::optional<at::Tensor>& grad_w,
    const at::Tensor& x, const at::Tensor& directions, const std::optional<at::Tensor>& y,
    const std::optional<at::Tensor>& target_jvp, const std::optional<at::Tensor>& target_grad,
    const std::optional<at::Tensor>& target_hvp2, const std::optional<at::Tensor>& target_hess,
    at::TensorList weights, at::TensorList biases, const at::Tensor& f, const at::Tensor& u,
    const at::Tensor& w, const at::Tensor& saved, int64_t activation, double negative_slope,
    double alpha, double beta, double gamma, int64_t order, bool allow_tf32,
    bool need_grad_x, bool need_grad_params);

// adjoints^T inputs over the stacked rows (weight_grad_gemm in ops.cpp)
using WeightGradGemmOp = at::Tensor(const at::Tensor& adjoints, const at::Tensor& inputs);

}  // namespace sobolev
