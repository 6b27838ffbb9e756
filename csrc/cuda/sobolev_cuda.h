// CUDA implementations of the ops declared in csrc/ops.cpp (schemas there). Compiled only with
// WITH_CUDA; the kernels themselves are torch-free (sobolev_kernels.cuh).
#pragma once

#include "op_signatures.h"

namespace sobolev::cuda {

ForwardOp sobolev_forward;
BackwardOp sobolev_backward;
WeightGradGemmOp weight_grad_gemm;

}  // namespace sobolev::cuda
