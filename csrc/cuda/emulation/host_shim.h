// Just enough of CUDA to run the kernels of csrc/cuda on the host: each block's threads are
// fibers meeting at a barrier for __syncthreads (and one per warp for __syncwarp; fibers on one
// OS thread, block_fibers.h), blocks run one after another, and shared memory is one static
// array. Slow, but it executes the kernels' real indexing, synchronisation and reductions, so
// their logic is tested without a GPU (see emulate_kernels.cpp). bf16 and fp16 are storage
// types that round to nearest even as the GPU's conversions do; wmma_shim.h stands in for the
// tensor cores.
#pragma once

#define SK_HOST_EMULATION 1

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <string>
#include <vector>

#include "cuda/emulation/block_fibers.h"

#if defined(SK_WITH_ASAN)
#include <sanitizer/asan_interface.h>
#define SK_POISON_MEMORY(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define SK_UNPOISON_MEMORY(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define SK_POISON_MEMORY(p, n) ((void)(p), (void)(n))
#define SK_UNPOISON_MEMORY(p, n) ((void)(p), (void)(n))
#endif

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
using std::isfinite;
using std::max;
using std::min;

struct EmulatedDim3 {
  unsigned x = 0, y = 0, z = 0;
};
inline EmulatedDim3 threadIdx, blockIdx, blockDim, gridDim;  // threadIdx: the running fiber's
inline sobolev::emulation::BlockFibers emulated_fibers;
inline sobolev::emulation::FiberBarrier* emulated_barrier = nullptr;
inline std::deque<sobolev::emulation::FiberBarrier>* emulated_warp_barriers = nullptr;
// Each warp's registers of an mma.sync operand, gathered so that every lane can read the
// others' (the tensor core's view of the warp's fragments).
struct EmulatedWarpRegisters {
  uint32_t a[32][4], b[32][2];
};
inline std::deque<EmulatedWarpRegisters>* emulated_warp_registers = nullptr;
// A block-scope `extern` array names the innermost enclosing namespace's: the kernels'.
namespace sobolev::cuda {
__attribute__((aligned(128))) inline unsigned char smem[1 << 20];
}

