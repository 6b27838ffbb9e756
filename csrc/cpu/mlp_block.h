// One block of rows through the whole MLP, values and all K tangents together (DESIGN
// section 2; order 2 in docs/math.md): the fused forward and the adjoint recursion of the
// backward, GEMMs on the stacked S R rows of the block (S = 1 + order K streams) with the
// weights shared across them. Torch-free; the ATen entry points in sobolev_cpu.cpp cut the
// batch into blocks and run them in parallel.
//
// Block buffers are k-major (S, R, n): stream 0 the values, streams 1..K the tangents and,
// for order 2, streams K+1..2K the second-order tangents (Taylor mode).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

namespace sobolev::cpu {

// The MLP in accumulation type T: weights (n_l, n_{l-1}) and biases (n_l) row-major, packed
// by the caller into aligned buffers, so GEMM results do not depend on the user's tensors.
template <typename T>
struct MlpView {
  std::vector<int64_t> widths;  // d, n_1, ..., n_{L-1}, m
  std::vector<const T*> weights;
  std::vector<const T*> biases;  // empty: no bias
  int activation = 0;
  T negative_slope = 0;
  bool use_blas = true;

  int64_t num_layers() const { return static_cast<int64_t>(weights.size()); }
  int64_t max_width() const;
  // sum of the hidden widths n_1 .. n_{L-1}: features of z saved per stream and row
  int64_t hidden_total() const;
};

// A zero-filled array aligned to 64 bytes. BLAS kernels may sum in an order that depends on
// operand alignment; with every GEMM operand in such buffers (or at fixed offsets of torch's
// 64-byte aligned tensors) repeated runs are bitwise identical.
template <typename T>
class AlignedBuffer {
 public:
  explicit AlignedBuffer(int64_t size = 0) : size_(size) {
    if (size == 0) return;
    const size_t bytes = (static_cast<size_t>(size) * sizeof(T) + 63) / 64 * 64;
    data_.reset(static_cast<T*>(std::aligned_alloc(64, bytes)));
    if (!data_) throw std::bad_alloc();
    std::fill_n(data_.get(), size, T(0));
  }
  T* data() const { return data_.get(); }
  int64_t size() const { return size_; }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> data_;
  int64_t size_;
};

// The stacked streams of a block: K directions, order 1 or 2.
struct Streams {
  int64_t K = 1, order = 1;

  int64_t count() const { return 1 + order * K; }  // S
};

// Per-thread work buffers of one block, sized once for the largest block.
template <typename T>
struct BlockScratch {
  AlignedBuffer<T> stack;       // S R max_width: inputs [h; t; tt] of the next GEMM
  AlignedBuffer<T> adjoint;     // S R max_width: [a_z; a_tz; a_ttz] of the current layer
  AlignedBuffer<T> adjoint_in;  // S R max_width: [a_h; a_t; a_tt] of its input
  AlignedBuffer<T> s1, s2, s3, work;  // R max_width each (s3: order 2 only)

  BlockScratch(const Streams& streams, int64_t rows, int64_t max_width)
      : stack(streams.count() * rows * max_width),
        adjoint(streams.count() * rows * max_width),
        adjoint_in(streams.count() * rows * max_width),
        s1(rows * max_width),
        s2(rows * max_width),
        s3(streams.order == 2 ? rows * max_width : 0),
        work(rows * max_width) {}
};

// z/tz/ttz of layers 1..L-1 for one block: layer l at base + S rows (n_1 + .. + n_{l-1}),
// an (S, R, n_l) buffer. In the forward the GEMMs write there, the backward reads it.
template <typename T>
std::vector<T*> block_layer_slots(const MlpView<T>& mlp, int64_t streams, int64_t rows, T* base);

// Forward of one block: input = layer-1 input [x; v_1..v_K] (1 + K, R, d) (only the R value
// rows when tz1_shared, the K x n_1 products V W_1^T of shared directions, is given; the
// second-order input tangents are 0). Writes z/tz/ttz of layers 1..L-1 into zt and, if out is
// not null, [f; u_1..u_K (; w_1..w_K)] (S, R, m) into out.
template <typename T>
void forward_block(const MlpView<T>& mlp, const Streams& streams, int64_t R, const T* input,
                   const T* tz1_shared, const std::vector<T*>& zt, T* out, BlockScratch<T>& s);

// Where one block adds its parameter gradients (a chunk's partial sums, see sobolev_cpu.cpp).
template <typename T>
struct GradSlots {
  std::vector<T*> weights;  // per layer (n_l, n_{l-1}); empty: parameter gradients not needed
  std::vector<T*> biases;   // per layer (n_l); empty: no bias
  T* tangent_sums = nullptr;  // shared directions: (K, n_1) sums over rows of a_tz_k at layer 1
};

// Backward of one block. s.adjoint holds the seeds [a_f; a_u_1..a_u_K (; a_w_1..a_w_K)]
// (S, R, m) on entry. input and zt as in forward_block. Adds dW/db into grads and, if grad_x
// is not null, writes dL/dx of the block's rows (R, d).
template <typename T>
void backward_block(const MlpView<T>& mlp, const Streams& streams, int64_t R, const T* input,
                    bool shared, const std::vector<T*>& zt, GradSlots<T>& grads, T* grad_x,
                    BlockScratch<T>& s);

}  // namespace sobolev::cpu
