#include "op_checks.h"

#include <c10/util/irange.h>

#include "activations.h"

namespace sobolev {
namespace {

void check_like(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), name, ": dtype ", t.scalar_type(),
              " does not match x's dtype ", x.scalar_type());
  TORCH_CHECK(t.device() == x.device(), name, ": on ", t.device(), ", but x is on ", x.device());
}

// y and the targets may also come in the accumulation dtype (fp32 targets of an autocast
// bf16 problem): the kernels read them in that precision anyway.
void check_target_like(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.scalar_type() == x.scalar_type() ||
                  t.scalar_type() == accumulation_type(x.scalar_type()),
              name, ": dtype ", t.scalar_type(), " does not match x's dtype ", x.scalar_type());
  TORCH_CHECK(t.device() == x.device(), name, ": on ", t.device(), ", but x is on ", x.device());
}

void check_shape(const at::Tensor& t, at::IntArrayRef shape, const char* name) {
  TORCH_CHECK(t.sizes() == shape, name, ": expected shape ", shape, ", got ", t.sizes());
}

}  // namespace

int64_t SobolevDims::hidden_total() const {
  int64_t total = 0;
  for (int64_t l = 1; l < num_layers(); ++l) total += widths[l];
  return total;
}

int64_t SobolevDims::saved_numel(bool save_activations) const {
  return save_activations ? streams() * batch * hidden_total() : 0;
}

at::ScalarType accumulation_type(at::ScalarType dtype) {
  return dtype == at::kBFloat16 || dtype == at::kHalf ? at::kFloat : dtype;
}

at::Tensor target_in_accumulation_type(const std::optional<at::Tensor>& t) {
  if (!t) return at::Tensor();
  return t->to(accumulation_type(t->scalar_type())).contiguous();
}

SobolevDims check_forward_inputs(const at::Tensor& x, const at::Tensor& directions,
                                 const TargetArgs& targets, at::TensorList weights,
                                 at::TensorList biases, int64_t activation, int64_t order) {
  const auto& [y, target_jvp, target_grad, target_hvp2, target_hess] = targets;
  SobolevDims dims;
  TORCH_CHECK(order == 1 || order == 2, "order: expected 1 or 2, got ", order);
  dims.order = order;
  TORCH_CHECK(x.dim() == 2 && x.size(0) >= 1 && x.size(1) >= 1,
              "x: expected shape (B, d) with B, d >= 1, got ", x.sizes());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kDouble || dtype == at::kFloat || dtype == at::kBFloat16 ||
                  dtype == at::kHalf,
              "x: expected fp64, fp32, bf16 or fp16, got ", dtype);
  dims.batch = x.size(0);
  dims.in_features = x.size(1);
  check_like(directions, x, "directions");
  dims.shared_directions = directions.dim() == 2;
  TORCH_CHECK((directions.dim() == 2 || directions.dim() == 3) &&
                  directions.size(-1) == dims.in_features && directions.size(-2) >= 1 &&
                  (dims.shared_directions || directions.size(0) == dims.batch),
              "directions: expected (K, ", dims.in_features, ") or (", dims.batch, ", K, ",
              dims.in_features, ") with K >= 1, got ", directions.sizes());
  dims.num_directions = directions.size(-2);

  TORCH_CHECK(!weights.empty(), "weights: expected at least one layer");
  TORCH_CHECK(biases.empty() || biases.size() == weights.size(), "biases: expected none or ",
              weights.size(), " (one per layer), got ", biases.size());
  dims.widths.push_back(dims.in_features);
  for (const auto l : c10::irange(weights.size())) {
    const auto& w = weights[l];
    check_like(w, x, "weights");
    TORCH_CHECK(w.dim() == 2 && w.size(1) == dims.widths.back() && w.size(0) >= 1,
                "weights[", l, "]: expected shape (n, ", dims.widths.back(), "), got ",
                w.sizes());
    dims.widths.push_back(w.size(0));
    if (!biases.empty()) {
      check_like(biases[l], x, "biases");
      check_shape(biases[l], {w.size(0)}, "biases[l]");
    }
  }
  dims.out_features = dims.widths.back();
  TORCH_CHECK(activation >= 0 && activation < kNumActivations, "activation: expected a kernel id "
              "in [0, ", kNumActivations, "), got ", activation);
  if (y) {
    check_target_like(*y, x, "y");
    check_shape(*y, {dims.batch, dims.out_features}, "y");
  }
  TORCH_CHECK(!(target_jvp && target_grad), "target_jvp/target_grad: expected at most one");
  if (target_jvp) {
    check_target_like(*target_jvp, x, "target_jvp");
    check_shape(*target_jvp, {dims.batch, dims.num_directions, dims.out_features}, "target_jvp");
  }
  if (target_grad) {
    check_target_like(*target_grad, x, "target_grad");
    check_shape(*target_grad, {dims.batch, dims.out_features, dims.in_features}, "target_grad");
  }
  TORCH_CHECK(order == 2 || (!target_hvp2 && !target_hess),
              "target_hvp2/target_hess: second-order targets need order 2");
  TORCH_CHECK(!(target_hvp2 && target_hess), "target_hvp2/target_hess: expected at most one");
  if (target_hvp2) {
    check_target_like(*target_hvp2, x, "target_hvp2");
    check_shape(*target_hvp2, {dims.batch, dims.num_directions, dims.out_features},
                "target_hvp2");
  }
  if (target_hess) {
    check_target_like(*target_hess, x, "target_hess");
    check_shape(*target_hess,
                {dims.batch, dims.out_features, dims.in_features, dims.in_features},
                "target_hess");
  }
  return dims;
}

