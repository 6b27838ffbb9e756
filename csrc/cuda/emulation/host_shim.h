// Just enough of CUDA to run the kernels of csrc/cuda on the host: each block's threads are
// std::threads meeting at a std::barrier for __syncthreads, blocks run one after another, and
// shared memory is one static array. Slow, but it executes the kernels' real indexing,
// synchronisation and reductions, so their logic is tested without a GPU
// (see emulate_kernels.cpp). fp32 and fp64 only.
#pragma once

#define SK_HOST_EMULATION 1

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __shared__  // `extern __shared__ smem[]` is the array below; `__shared__ bool is_last`
                    // becomes per thread, which is fine: only thread 0 reads it
#define __align__(n) __attribute__((aligned(n)))

using cudaError_t = int;
using cudaStream_t = void*;
using std::fma;
using std::max;
using std::min;

struct EmulatedDim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline thread_local EmulatedDim3 threadIdx;
inline EmulatedDim3 blockIdx, blockDim, gridDim;
inline std::barrier<>* emulated_barrier = nullptr;
// A block-scope `extern` array names the innermost enclosing namespace's: the kernels'.
namespace sobolev::cuda {
__attribute__((aligned(16))) inline unsigned char smem[1 << 20];
}

inline void __syncthreads() { emulated_barrier->arrive_and_wait(); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline unsigned atomicAdd(unsigned* address, unsigned value) {
  return std::atomic_ref<unsigned>(*address).fetch_add(value);
}

// kernel<<<grid, threads>>>(args), one block at a time.
template <typename Kernel, typename Args>
void emulate_launch(Kernel kernel, int grid, int threads, const Args& args) {
  gridDim.x = grid;
  blockDim.x = threads;
  for (int b = 0; b < grid; ++b) {
    blockIdx.x = b;
    std::barrier<> barrier(threads);
    emulated_barrier = &barrier;
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        threadIdx.x = t;
        kernel(args);
      });
    for (auto& th : pool) th.join();
  }
}
