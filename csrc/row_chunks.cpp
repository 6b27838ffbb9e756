#include "row_chunks.h"

#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>

#include "op_checks.h"

namespace sobolev {

namespace {

// rows [c0, c0 + n) of a per-sample tensor (absent, or empty as order 1's w: as it is)
std::optional<at::Tensor> rows_of(const std::optional<at::Tensor>& t, int64_t c0, int64_t n) {
  if (!t || t->numel() == 0) return t;
  return t->narrow(0, c0, n);
}

at::Tensor rows_of(const at::Tensor& t, int64_t c0, int64_t n) {
  return t.numel() == 0 ? t : t.narrow(0, c0, n);
}

}  // namespace

int64_t recompute_rows(const at::Tensor& x) {
  constexpr int64_t kCudaDefault = 16384;
  const char* env = std::getenv("SOBOLEV_CUDA_RECOMPUTE_ROWS");
  if (env == nullptr || *env == '\0') return x.is_cuda() ? kCudaDefault : 0;
  char* end = nullptr;
  errno = 0;
  const long long rows = std::strtoll(env, &end, 10);
  TORCH_CHECK(end != env && *end == '\0' && errno == 0 && rows >= 1,
              "SOBOLEV_CUDA_RECOMPUTE_ROWS: expected a positive integer, got '", env, "'");
  return rows;
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> backward_by_rows(
    BackwardOp* whole, const std::optional<at::Tensor>& grad_loss,
    const std::optional<at::Tensor>& grad_f, const std::optional<at::Tensor>& grad_u,
    const std::optional<at::Tensor>& grad_w, const at::Tensor& x, const at::Tensor& directions,
    const std::optional<at::Tensor>& y, const std::optional<at::Tensor>& target_jvp,
    const std::optional<at::Tensor>& target_grad, const std::optional<at::Tensor>& target_hvp2,
    const std::optional<at::Tensor>& target_hess, at::TensorList weights, at::TensorList biases,
    const at::Tensor& f, const at::Tensor& u, const at::Tensor& w, const at::Tensor& saved,
    int64_t activation, double negative_slope, double alpha, double beta, double gamma,
    int64_t order, bool allow_tf32, bool need_grad_x, bool need_grad_params) {
  const auto all_at_once = [&] {
    return whole(grad_loss, grad_f, grad_u, grad_w, x, directions, y, target_jvp, target_grad,
                 target_hvp2, target_hess, weights, biases, f, u, w, saved, activation,
                 negative_slope, alpha, beta, gamma, order, allow_tf32, need_grad_x,
                 need_grad_params);
  };
  // a saving forward's, or no hidden layer: nothing to recompute
  if (saved.numel() > 0 || weights.size() < 2) return all_at_once();
  const int64_t rows = recompute_rows(x);
  // one chunk (or inputs `whole` refuses, naming them): its own checks are enough
  if (rows == 0 || x.dim() != 2 || x.size(0) <= rows) return all_at_once();
  // the slices below rely on consistent shapes
  const TargetArgs targets{y, target_jvp, target_grad, target_hvp2, target_hess};
  const auto dims =
      check_forward_inputs(x, directions, targets, weights, biases, activation, order);
  check_backward_inputs(dims, x, grad_loss, grad_f, grad_u, grad_w, f, u, w, saved);
  const int64_t batch = dims.batch;

  auto grad_x = need_grad_x ? at::empty({batch, dims.in_features}, x.options())
                            : at::empty({0}, x.options());
  const auto acc = accumulation_type(x.scalar_type());
  std::vector<at::Tensor> sums;  // the weights' gradients, then the biases', in `acc`
  for (int64_t c0 = 0; c0 < batch; c0 += rows) {
    const int64_t n = std::min(rows, batch - c0);
    // the loss terms are means over the batch: the chunk's backward divides by n, not batch
    std::optional<at::Tensor> chunk_grad_loss;
    if (grad_loss) chunk_grad_loss = grad_loss->mul(static_cast<double>(n) / batch);
    const auto chunk_directions = dims.shared_directions ? directions : rows_of(directions, c0, n);
    auto [gx, gw, gb] =
        whole(chunk_grad_loss, rows_of(grad_f, c0, n), rows_of(grad_u, c0, n),
              rows_of(grad_w, c0, n), rows_of(x, c0, n), chunk_directions, rows_of(y, c0, n),
              rows_of(target_jvp, c0, n), rows_of(target_grad, c0, n),
              rows_of(target_hvp2, c0, n), rows_of(target_hess, c0, n), weights, biases,
              rows_of(f, c0, n), rows_of(u, c0, n), rows_of(w, c0, n), saved, activation,
              negative_slope, alpha, beta, gamma, order, allow_tf32, need_grad_x,
              need_grad_params);
    if (need_grad_x) grad_x.narrow(0, c0, n).copy_(gx);
    if (!need_grad_params) continue;
    gw.insert(gw.end(), gb.begin(), gb.end());
    if (sums.empty()) {
      for (const auto& g : gw) sums.push_back(g.to(acc));  // (the chunk's own where fp32/fp64)
    } else {
      at::_foreach_add_(sums, gw);
    }
  }
  std::vector<at::Tensor> grad_weights, grad_biases;
  for (size_t i = 0; i < sums.size(); ++i)
    (i < weights.size() ? grad_weights : grad_biases).push_back(sums[i].to(x.scalar_type()));
  return {grad_x, grad_weights, grad_biases};
}

}  // namespace sobolev
