// What one call of the CPU ops sets up before its blocks run (sobolev_cpu.cpp): how the batch
// is cut into blocks and chunks, the packed weights, the rows' input/output views, the shared
// directions' first-layer tangents and the layout of the partial weight gradients.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/mlp_block.h"
#include "cpu/rows_io.h"
#include "op_checks.h"

namespace sobolev::cpu {

// Stacked rows S R per block (S = 1 + order K): the block's buffers (a few of S R n) stay in L2.
constexpr int64_t kStackedRowsPerBlock = 192;
// Number of partial weight gradients in the backward: fixed, so results do not depend on
// the thread count, and enough chunks to balance the threads of a large machine.
constexpr int64_t kMaxChunks = 32;

struct BlockPlan {
  int64_t batch, rows, num_blocks, num_chunks;

  explicit BlockPlan(const SobolevDims& dims)
      : batch(dims.batch),
        rows(std::clamp<int64_t>(kStackedRowsPerBlock / dims.streams(), 1, dims.batch)),
        num_blocks((batch + rows - 1) / rows),
        num_chunks(std::min(num_blocks, kMaxChunks)) {}

  int64_t first_row(int64_t block) const { return block * rows; }
  int64_t rows_of(int64_t block) const { return std::min(rows, batch - first_row(block)); }
  int64_t chunk_begin(int64_t chunk) const { return chunk * num_blocks / num_chunks; }
};

inline Streams streams_of(const SobolevDims& dims) {
  return Streams{dims.num_directions, dims.order};
}

template <typename acc_t>
struct PackedMlp {
  AlignedBuffer<acc_t> storage;
  MlpView<acc_t> view;
};

// The weights and biases in acc_t, in one aligned buffer (see AlignedBuffer).
template <typename scalar_t, typename acc_t>
PackedMlp<acc_t> pack_mlp(const SobolevDims& dims, at::TensorList weights, at::TensorList biases,
                          int64_t activation, double negative_slope) {
  int64_t total = 0;
  for (int64_t l = 1; l <= dims.num_layers(); ++l)
    total += dims.widths[l] * dims.widths[l - 1] + (biases.empty() ? 0 : dims.widths[l]);
  PackedMlp<acc_t> packed{AlignedBuffer<acc_t>(total), {}};
  acc_t* dst = packed.storage.data();
  auto copy = [&](const at::Tensor& t) {
    const auto c = t.contiguous();
    const scalar_t* src = c.data_ptr<scalar_t>();
    std::transform(src, src + c.numel(), dst, [](scalar_t v) { return static_cast<acc_t>(v); });
    dst += c.numel();
    return dst - c.numel();
  };
  auto& view = packed.view;
  view.widths = dims.widths;
  for (const auto& w : weights) view.weights.push_back(copy(w));
  for (const auto& b : biases) view.biases.push_back(copy(b));
  view.activation = static_cast<int>(activation);
  view.negative_slope = static_cast<acc_t>(negative_slope);
  // SOBOLEV_CPU_GEMM=loop takes the plain loops instead of BLAS (tests; BLAS-less builds).
  const char* gemm = std::getenv("SOBOLEV_CPU_GEMM");
  view.use_blas = !(gemm != nullptr && std::strcmp(gemm, "loop") == 0);
  return packed;
}

// y and the targets of one call, contiguous in the accumulation dtype (or undefined).
struct TargetTensors {
  at::Tensor y, target_jvp, target_grad, target_hvp2, target_hess;

  explicit TargetTensors(const TargetArgs& args)
      : y(target_in_accumulation_type(args.y)),
        target_jvp(target_in_accumulation_type(args.target_jvp)),
        target_grad(target_in_accumulation_type(args.target_grad)),
        target_hvp2(target_in_accumulation_type(args.target_hvp2)),
        target_hess(target_in_accumulation_type(args.target_hess)) {}
};

// x and directions in scalar_t; y and the targets in acc_t (target_in_accumulation_type).
template <typename scalar_t, typename acc_t>
RowsIO<scalar_t, acc_t> make_io(const SobolevDims& dims, const at::Tensor& x,
                                const at::Tensor& directions, const TargetTensors& targets) {
  auto acc = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<acc_t>() : nullptr; };
  RowsIO<scalar_t, acc_t> io;
  io.x = x.data_ptr<scalar_t>();
  io.directions = directions.data_ptr<scalar_t>();
  io.shared = dims.shared_directions;
  io.y = acc(targets.y);
  io.target_jvp = acc(targets.target_jvp);
  io.target_grad = acc(targets.target_grad);
  io.target_hvp2 = acc(targets.target_hvp2);
  io.target_hess = acc(targets.target_hess);
  io.B = dims.batch;
  io.d = dims.in_features;
  io.K = dims.num_directions;
  io.m = dims.out_features;
  io.order = dims.order;
  return io;
}

// Shared directions: tz_1 = V W_1^T (K, n_1), the same for every row, formed once per call.
template <typename scalar_t, typename acc_t>
AlignedBuffer<acc_t> shared_first_tangents(const RowsIO<scalar_t, acc_t>& io,
                                           const MlpView<acc_t>& mlp) {
  if (!io.shared) return AlignedBuffer<acc_t>();
  AlignedBuffer<acc_t> v(io.K * io.d), tz1(io.K * mlp.widths[1]);
  std::transform(io.directions, io.directions + io.K * io.d, v.data(),
                 [](scalar_t e) { return static_cast<acc_t>(e); });
  gemm_nt<acc_t>(io.K, mlp.widths[1], io.d, v.data(), io.d, mlp.weights[0], io.d, acc_t(0),
                 tz1.data(), mlp.widths[1], mlp.use_blas);
  return tz1;
}

// Layout of one chunk's partial sums: dW_1..dW_L, then db_1..db_L, then (shared directions)
// the (K, n_1) row sums of a_tz_k at layer 1.
struct GradLayout {
  std::vector<int64_t> weight_offsets, bias_offsets;
  int64_t tangent_sums_offset = 0, size = 0;

  GradLayout(const SobolevDims& dims, bool has_bias) {
    for (int64_t l = 1; l <= dims.num_layers(); ++l) {
      weight_offsets.push_back(size);
      size += dims.widths[l] * dims.widths[l - 1];
    }
    for (int64_t l = 1; has_bias && l <= dims.num_layers(); ++l) {
      bias_offsets.push_back(size);
      size += dims.widths[l];
    }
    tangent_sums_offset = size;
    if (dims.shared_directions) size += dims.num_directions * dims.widths[1];
  }

  template <typename T>
  GradSlots<T> slots(T* base) const {
    GradSlots<T> g;
    for (auto o : weight_offsets) g.weights.push_back(base + o);
    for (auto o : bias_offsets) g.biases.push_back(base + o);
    g.tangent_sums = base + tangent_sums_offset;
    return g;
  }
};

}  // namespace sobolev::cpu
