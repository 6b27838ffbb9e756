// Host-only check of csrc/cuda/weight_grad_gemm.cu's CUTLASS arguments (no GPU): the
// problem size and the TensorRefs it builds for the GEMM, read element by element through
// CUTLASS's own layouts (the device kernel indexes them the same way), give dW = A^T S with
// A (rows, n_out) and S (rows, n_in) row-major, and D addresses dW row-major. A wrong layout
// or leading dimension makes the sums differ. Built and run by
// tests/test_cuda_compile_and_emulation.py with nvcc (the device code is compiled, not run).
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "cuda/weight_grad_gemm.cu"

namespace sobolev::cuda {

template <typename G>
int mismatches(int rows, int n_out, int n_in) {
  std::mt19937 gen(rows + n_out + n_in);
  std::normal_distribution<float> dist;
  std::vector<float> a(size_t(rows) * n_out), s(size_t(rows) * n_in), dw(size_t(n_out) * n_in);
  for (auto& v : a) v = dist(gen);
  for (auto& v : s) v = dist(gen);
  WeightGradGemm g;
  g.rows = rows;
  g.n_out = n_out;
  g.n_in = n_in;
  g.splits = 3;
  const auto args = arguments<G>(a.data(), s.data(), dw.data(), g);
  int bad = args.problem_size.m() != n_out || args.problem_size.n() != n_in ||
            args.problem_size.k() != rows;
  for (int m = 0; m < n_out; ++m) {
    for (int n = 0; n < n_in; ++n) {
      double by_refs = 0, direct = 0;
      for (int k = 0; k < rows; ++k) {
        by_refs += double(args.ref_A.at({m, k})) * double(args.ref_B.at({k, n}));
        direct += double(a[size_t(k) * n_out + m]) * double(s[size_t(k) * n_in + n]);
      }
      bad += std::abs(by_refs - direct) > 1e-9 * (1 + std::abs(direct));
      bad += &args.ref_D.at({m, n}) != &dw[size_t(m) * n_in + n];
    }
  }
  std::printf("tile %d: rows %d, n_out %d, n_in %d: %s\n", G::ThreadblockShape::kM, rows,
              n_out, n_in, bad ? "MISMATCH" : "ok");
  return bad;
}

}  // namespace sobolev::cuda

int main() {
  using sobolev::cuda::Gemm;
  using sobolev::cuda::mismatches;
  const int bad = mismatches<Gemm<128, 64, 32>>(37, 12, 8) +
                  mismatches<Gemm<64, 32, 32>>(5, 40, 36);
  return bad ? 1 : 0;
}
