// The backward of a forward that kept nothing (save_activations false: `saved` empty), a chunk
// of samples at a time: each chunk's backward recomputes only that chunk's hidden
// pre-activations, so the buffers of a backward that stores them per batch (the CUDA fused
// kernels' saved z/tz and adjoints) hold one chunk instead of the batch. Registered around
// both of the extension's backward ops (ops.cpp); the chunking itself is device-agnostic.
#pragma once

#include "op_signatures.h"

namespace sobolev {

// SOBOLEV_CUDA_RECOMPUTE_ROWS: samples per chunk (a positive integer). Unset: 16384 for
// CUDA tensors (as the Triton backend's SOBOLEV_TRITON_RECOMPUTE_ROWS), and the whole batch
// (0) for CPU ones, whose kernel recomputes per row tile and keeps nothing per batch anyway.
int64_t recompute_rows(const at::Tensor& x);

// The op `whole` (the backward of the whole batch), or, where `saved` is empty, the model has
// hidden layers and the batch is more than recompute_rows(x), `whole` on each chunk of
// samples in order: its slices of x, the per-sample directions, targets, outputs and their
// upstream gradients, grad_loss scaled by chunk / batch (every loss term is a mean over the
// batch); grad_x written chunk by chunk, the parameters' gradients added in chunk order in
// the accumulation type (fp32 for bf16/fp16; deterministic).
std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> backward_by_rows(
    BackwardOp* whole, const std::optional<at::Tensor>& grad_loss,
    const std::optional<at::Tensor>& grad_f, const std::optional<at::Tensor>& grad_u,
    const std::optional<at::Tensor>& grad_w, const at::Tensor& x, const at::Tensor& directions,
    const std::optional<at::Tensor>& y, const std::optional<at::Tensor>& target_jvp,
    const std::optional<at::Tensor>& target_grad, const std::optional<at::Tensor>& target_hvp2,
    const std::optional<at::Tensor>& target_hess, at::TensorList weights, at::TensorList biases,
    const at::Tensor& f, const at::Tensor& u, const at::Tensor& w, const at::Tensor& saved,
    int64_t activation, double negative_slope, double alpha, double beta, double gamma,
    int64_t order, bool allow_tf32, bool need_grad_x, bool need_grad_params);

// backward_by_rows of `whole` with the op's own signature, for its registration: taken as
// a BackwardOp*, its Result and Args are deduced from that type
// (backward_in_row_chunks<&cpu::sobolev_backward>).
template <BackwardOp* whole, typename Result, typename... Args>
Result backward_by_rows_of(Args... args) {
  return backward_by_rows(whole, args...);
}
template <BackwardOp* whole>
inline BackwardOp* const backward_in_row_chunks = &backward_by_rows_of<whole>;

}  // namespace sobolev
