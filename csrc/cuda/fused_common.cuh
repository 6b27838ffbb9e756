// The fully fused kernels (SOBOLEV_CUDA_KERNEL=fused), after tiny-cuda-nn's fully fused MLP: a
// block takes a tile of 16 stacked rows per warp (128 rows, 8 warps; 64 rows, 4 warps at width
// 256) and carries it through every layer on chip. The tile's rows are [h; t_1..t_K] (order 2:
// also tt_1..tt_K) of R = tile_rows / S samples, stream-major: row s R + r. Per layer:
//   - the block stages the layer's weights in shared memory, once for all 1 + K (1 + 2K) streams
//     (in 64-column panels at width 256), in the operand type (fp32 for TF32, else 16-bit; or,
//     STAGED_SPLIT, fp32 as its 3xTF32 parts, split once here for every warp);
//   - each warp multiplies its own 16 rows on tensor cores (mma_fragments.cuh), the whole
//     output row block in registers (WIDTH / 2 accumulators per thread), then writes it over
//     its rows: one fp32 tile X of tile_rows x WIDTH holds a layer's input and then its output;
//   - the block applies the activation (and its derivatives to the tangent streams) in place.
// WIDTH, the widest layer (d, n_l, m) rounded up to 16, 32, 64, 128 or 256, is a template
// parameter: it sizes the tile, the panels and the accumulators. Columns past a layer's width
// are zero up to the next multiple of 16, the products' k and n padding.
// fp16 operands are scaled per product by a power of two from the largest |operand| of the
// tile (the backward's adjoints are O(1/B)), undone on the accumulators.
#pragma once

#include <type_traits>
#include <utility>

#include "cuda/mma_fragments.cuh"
#include "cuda/sobolev_kernels.cuh"
#include "cuda/tile_plan.cuh"

