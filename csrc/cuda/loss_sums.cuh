// The end of every forward kernel: the loss from the threads' squared-error sums, in a fixed
// order, so it is deterministic (no floating-point atomics).
#pragma once

#include "cuda/sobolev_kernels.cuh"
#include "cuda/tile_plan.cuh"

namespace sobolev::cuda {

// Block sums in a fixed tree order, one per loss term (terms: 2, or 3 with (w - g2)^2), in
// `red` (terms blockDim.x doubles of free shared memory); then the last block to finish adds
// the blocks' sums in block order and writes the loss. Every thread of the block calls it.
template <typename acc_t>
__device__ void add_up_loss(const SobolevLaunch& p, int terms, const double (&sums)[kLossTerms],
                            double* red, double* loss_partials, unsigned* counter) {
  for (int t = 0; t < terms; ++t) red[t * blockDim.x + threadIdx.x] = sums[t];
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half)
      for (int t = 0; t < terms; ++t)
        red[t * blockDim.x + threadIdx.x] += red[t * blockDim.x + threadIdx.x + half];
    __syncthreads();
  }
  __shared__ bool is_last;
  if (threadIdx.x == 0) {
    for (int t = 0; t < terms; ++t)
      loss_partials[kLossTerms * blockIdx.x + t] = red[t * blockDim.x];
    __threadfence();
    is_last = atomicAdd(counter, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (is_last && threadIdx.x == 0) {
    __threadfence();
    const volatile double* partials = loss_partials;
    double total[kLossTerms] = {};
    for (unsigned b = 0; b < gridDim.x; ++b)
      for (int t = 0; t < terms; ++t) total[t] += partials[kLossTerms * b + t];
    // L = alpha mean((f - y)^2) + beta mean((u - g)^2) [+ gamma mean((w - g2)^2)]
    const double B = double(p.batch), m = p.out_features, K = p.num_directions;
    double loss = 0;
    if (p.y != nullptr) loss += p.alpha * total[0] / (B * m);
    if (has_target(p)) loss += p.beta * total[1] / (B * K * m);
    if (has_target2(p)) loss += p.gamma * total[2] / (B * K * m);
    *static_cast<acc_t*>(p.loss) = static_cast<acc_t>(loss);
  }
}

}  // namespace sobolev::cuda
