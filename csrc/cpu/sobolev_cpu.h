// CPU implementations of the ops declared in csrc/ops.cpp (schemas there).
#pragma once

#include <ATen/core/Tensor.h>

#include "op_signatures.h"

namespace sobolev::cpu {

ForwardOp sobolev_forward;
BackwardOp sobolev_backward;

// (4, *z.shape): s(z), s'(z), s''(z), s'''(z) as the kernels compute them (for tests).
at::Tensor activation_series(const at::Tensor& z, int64_t activation, double negative_slope);

}  // namespace sobolev::cpu