namespace sobolev::cuda {

// The widths the fused kernels are compiled for.
SK_HD int fused_width(const SobolevLaunch& p) {
  int widest = 1;
  for (int l = 0; l <= p.num_layers; ++l) widest = widest > p.widths[l] ? widest : p.widths[l];
  for (int w = 16; w <= 256; w *= 2)
    if (widest <= w) return w;
  return 0;
}

// Shape of the fused kernels at WIDTH for operands op_t (float: TF32). Rows of X and of the
// staged weights are 4 (fp32, and Tf32Parts) or 8 (16-bit) elements longer than WIDTH, so the
// fragment loads of a warp hit 32 different banks (mma_fragments.cuh's layouts; an 8-byte
// load of Tf32Parts is served per half warp, whose 16 lanes then cover the 32 banks once).
// HIGH_OCCUPANCY (SOBOLEV_CUDA_FUSED_OCCUPANCY=high, the default; fp32 at widths 128 and 256
// only) puts more warps on an SM where =low leaves one block of 8 (width 128) or 4 (width 256):
//   width 128: the weights staged in two 64-row panels, 101 KB of shared memory a block
//              instead of 135 KB, so two blocks share an SM (128 registers a thread);
//   width 256: blocks of 8 warps (128 rows) instead of 4, 195 KB (up to 255 registers).
// 16-bit operands halve the staged weights: two blocks share an SM there already.
// STAGED_SPLIT (SOBOLEV_CUDA_FUSED_WEIGHT_SPLIT=staged; fp32 at width 64 and the
// HIGH_OCCUPANCY shapes, has_staged_split) stages the weights as their 3xTF32 parts
// (Tf32Parts), split once per launch into the workspace (split_weights_kernel, the weight
// images) and copied from there, and splits the activations by integer arithmetic
// (tf32_parts<true>: 3 instructions instead of 9). Otherwise every warp splits each weight
// fragment it loads, for each k step, by cvt.rna.tf32 (four instructions on sm_90): in the
// sm_90 SASS, the k loop took 11.6 instructions per mma.sync (run 5's counters, 2026-11-27,
// had ALU the busiest pipe of the fp32 kernels); staged, 3xTF32's 4.0-4.25 at widths 128 and
// 256 and 3.1-3.3 at 64 (bench/results/cuda_staged_split_sm90.md). The parts take twice the
// bytes, so at widths 128 and 256 the panels have 32 rows: the same shared memory, and
// blocks per SM, as before.
template <typename op_t, int WIDTH, bool HIGH_OCCUPANCY = false, bool STAGED_SPLIT = false>
struct FusedShape {
  static_assert(!STAGED_SPLIT || std::is_same_v<op_t, float>, "only fp32 operands are split");
  using op_type = op_t;
  using staged_type = std::conditional_t<STAGED_SPLIT, Tf32Parts, op_t>;  // a staged weight
  static constexpr int kWidth = WIDTH;
  static constexpr int kWarps = WIDTH <= 128 || HIGH_OCCUPANCY ? 8 : 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kTileRows = 16 * kWarps;
  // at width <= 64 two blocks share an SM: they then have 128 registers per thread
  static constexpr int kMinBlocks = WIDTH <= 64 || (WIDTH == 128 && HIGH_OCCUPANCY) ? 2 : 1;
  // weight rows staged at once
  static constexpr int kPanel = STAGED_SPLIT && WIDTH >= 128                        ? 32
                                : WIDTH <= 64 || (WIDTH == 128 && !HIGH_OCCUPANCY) ? WIDTH
                                                                                    : 64;
  static constexpr int kLead = WIDTH + (std::is_same_v<op_t, float> ? 4 : 8);
  static constexpr size_t kSmemBytes = sizeof(float) * kTileRows * kLead +
                                       sizeof(staged_type) * kPanel * kLead + 2 * sizeof(unsigned);
};

// Whether the HIGH_OCCUPANCY shapes exist for operands op_t at `width`.
template <typename op_t>
constexpr bool has_high_occupancy(int width) {
  return std::is_same_v<op_t, float> && width >= 128;
}

// Whether the STAGED_SPLIT shapes exist for operands op_t at `width` (with high_occupancy):
// fp32, where the splits cost most, in the shapes the default runs (widths 16 and 32 and the
// low-occupancy shapes keep their per-warp splits, and CI's compile time).
template <typename op_t>
constexpr bool has_staged_split(int width, bool high_occupancy) {
  return std::is_same_v<op_t, float> && (width == 64 || (width >= 128 && high_occupancy));
}

// f(std::integral_constant<int, WIDTH>, std::bool_constant<HIGH_OCCUPANCY>,
// std::bool_constant<STAGED_SPLIT>) for the shape the fused kernels take p at (FusedPlan's
// width, high_occupancy and staged_split), for operands op_t.
template <typename op_t, typename F>
auto with_fused_shape(int width, bool high_occupancy, bool staged_split, F f) {
  using std::integral_constant;
  const std::false_type no;
  const std::true_type yes;
  switch (width) {
    case 16: return f(integral_constant<int, 16>{}, no, no);
    case 32: return f(integral_constant<int, 32>{}, no, no);
    case 64:
      if constexpr (has_staged_split<op_t>(64, false))
        if (staged_split) return f(integral_constant<int, 64>{}, no, yes);
      return f(integral_constant<int, 64>{}, no, no);
    case 128:
      if constexpr (has_high_occupancy<op_t>(128)) {
        if (high_occupancy && staged_split) return f(integral_constant<int, 128>{}, yes, yes);
        if (high_occupancy) return f(integral_constant<int, 128>{}, yes, no);
      }
      return f(integral_constant<int, 128>{}, no, no);
    default:
      if constexpr (has_high_occupancy<op_t>(256)) {
        if (high_occupancy && staged_split) return f(integral_constant<int, 256>{}, yes, yes);
        if (high_occupancy) return f(integral_constant<int, 256>{}, yes, no);
      }
      return f(integral_constant<int, 256>{}, no, no);
  }
}

// Shape::kLead of the shape the fused kernels take at `plan`: the weight images' row stride.
template <typename op_t>
int fused_lead(const FusedPlan& plan) {
  return with_fused_shape<op_t>(
      plan.width, plan.high_occupancy, plan.staged_split, [](auto w, auto high, auto staged) {
        return FusedShape<op_t, decltype(w)::value, decltype(high)::value,
                          decltype(staged)::value>::kLead;
      });
}

// The fused kernels' cut of the batch for p, or false where they cannot take it: fp64 (its
// products stay on FMA, in the tiled kernels), a GPU older than sm_80, more streams than a
// tile has rows (S > tile_rows), or a tile larger than the device's shared memory.
template <typename scalar_t>
bool make_fused_plan(const SobolevLaunch& p, const DeviceLimits& device, FusedPlan* plan) {
  if (std::is_same_v<scalar_t, double> || device.major < 8 || p.num_layers < 1) return false;
  using op_t = std::conditional_t<std::is_same_v<scalar_t, double>, float, scalar_t>;
  const int width = fused_width(p);
  const auto shape_of = [&](bool high, bool staged) {
    return with_fused_shape<op_t>(width, high, staged, [](auto w, auto h, auto staged_split) {
      using Shape = FusedShape<op_t, decltype(w)::value, decltype(h)::value,
                               decltype(staged_split)::value>;
      return std::pair<int, size_t>{Shape::kTileRows, Shape::kSmemBytes};
    });
  };
  // the high-occupancy shape where asked for and it fits (width 256 in fp32 needs 195 KB of
  // shared memory a block: an sm_90, not an sm_80 with 163 KB); the staged split where asked
  // for and that shape has it
  bool high = p.fused_high_occupancy && has_high_occupancy<op_t>(width);
  if (high && shape_of(true, false).second > device.smem_per_block) high = false;
  const bool staged = p.fused_staged_split && has_staged_split<op_t>(width, high);
  const auto [tile_rows, smem] = shape_of(high, staged);
  const int streams = 1 + p.order * p.num_directions;
  if (width == 0 || streams > tile_rows || smem > device.smem_per_block) return false;
  plan->width = width;
  plan->high_occupancy = high;
  plan->staged_split = staged;
  plan->tile_rows = tile_rows;
  plan->rows = tile_rows / streams;
  plan->num_tiles = (p.batch + plan->rows - 1) / plan->rows;
  plan->smem_bytes = smem;
  return true;
}

// The weight-gradient GEMMs' operand type for storage type scalar_t (fused_gemm_operands.cuh):
// bf16 for bf16 (tensor-core GEMMs), fp32 otherwise (fp16 adjoints, O(1/B), would underflow).
template <typename scalar_t>
using gemm_operand_t =
    std::conditional_t<std::is_same_v<scalar_t, __nv_bfloat16>, __nv_bfloat16, float>;

// Everything the fused kernels need, by value (kernel parameter space).
struct FusedArgs {
  SobolevLaunch p;
  FusedPlan plan;
  double* loss_partials = nullptr;  // forward: kLossTerms squared-error sums per block
  unsigned int* counter = nullptr;  // forward: blocks done, to find the last one
  float* adjoints = nullptr;        // backward: every layer's output adjoints (adjoint_offset)
  float* grad_partials = nullptr;   // backward: per row split, dW_1..dW_L, db_1..db_L
  const Tf32Parts* weight_images = nullptr;  // STAGED_SPLIT: weight_image_offset's images
  // backward, FusedPlan::operands_in_backward: the GEMMs' operands as the kernel forms them
  void* operand_adjoints = nullptr;  // 16-bit types: the adjoints as gemm_operand_t, at
                                     // adjoint_offset (adjoints then null); else null
  void* layer_inputs = nullptr;      // S_1..S_{L-1} as gemm_operand_t, saved_offset's layout
  float* bias_partials = nullptr;    // (grid, n_1 + .. + n_L): each block's column sums of its
                                     // tiles' value-row adjoints, or null (no biases)
};

// n_1 + ... + n_{l-1}: the output columns of the layers before layer l (1..L + 1).
SK_HD int output_columns_before(const SobolevLaunch& p, int layer) {
  int columns = 0;
  for (int l = 1; l < layer; ++l) columns += p.widths[l];
  return columns;
}

// Layer l's (1..L) output adjoints [a_z; a_tz (; a_ttz)] in FusedArgs::adjoints, as (S, B, n_l)
// after the layers before it: what the weight-gradient products read.
SK_HD int64_t adjoint_offset(const SobolevLaunch& p, int streams, int layer) {
  return int64_t(streams) * p.batch * output_columns_before(p, layer);
}

// The weight-gradient products' layer inputs (fused_weight_grads*.cuh, fused_gemm_operands.cuh)
// of sample `row`, column j of layer l (1..L), stream by stream: store(s, v), s < S. Layer 1's
// are [x; v_k; 0] (`streams` of them: S, or 1 + K where the caller has no tt rows); later
// layers' are recomputed from layer l-1's saved z/tz(/ttz) (z_saved: p.saved_in at
// saved_offset(p, S, l - 1)), s(z) and its derivatives once for all streams:
//   h = s(z),  t_k = s'(z) tz_k,  tt_k = s'(z) ttz_k + s''(z) tz_k^2
template <typename scalar_t, typename Store>
__device__ __forceinline__ void layer_inputs_at(const SobolevLaunch& p, int layer,
                                                const float* z_saved, int64_t row, int j,
                                                int streams, Store store) {
  const int K = p.num_directions;
  if (layer == 1) {
    const int d = p.in_features;
    const auto* x = static_cast<const scalar_t*>(p.x);
    const auto* dirs = static_cast<const scalar_t*>(p.directions);
    store(0, to_acc<float>(x[row * d + j]));
    for (int s = 1; s < streams; ++s)
      store(s, s > K ? 0.0f
                     : to_acc<float>(p.shared_directions ? dirs[(s - 1) * d + j]
                                                         : dirs[(row * K + s - 1) * d + j]));
    return;
  }
  const int64_t at = row * p.widths[layer - 1] + j, next = p.batch * p.widths[layer - 1];
  float h, s1, s2, s3;
  activation_at<float>(p.activation, static_cast<float>(p.negative_slope), z_saved[at], h, s1,
                       s2, s3);
  store(0, h);
  for (int k = 1; k <= K; ++k) {
    const float tz = z_saved[k * next + at];
    store(k, s1 * tz);
    if (p.order == 2) store(K + k, fmaf(s1, z_saved[(K + k) * next + at], s2 * tz * tz));
  }
}

// max |v| of a pass over the tile, for the fp16 scale of the product that reads it: the
// block's largest in *word (non-negative floats order as their bits).
template <typename op_t>
__device__ __forceinline__ void note_max(unsigned* word, float local) {
  if constexpr (std::is_same_v<op_t, __half>) atomicMax(word, __float_as_uint(local));
}

// The power of two that brings the largest |operand| into [2^13, 2^14) for fp16 (room for
// fp16's 65504); 1 for bf16 and TF32, which have fp32's range.
template <typename op_t>
__device__ __forceinline__ float scale_from(const unsigned* word) {
  if constexpr (!std::is_same_v<op_t, __half>) {
    return 1.0f;
  } else {
    const float largest = __uint_as_float(*word);
    if (!(largest > 0) || !isfinite(largest)) return 1.0f;
    int exponent = 0;
    frexpf(largest, &exponent);  // largest < 2^exponent
    return ldexpf(1.0f, max(-100, min(100, 14 - exponent)));
  }
}

constexpr int kPassBatch = 4;  // elements of an activation pass whose loads go out together

// Element e = i inner + j of a block-wide pass over an (outer, inner) tile, e = t, t + stride,
// ... for thread t: (i, j) advanced without a division (a 32-bit division by a value known
// only at run time is a chain of about 20 dependent instructions, one for every element of
// the activation passes, which run 5's counters found waiting on such chains).
struct TileWalk {
  int i, j;
  int step_i, step_j, inner;
  __device__ __forceinline__ TileWalk(int first, int stride, int inner_)
      : i(first / inner_), j(first % inner_), step_i(stride / inner_), step_j(stride % inner_),
        inner(inner_) {}
  __device__ __forceinline__ void next() {
    i += step_i;
    j += step_j;
    if (j >= inner) j -= inner, ++i;
  }
};

// store(i, j, load(i, j)) for the block's elements of an outer x inner grid, element
// e = i inner + j for thread t at e = t, t + blockDim.x, ... (consecutive threads take
// consecutive j), BATCH loads issued before their stores: one at a time (as the sm_90 SASS of
// the staging loop had them), each load was an L2 round trip that the block, alone on its SM
// at widths above 64, waited for: 16 to 64 of them per weight panel, for every layer of every
// tile. (i, j) advance by blockDim.x without a division.
template <int BATCH, typename Load, typename Store>
__device__ __forceinline__ void copy_batched(int outer, int inner, Load load, Store store) {
  TileWalk at(threadIdx.x, blockDim.x, inner);
  while (at.i < outer) {
    float v[BATCH];
    TileWalk load_at = at;
#pragma unroll
    for (int b = 0; b < BATCH; ++b) {
      v[b] = load_at.i < outer ? load(load_at.i, load_at.j) : 0.0f;
      load_at.next();
    }
#pragma unroll
    for (int b = 0; b < BATCH; ++b) {
      if (at.i < outer) store(at.i, at.j, v[b]);
      at.next();
    }
  }
}

// Rows of weight panel `panel` in shared memory, B(k, n) = staged[n][k]: the forward's W_l
// (staged[n][k] = W[n0 + n][k], W: n_out x n_in) or, TRANSPOSE, the backward's W_l^T
// (staged[n][k] = W[k][n0 + n]). Rows up to the product's padded n, columns up to its padded
// k; zeros past the layer. Consecutive threads read consecutive weights: k in the forward, n
// in the backward. Staged as the operand type (STAGED_SPLIT's Tf32Parts: stage_image).
template <bool TRANSPOSE, typename Shape, typename scalar_t>
__device__ void stage_panel(const scalar_t* W, int n_out, int n_in, int panel,
                            typename Shape::op_type* staged) {
  using op_t = typename Shape::op_type;
  const int n_size = TRANSPOSE ? n_in : n_out, k_size = TRANSPOSE ? n_out : n_in;
  const int n0 = panel * Shape::kPanel;
  const int rows = min(Shape::kPanel, pad16(n_size) - n0), cols = pad16(k_size);
  const auto load = [&](int n, int k) {
    if (n0 + n >= n_size || k >= k_size) return 0.0f;
    return to_acc<float>(TRANSPOSE ? W[int64_t(k) * n_in + n0 + n]
                                   : W[int64_t(n0 + n) * n_in + k]);
  };
  const auto store = [&](int n, int k, float v) {  // 16-bit weights convert exactly
    staged[n * Shape::kLead + k] = from_acc<op_t>(v);
  };
  if constexpr (TRANSPOSE)
    copy_batched<8>(
        cols, rows, [&](int k, int n) { return load(n, k); },
        [&](int k, int n, float v) { store(n, k, v); });
  else
    copy_batched<8>(rows, cols, load, store);
}

// STAGED_SPLIT's weight images: every layer's weights as their 3xTF32 parts, laid out as
// stage_panel stores them (rows of the shape's kLead Tf32Parts; columns up to the product's
// padded k, zeros past the layer; the rows' last words zero), split once per launch by
// split_weights_kernel into the workspace. A panel is then a run of whole rows, which
// stage_image copies 16 bytes at a time: in the sm_90 SASS, stage_panel's loads, index
// arithmetic, splits and scattered stores took about as many instructions a layer as the
// panel's 3xTF32 products (2026-11-28, width 128).
// Layer l's image (1..L): W_l's for the forward (pad16(n_l) rows) or, TRANSPOSE, W_l^T's for
// the backward (pad16(n_{l-1}) rows), after the layers before it; in Tf32Parts, at row
// stride ld.
SK_HD int64_t weight_image_offset(const SobolevLaunch& p, int ld, int layer, bool transpose) {
  int64_t rows = 0;
  for (int l = 1; l < layer; ++l) rows += pad16(transpose ? p.widths[l - 1] : p.widths[l]);
  return rows * ld;
}

struct WeightImageArgs {
  SobolevLaunch p;
  int ld = 0;  // the kernels' Shape::kLead
  Tf32Parts* images = nullptr;
};

// Every layer's image (weight_image_offset), a 32-bit word per thread at a time
// (tf32_parts_column, tf32_parts_word).
template <bool TRANSPOSE>
__global__ void __launch_bounds__(256)
    split_weights_kernel(const __grid_constant__ WeightImageArgs args) {
  const SobolevLaunch& p = args.p;
  const int row_words = 2 * args.ld;
  auto* words = reinterpret_cast<uint32_t*>(args.images);
  const int64_t total = 2 * weight_image_offset(p, args.ld, p.num_layers + 1, TRANSPOSE);
  for (int64_t w = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; w < total;
       w += int64_t(gridDim.x) * blockDim.x) {
    int64_t row = w / row_words;
    bool remainder;
    const int k = tf32_parts_column(static_cast<int>(w % row_words), remainder);
    int l = 1;  // the layer of `row`
    for (;; ++l) {
      const int rows = pad16(TRANSPOSE ? p.widths[l - 1] : p.widths[l]);
      if (row < rows || l == p.num_layers) break;
      row -= rows;
    }
    const int n_out = p.widths[l], n_in = p.widths[l - 1];
    const int n = static_cast<int>(row);
    const int n_size = TRANSPOSE ? n_in : n_out, k_size = TRANSPOSE ? n_out : n_in;
    uint32_t word = 0;  // past the product's padded k: never read, zero
    if (k < pad16(k_size)) {
      const float* W = static_cast<const float*>(p.weights[l - 1]);
      const float v = n < n_size && k < k_size
                          ? (TRANSPOSE ? W[int64_t(k) * n_in + n] : W[int64_t(n) * n_in + k])
                          : 0.0f;
      word = tf32_parts_word(v, remainder);
    }
    words[w] = word;
  }
}

// stage_panel for STAGED_SPLIT from the layer's image (weight_image_offset): n_size is the
// image's unpadded rows (n_out in the forward, n_in in the backward).
// Each thread issues four 16-byte loads (two at width 64, where four pushed the order-2
// backward's k loop to spill) before their stores: a load and then its store would wait an
// L2 round trip each (as copy_batched's comment says of stage_panel's).
template <typename Shape>
__device__ void stage_image(const Tf32Parts* image, int n_size, int panel, Tf32Parts* staged) {
  static_assert(Shape::kLead % 2 == 0, "rows of whole 16-byte chunks");
  constexpr int kBatch = Shape::kWidth <= 64 ? 2 : 4;
  const int n0 = panel * Shape::kPanel;
  const int chunks = min(Shape::kPanel, pad16(n_size) - n0) * Shape::kLead / 2;
  const Tf32Parts* from = image + int64_t(n0) * Shape::kLead;
  for (int first = threadIdx.x; first < chunks; first += kBatch * blockDim.x) {
    Bytes16 v[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int i = first + b * blockDim.x;
      if (i < chunks) v[b] = load_16_bytes(from + 2 * i);
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int i = first + b * blockDim.x;
      if (i < chunks) store_16_bytes(staged + 2 * i, v[b]);
    }
  }
}

// Panel `panel` of layer l's weights W (n_out x n_in; TRANSPOSE: W^T, as stage_panel stages
// them): from the layer's image for STAGED_SPLIT, else by stage_panel.
template <bool TRANSPOSE, typename Shape, typename scalar_t>
__device__ __forceinline__ void stage_layer(const FusedArgs& args, int l, const scalar_t* W,
                                            int n_out, int n_in, int panel,
                                            typename Shape::staged_type* staged) {
  if constexpr (std::is_same_v<typename Shape::staged_type, Tf32Parts>)
    stage_image<Shape>(args.weight_images + weight_image_offset(args.p, Shape::kLead, l, TRANSPOSE),
                       TRANSPOSE ? n_in : n_out, panel, staged);
  else
    stage_panel<TRANSPOSE, Shape>(W, n_out, n_in, panel, staged);
}

// A layer's product for the warp's 16 rows of X: the rows (columns < k_pad) times the staged
// weights, B(k, n) = staged[n][k] for n < n_pad, written over the rows (columns < n_pad), times
// 1 / scale. Panel 0 is staged by the caller before a barrier; later panels are staged here by
// stage(panel) between barriers, so every thread of the block calls this.
template <typename Shape, typename Stage>
__device__ void fused_product(float* X, const typename Shape::staged_type* staged, int k_pad,
                              int n_pad, float scale, bool split, Stage stage) {
  using op_t = typename Shape::op_type;
  constexpr int WIDTH = Shape::kWidth, ld = Shape::kLead, panel_tiles = Shape::kPanel / 8;
  // the weights staged as their parts, and the activations split by integer arithmetic
  constexpr bool kStagedSplit = std::is_same_v<typename Shape::staged_type, Tf32Parts>;
  const int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  float* rows = X + threadIdx.x / 32 * 16 * ld;
  float acc[WIDTH / 8][4];
#pragma unroll
  for (int j = 0; j < WIDTH / 8; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
#pragma unroll
  for (int p = 0; p < WIDTH / Shape::kPanel; ++p) {
    if (p * Shape::kPanel >= n_pad) break;  // uniform
    if (p > 0) {
      __syncthreads();  // every warp is done with the previous panel
      stage(p);
      __syncthreads();
    }
    const int tiles = min(Shape::kPanel, n_pad - p * Shape::kPanel) / 8;
    if constexpr (kStagedSplit) {
      // a k loop for 3xTF32 and one for plain TF32 (`split` is uniform: the op's allow_tf32):
      // with one loop for both, the SASS issued both forms' split of the activations, one
      // predicated off (tf32_parts<true> splits them otherwise than cvt.rna's tf32_parts)
      const auto k_loop = [&](auto split_constant) {
        constexpr bool kSplit = decltype(split_constant)::value;
        for (int k0 = 0; k0 < k_pad; k0 += kMmaK<op_t>) {
          const FragmentA a = load_a<op_t, true>(rows, ld, k0, scale, kSplit);
          // the panel's fragments first, then each of 3xTF32's three products for every tile
          // in turn: mma.sync is asm volatile, kept in program order, so tile by tile each
          // product waited for the one before it on the same accumulator. Each accumulator
          // gets mma()'s products in mma()'s order.
          FragmentB b[panel_tiles];
#pragma unroll
          for (int j = 0; j < panel_tiles; ++j)
            if (j < tiles) b[j] = load_b_staged(staged + j * 8 * ld, ld, k0, kSplit);
          if constexpr (kSplit) {
#pragma unroll
            for (int j = 0; j < panel_tiles; ++j)
              if (j < tiles) mma_sync<op_t>(acc[p * panel_tiles + j], a.lo, b[j].hi);
#pragma unroll
            for (int j = 0; j < panel_tiles; ++j)
              if (j < tiles) mma_sync<op_t>(acc[p * panel_tiles + j], a.hi, b[j].lo);
          }
#pragma unroll
          for (int j = 0; j < panel_tiles; ++j)
            if (j < tiles) mma_sync<op_t>(acc[p * panel_tiles + j], a.hi, b[j].hi);
        }
      };
      if (split)
        k_loop(std::true_type{});
      else
        k_loop(std::false_type{});
    } else {
      for (int k0 = 0; k0 < k_pad; k0 += kMmaK<op_t>) {
        const FragmentA a = load_a<op_t>(rows, ld, k0, scale, split);
#pragma unroll
        for (int j = 0; j < panel_tiles; ++j) {
          if (j >= tiles) break;
          const FragmentB b = load_b_staged(staged + j * 8 * ld, ld, k0, split);
          mma<op_t>(acc[p * panel_tiles + j], a, b, split);
        }
      }
    }
  }
  __syncwarp();  // all of the warp's reads of its rows are done
  const float unscale = 1.0f / scale;
#pragma unroll
  for (int j = 0; j < WIDTH / 8; ++j) {
    if (j * 8 >= n_pad) break;
    float* out = rows + g * ld + j * 8 + 2 * t;
    out[0] = acc[j][0] * unscale;
    out[1] = acc[j][1] * unscale;
    out[8 * ld] = acc[j][2] * unscale;
    out[8 * ld + 1] = acc[j][3] * unscale;
  }
}

// Layer-1 input of samples r0..r0+R into X: row s R + r holds x (s = 0), v_s (1 <= s <= K) or
// zeros (tt_0, order 2), columns < pad16(d), zeros past d and for samples past the batch
// (r >= valid). Returns the thread's largest |value|.
template <typename scalar_t>
__device__ float load_fused_input(const SobolevLaunch& p, int64_t r0, int R, int valid,
                                  int streams, float* X, int ld) {
  const int d = p.in_features, K = p.num_directions, cols = pad16(d);
  const auto* x = static_cast<const scalar_t*>(p.x);
  const auto* dirs = static_cast<const scalar_t*>(p.directions);
  float largest = 0;
  copy_batched<8>(
      streams * R, cols,
      [&](int stacked, int i) {  // row s R + r
        const int s = stacked / R, r = stacked % R;
        const int64_t row = r0 + r;
        if (r >= valid || i >= d || s > K) return 0.0f;
        return to_acc<float>(s == 0 ? x[row * d + i]
                                    : p.shared_directions ? dirs[(s - 1) * d + i]
                                                          : dirs[(row * K + s - 1) * d + i]);
      },
      [&](int stacked, int i, float v) {
        X[stacked * ld + i] = v;
        largest = fmaxf(largest, fabsf(v));
      });
  return largest;
}

}  // namespace sobolev::cuda
