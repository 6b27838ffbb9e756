// The operator schemas of sobolev_kernels and their CPU/CUDA registrations, and the Python
// module `sobolev_kernels._C` whose import loads them.
//
// sobolev_forward: f = MLP(x), u_k = J_f(x) v_k, for order 2 also w_k = v_k^T H_f(x) v_k
// (Taylor mode, docs/math.md), and the projected loss
//   loss = alpha mean((f - y)^2) + beta mean((u - g)^2) [+ gamma mean((w - g2)^2)]
// with g = target_jvp, or target_grad contracted with the directions, and g2 = target_hvp2,
// or target_hess contracted twice with the directions; a term is dropped when its target is
// absent (y None; no targets: mlp_jvp). w is empty for order 1. `saved` holds z, tz (and
// ttz) of the hidden layers for the backward (device-specific layout), or is empty when
// save_activations is false and the backward recomputes them. biases: one per layer, or [].
//
// sobolev_backward: gradients of a scalar function of (loss, f, u, w), given its upstream
// gradients grad_loss (0-dim), grad_f, grad_u and grad_w (each None: zero). grad_x is empty
// unless need_grad_x; grad_weights/grad_biases are empty unless need_grad_params. Directions
// and targets get no gradient. Where `saved` is empty, both devices' backward runs a chunk of
// samples at a time (row_chunks.h: on a GPU 16384 unless SOBOLEV_CUDA_RECOMPUTE_ROWS says
// otherwise), so that what it recomputes and stores holds one chunk, not the batch.
//
// weight_grad_gemm: adjoints^T inputs, (n_out, n_in), for a layer's weight gradient over its
// stacked rows (adjoints (R, n_out), inputs (R, n_in)). On a GPU, in fp32 where the extension
// was built with CUTLASS and the shapes suit it: fp32-accurate on tensor cores (3xTF32 split-K,
// cuda/weight_grad_gemm.h); else, and on the CPU, at::mm at torch's matmul precision.
#include <ATen/ops/mm.h>
#include <Python.h>
#include <torch/library.h>

#include "cpu/sobolev_cpu.h"
#include "op_checks.h"
#include "row_chunks.h"
#ifdef WITH_CUDA
#include "cuda/sobolev_cuda.h"
#include "cuda/sobolev_kernels.cuh"
#include "cuda/weight_grad_gemm.h"
#endif

namespace {

at::Tensor weight_grad_gemm_cpu(const at::Tensor& adjoints, const at::Tensor& inputs) {
  sobolev::check_weight_grad_gemm(adjoints, inputs);
  return at::mm(adjoints.t(), inputs);
}

}  // namespace

extern "C" {
// `import sobolev_kernels._C` runs the static registrations below; the module itself only
// says whether the CUDA kernels were compiled in and, if so, their size limits (read by
// sobolev_kernels/backends/cuda.py, so the limits live in one place).
PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
#ifdef WITH_CUDA
  const bool ok =
      PyModule_AddIntConstant(m, "WITH_CUDA", 1) == 0 &&
      PyModule_AddIntConstant(m, "CUDA_MAX_LAYERS", sobolev::cuda::kMaxLayers) == 0 &&
      PyModule_AddIntConstant(m, "CUDA_MAX_WIDTH", sobolev::cuda::kMaxWidth) == 0 &&
      PyModule_AddIntConstant(m, "WITH_CUTLASS", sobolev::cuda::weight_grad_gemm_compiled()) == 0;
#else
  const bool ok = PyModule_AddIntConstant(m, "WITH_CUDA", 0) == 0 &&
                  PyModule_AddIntConstant(m, "WITH_CUTLASS", 0) == 0;
#endif
  if (!ok) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
}

TORCH_LIBRARY(sobolev_kernels, m) {
  m.def(
      "sobolev_forward(Tensor x, Tensor directions, Tensor? y, Tensor? target_jvp, "
      "Tensor? target_grad, Tensor? target_hvp2, Tensor? target_hess, Tensor[] weights, "
      "Tensor[] biases, int activation, float negative_slope, float alpha, float beta, "
      "float gamma, int order, bool allow_tf32, bool save_activations) "
      "-> (Tensor loss, Tensor f, Tensor u, Tensor w, Tensor saved)");
  m.def(
      "sobolev_backward(Tensor? grad_loss, Tensor? grad_f, Tensor? grad_u, Tensor? grad_w, "
      "Tensor x, Tensor directions, Tensor? y, Tensor? target_jvp, Tensor? target_grad, "
      "Tensor? target_hvp2, Tensor? target_hess, Tensor[] weights, Tensor[] biases, Tensor f, "
      "Tensor u, Tensor w, Tensor saved, int activation, float negative_slope, float alpha, "
      "float beta, float gamma, int order, bool allow_tf32, bool need_grad_x, "
      "bool need_grad_params) "
      "-> (Tensor grad_x, Tensor[] grad_weights, Tensor[] grad_biases)");
  // (4, *z.shape): s, s', s'', s''' as the CPU kernels compute them; lets tests check them
  m.def("activation_series(Tensor z, int activation, float negative_slope) -> Tensor");
  m.def("weight_grad_gemm(Tensor adjoints, Tensor inputs) -> Tensor");
}

TORCH_LIBRARY_IMPL(sobolev_kernels, CPU, m) {
  m.impl("sobolev_forward", &sobolev::cpu::sobolev_forward);
  m.impl("sobolev_backward", sobolev::backward_in_row_chunks<&sobolev::cpu::sobolev_backward>);
  m.impl("activation_series", &sobolev::cpu::activation_series);
  m.impl("weight_grad_gemm", &weight_grad_gemm_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(sobolev_kernels, CUDA, m) {
  m.impl("sobolev_forward", &sobolev::cuda::sobolev_forward);
  m.impl("sobolev_backward",
         sobolev::backward_in_row_chunks<&sobolev::cuda::sobolev_backward>);
  m.impl("weight_grad_gemm", &sobolev::cuda::weight_grad_gemm);
}
#endif