inline void __syncthreads() { emulated_fibers.arrive_and_wait(*emulated_barrier); }
// all 32 lanes must arrive, as for a full-mask __syncwarp in converged code
inline void __syncwarp(unsigned = 0xffffffffu) {
  emulated_fibers.arrive_and_wait((*emulated_warp_barriers)[threadIdx.x / 32]);
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline unsigned atomicAdd(unsigned* address, unsigned value) {
  return std::atomic_ref<unsigned>(*address).fetch_add(value);
}
inline unsigned atomicMax(unsigned* address, unsigned value) {
  std::atomic_ref<unsigned> ref(*address);
  unsigned old = ref.load();
  while (old < value && !ref.compare_exchange_weak(old, value)) {
  }
  return old;
}
inline unsigned __float_as_uint(float v) { return std::bit_cast<unsigned>(v); }
inline float __uint_as_float(unsigned v) { return std::bit_cast<float>(v); }

// bf16: the upper half of an fp32, rounded to nearest even (NaN stays NaN).
struct __nv_bfloat16 {
  uint16_t bits = 0;
};
inline __nv_bfloat16 __float2bfloat16(float v) {
  if (std::isnan(v)) return {0x7fc0};
  const uint32_t u = std::bit_cast<uint32_t>(v);
  return {static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
inline float __bfloat162float(__nv_bfloat16 v) {
  return std::bit_cast<float>(static_cast<uint32_t>(v.bits) << 16);
}
// fp16: the compiler's _Float16 (IEEE binary16, round to nearest even).
struct __half {
  _Float16 value = 0;
};
inline __half __float2half(float v) { return {static_cast<_Float16>(v)}; }
inline float __half2float(__half v) { return static_cast<float>(v.value); }

// mma.sync d += a b of one lane, with the fragment layouts of cuda/mma_fragments.cuh: m16n8k8
// for TF32 (an operand's upper 19 bits, as the tensor core reads them), m16n8k16 for bf16 and
// fp16; products in fp32 (exact for these operands), summed in k order.
enum class EmulatedMma { kTf32, kBf16, kFp16 };

inline float emulated_operand(EmulatedMma kind, uint32_t reg, int half) {
  if (kind == EmulatedMma::kTf32) return std::bit_cast<float>(reg & 0xffffe000u);
  const uint16_t bits = static_cast<uint16_t>(reg >> (16 * half));
  if (kind == EmulatedMma::kBf16) return __bfloat162float(__nv_bfloat16{bits});
  return static_cast<float>(std::bit_cast<_Float16>(bits));
}

inline void emulated_mma_sync(EmulatedMma kind, float (&d)[4], const uint32_t (&a)[4],
                              const uint32_t (&b)[2]) {
  __syncwarp();  // the previous product's reads of the registers are done
  EmulatedWarpRegisters& regs = (*emulated_warp_registers)[threadIdx.x / 32];
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  for (int r = 0; r < 4; ++r) regs.a[lane][r] = a[r];
  for (int r = 0; r < 2; ++r) regs.b[lane][r] = b[r];
  __syncwarp();
  const bool tf32 = kind == EmulatedMma::kTf32;
  const int K = tf32 ? 8 : 16;
  const auto A = [&](int row, int k) {  // A(row, k)
    const int r = row / 8 + 2 * (tf32 ? k / 4 : k / 8);
    if (tf32) return emulated_operand(kind, regs.a[4 * (row % 8) + k % 4][r], 0);
    return emulated_operand(kind, regs.a[4 * (row % 8) + k % 8 / 2][r], k % 2);
  };
  const auto B = [&](int k, int col) {  // B(k, col)
    if (tf32) return emulated_operand(kind, regs.b[4 * col + k % 4][k / 4], 0);
    return emulated_operand(kind, regs.b[4 * col + k % 8 / 2][k / 8], k % 2);
  };
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
    float sum = d[i];
    for (int k = 0; k < K; ++k) sum += A(row, k) * B(k, col);
    d[i] = sum;
  }
}

// kernel<<<dim3(grid_x, grid_y), threads, smem_bytes>>>(args), one block at a time. Under
// AddressSanitizer the shared memory past smem_bytes is poisoned for the launch: a kernel that
// reads or writes beyond the dynamic shared memory its launch asks for is a report.
template <typename Kernel, typename Args>
void emulate_launch_2d(Kernel kernel, int grid_x, int grid_y, int threads, size_t smem_bytes,
                       const Args& args) {
  using sobolev::cuda::smem;
  if (smem_bytes > sizeof(smem)) {
    std::fprintf(stderr, "emulation: %zu bytes of shared memory asked, %zu emulated\n",
                 smem_bytes, sizeof(smem));
    std::abort();
  }
  SK_POISON_MEMORY(smem + smem_bytes, sizeof(smem) - smem_bytes);
  gridDim.x = grid_x;
  gridDim.y = grid_y;
  blockDim.x = threads;
  for (int by = 0; by < grid_y; ++by)
    for (int bx = 0; bx < grid_x; ++bx) {
      blockIdx.x = bx;
      blockIdx.y = by;
      sobolev::emulation::FiberBarrier barrier(threads);
      emulated_barrier = &barrier;
      std::deque<sobolev::emulation::FiberBarrier> warp_barriers;
      for (int w = 0; w < (threads + 31) / 32; ++w) warp_barriers.emplace_back(32);
      emulated_warp_barriers = &warp_barriers;
      std::deque<EmulatedWarpRegisters> warp_registers((threads + 31) / 32);
      emulated_warp_registers = &warp_registers;
      auto body = [&] { kernel(args); };
      const std::string name = "block (" + std::to_string(bx) + ", " + std::to_string(by) + ")";
      emulated_fibers.run(threads, body, &threadIdx.x, name.c_str());
    }
  SK_UNPOISON_MEMORY(smem, sizeof(smem));
}

// kernel<<<grid, threads, smem_bytes>>>(args)
template <typename Kernel, typename Args>
void emulate_launch(Kernel kernel, int grid, int threads, size_t smem_bytes, const Args& args) {
  emulate_launch_2d(kernel, grid, 1, threads, smem_bytes, args);
}

#include "cuda/emulation/wmma_shim.h"
