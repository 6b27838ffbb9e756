// CPU implementations of the ops declared in csrc/ops.cpp (schemas there).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

namespace sobolev::cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sobolev_forward(
    const at::Tensor& x, const at::Tensor& directions, const std::optional<at::Tensor>& y,
    const std::optional<at::Tensor>& target_jvp, const std::optional<at::Tensor>& target_grad,
    const std::optional<at::Tensor>& target_hvp2, const std::optional<at::Tensor>& target_hess,
    at::TensorList weights, at::TensorList biases, int64_t activation, double negative_slope,
    double alpha, double beta, double gamma, int64_t order, bool save_activations);

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> sobolev_backward(
    const std::optional<at::Tensor>& grad_loss, const std::optional<at::Tensor>& grad_f,
    const std::optional<at::Tensor>& grad_u, const std::optional<at::Tensor>& grad_w,
    const at::Tensor& x, const at::Tensor& directions, const std::optional<at::Tensor>& y,
    const std::optional<at::Tensor>& target_jvp, const std::optional<at::Tensor>& target_grad,
    const std::optional<at::Tensor>& target_hvp2, const std::optional<at::Tensor>& target_hess,
    at::TensorList weights, at::TensorList biases, const at::Tensor& f, const at::Tensor& u,
    const at::Tensor& w, const at::Tensor& saved, int64_t activation, double negative_slope,
    double alpha, double beta, double gamma, int64_t order, bool need_grad_x,
    bool need_grad_params);

// (4, *z.shape): s(z), s'(z), s''(z), s'''(z) as the kernels compute them (for tests).
at::Tensor activation_series(const at::Tensor& z, int64_t activation, double negative_slope);

}  // namespace sobolev::cpu
