// The operator schemas of sobolev_kernels and their CPU/CUDA registrations, and the Python
// module `sobolev_kernels._C` whose import loads them.
//
// sobolev_forward: f = MLP(x), u_k = J_f(x) v_k and the projected loss
//   loss = alpha mean((f - y)^2) + beta mean((u - g)^2)     (DESIGN section 2)
// with g = target_jvp, or target_grad contracted with the directions; a term is dropped when
// its target is absent (y None; neither target: mlp_jvp). `saved` holds z and tz of the
// hidden layers for the backward (device-specific layout), or is empty when
// save_activations is false and the backward recomputes them. biases: one per layer, or [].
//
// sobolev_backward: gradients of a scalar function of (loss, f, u), given its upstream
// gradients grad_loss (0-dim), grad_f and grad_u (each None: zero). grad_x is empty unless
// need_grad_x; grad_weights/grad_biases are empty unless need_grad_params. Directions and
// targets get no gradient.
#include <Python.h>
#include <torch/library.h>

#include "cpu/sobolev_cpu.h"
#ifdef WITH_CUDA
#include "cuda/sobolev_cuda.h"
#endif

extern "C" {
// `import sobolev_kernels._C` runs the static registrations below; the module itself only
// says whether the CUDA kernels were compiled in.
PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* m = PyModule_Create(&module);
  if (m == nullptr) return nullptr;
#ifdef WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (PyModule_AddIntConstant(m, "WITH_CUDA", with_cuda) != 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
}

TORCH_LIBRARY(sobolev_kernels, m) {
  m.def(
      "sobolev_forward(Tensor x, Tensor directions, Tensor? y, Tensor? target_jvp, "
      "Tensor? target_grad, Tensor[] weights, Tensor[] biases, int activation, "
      "float negative_slope, float alpha, float beta, bool save_activations) "
      "-> (Tensor loss, Tensor f, Tensor u, Tensor saved)");
  m.def(
      "sobolev_backward(Tensor? grad_loss, Tensor? grad_f, Tensor? grad_u, Tensor x, "
      "Tensor directions, Tensor? y, Tensor? target_jvp, Tensor? target_grad, "
      "Tensor[] weights, Tensor[] biases, Tensor f, Tensor u, Tensor saved, int activation, "
      "float negative_slope, float alpha, float beta, bool need_grad_x, bool need_grad_params) "
      "-> (Tensor grad_x, Tensor[] grad_weights, Tensor[] grad_biases)");
  // (3, *z.shape): s, s', s'' as the CPU kernels compute them; lets tests check the formulas
  m.def("activation_series(Tensor z, int activation, float negative_slope) -> Tensor");
}

TORCH_LIBRARY_IMPL(sobolev_kernels, CPU, m) {
  m.impl("sobolev_forward", &sobolev::cpu::sobolev_forward);
  m.impl("sobolev_backward", &sobolev::cpu::sobolev_backward);
  m.impl("activation_series", &sobolev::cpu::activation_series);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(sobolev_kernels, CUDA, m) {
  m.impl("sobolev_forward", &sobolev::cuda::sobolev_forward);
  m.impl("sobolev_backward", &sobolev::cuda::sobolev_backward);
}
#endif