void check_backward_inputs(const SobolevDims& dims, const at::Tensor& x,
                           const std::optional<at::Tensor>& grad_loss,
                           const std::optional<at::Tensor>& grad_f,
                           const std::optional<at::Tensor>& grad_u,
                           const std::optional<at::Tensor>& grad_w, const at::Tensor& f,
                           const at::Tensor& u, const at::Tensor& w, const at::Tensor& saved) {
  const auto acc = accumulation_type(x.scalar_type());
  TORCH_CHECK(!grad_loss || (grad_loss->dim() == 0 && grad_loss->device() == x.device()),
              "grad_loss: expected a 0-dim tensor on ", x.device());
  const std::vector<int64_t> f_shape = {dims.batch, dims.out_features};
  const std::vector<int64_t> u_shape = {dims.batch, dims.num_directions, dims.out_features};
  check_like(f, x, "f");
  check_shape(f, f_shape, "f");
  check_like(u, x, "u");
  check_shape(u, u_shape, "u");
  if (grad_f) {
    check_like(*grad_f, x, "grad_f");
    check_shape(*grad_f, f_shape, "grad_f");
  }
  if (grad_u) {
    check_like(*grad_u, x, "grad_u");
    check_shape(*grad_u, u_shape, "grad_u");
  }
  // w has u's shape for order 2 and is empty for order 1
  const std::vector<int64_t> w_shape =
      dims.order == 2 ? u_shape : std::vector<int64_t>{0};
  check_like(w, x, "w");
  check_shape(w, w_shape, "w");
  TORCH_CHECK(!grad_w || dims.order == 2, "grad_w: expected None for order 1");
  if (grad_w) {
    check_like(*grad_w, x, "grad_w");
    check_shape(*grad_w, u_shape, "grad_w");
  }
  TORCH_CHECK(saved.scalar_type() == acc && saved.device() == x.device(),
              "saved: expected the forward's saved tensor (", acc, " on ", x.device(), ")");
  TORCH_CHECK(saved.numel() == 0 || saved.numel() == dims.saved_numel(true),
              "saved: expected 0 or ", dims.saved_numel(true), " elements, got ", saved.numel());
}

void check_weight_grad_gemm(const at::Tensor& adjoints, const at::Tensor& inputs) {
  TORCH_CHECK(adjoints.dim() == 2, "adjoints: expected (rows, n_out), got shape ",
              adjoints.sizes());
  TORCH_CHECK(inputs.dim() == 2, "inputs: expected (rows, n_in), got shape ", inputs.sizes());
  TORCH_CHECK(inputs.size(0) == adjoints.size(0), "inputs: expected ", adjoints.size(0),
              " rows as adjoints has, got ", inputs.size(0));
  TORCH_CHECK(inputs.scalar_type() == adjoints.scalar_type(), "inputs: dtype ",
              inputs.scalar_type(), ", but adjoints is ", adjoints.scalar_type());
  TORCH_CHECK(inputs.device() == adjoints.device(), "inputs: on ", inputs.device(),
              ", but adjoints is on ", adjoints.device());
}

}  // namespace sobolev
