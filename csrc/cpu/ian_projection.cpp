// CPU twin of the IAN Vector Alignment Block: y = LN(GELU_erf(x w1^T + b1) w2^T + b2).
//
// Same numerics as the torch backend (mage_fast/ops/ian_projection.py), which is the template of
// every backend: GEMM operands rounded to the input dtype, GEMM outputs and epilogues in fp32 (fp64
// for double). GEMMs go through ATen (widened operands: CPU has no low-precision GEMM with fp32
// output); the epilogues (bias + GELU, bias + LayerNorm, and their backward) are ours, row-parallel
// with at::parallel_for. Column reductions (bias / LayerNorm parameter grads) use one partial row
// per chunk of rows, summed in a fixed order: deterministic for a given thread count.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <vector>

#include "mage_fast/checks.h"
#include "mage_fast/ian_projection.h"
#include "mage_fast/math.h"

namespace mage_fast {
namespace {

using math::gelu;
using math::gelu_grad;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ian_projection_fwd_cpu(
    const at::Tensor& x_, const at::Tensor& w1_, const at::Tensor& b1_, const at::Tensor& w2_,
    const at::Tensor& b2_, const at::Tensor& ln_w_, const at::Tensor& ln_b_, double eps, bool save) {
  checks::ian_projection_fwd(x_, w1_, w2_, {{"b1", &b1_}, {"b2", &b2_}, {"ln_w", &ln_w_}, {"ln_b", &ln_b_}}, eps,
                             c10::DeviceType::CPU);
  const auto dt = x_.scalar_type();
  const auto acc = at::toOpMathType(dt);
  const at::Tensor x = x_.contiguous(), b1 = b1_.contiguous(), b2 = b2_.contiguous();
  const at::Tensor ln_w = ln_w_.contiguous(), ln_b = ln_b_.contiguous();
  const int64_t N = x.size(0), D = w1_.size(0);

  at::Tensor z = at::mm(x.to(acc), w1_.to(acc).t()).contiguous();  // (N, D) fp32
  at::Tensor z1 = at::empty({save ? N : 0, save ? D : 0}, x.options());  // the GELU input, for backward only
  at::Tensor h = at::empty({N, D}, x.options());
  at::Tensor y = at::empty({N, D}, x.options());
  at::Tensor xhat = at::empty({save ? N : 0, save ? D : 0}, x.options());
  at::Tensor rstd = at::empty({save ? N : 0}, x.options().dtype(at::kFloat));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dt, "ian_projection_fwd_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    const A* zp = z.data_ptr<A>();
    const scalar_t* b1p = b1.data_ptr<scalar_t>();
    scalar_t* z1p = save ? z1.data_ptr<scalar_t>() : nullptr;
    scalar_t* hp = h.data_ptr<scalar_t>();
    // Epilogue of GEMM1: + b1, exact GELU, in fp32; z1 kept (rounded) when the backward needs it.
    at::parallel_for(0, N, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = 0; c < D; ++c) {
          const A v = zp[r * D + c] + static_cast<A>(b1p[c]);
          if (save) z1p[r * D + c] = static_cast<scalar_t>(v);
          hp[r * D + c] = static_cast<scalar_t>(gelu(v));
        }
      }
    });
  });

  at::Tensor z2 = at::mm(h.to(acc), w2_.to(acc).t()).contiguous();  // (N, D) fp32

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dt, "ian_projection_fwd_cpu_ln", [&] {
    using A = at::opmath_type<scalar_t>;
    A* zp = z2.data_ptr<A>();
    const scalar_t* b2p = b2.data_ptr<scalar_t>();
    const scalar_t* gp = ln_w.data_ptr<scalar_t>();
    const scalar_t* bp = ln_b.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    scalar_t* xhp = save ? xhat.data_ptr<scalar_t>() : nullptr;
    float* rsp = save ? rstd.data_ptr<float>() : nullptr;
    // Epilogue of GEMM2: + b2, LayerNorm (two-pass mean / variance in fp32), affine.
    at::parallel_for(0, N, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        A* row = zp + r * D;
        A sum = 0;
        for (int64_t c = 0; c < D; ++c) {
          row[c] += static_cast<A>(b2p[c]);
          sum += row[c];
        }
        const A mean = sum / A(D);
        A sq = 0;
        for (int64_t c = 0; c < D; ++c) sq += (row[c] - mean) * (row[c] - mean);
        const A rs = A(1) / std::sqrt(sq / A(D) + A(eps));
        for (int64_t c = 0; c < D; ++c) {
          const A xh = (row[c] - mean) * rs;
          yp[r * D + c] = static_cast<scalar_t>(xh * static_cast<A>(gp[c]) + static_cast<A>(bp[c]));
          if (save) xhp[r * D + c] = static_cast<scalar_t>(xh);
        }
        if (save) rsp[r] = static_cast<float>(rs);
      }
    });
  });
  return save ? std::tuple{y, z1, xhat, rstd} : ian_projection_unsaved(y, x);
}

Grads7 ian_projection_bwd_cpu(const at::Tensor& dy_, const at::Tensor& x_, const at::Tensor& w1,
                              const at::Tensor& w2, const at::Tensor& ln_w_, const at::Tensor& z1_,
                              const at::Tensor& xhat_, const at::Tensor& rstd_, std::array<bool, 7> needs) {
  const IanBwdInputs in =
      ian_projection_bwd_inputs(dy_, x_, w1, w2, ln_w_, z1_, xhat_, rstd_, needs, c10::DeviceType::CPU);
  const int64_t N = x_.size(0), D = w1.size(0);
  const auto dt = x_.scalar_type();
  const auto acc = at::toOpMathType(dt);
  const auto [nx, nw1, nb1, nw2, nb2, nlw, nlb] = needs;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(N, at::get_num_threads()));
  const int64_t per = N > 0 ? (N + chunks - 1) / chunks : 1;

  at::Tensor dz2 = at::empty({in.need_dz2 ? N : 0, in.need_dz2 ? D : 0}, x_.options().dtype(acc));
  at::Tensor dz2_op = at::empty_like(dz2, x_.options());
  // Column partials: [0] dln_w, [1] dln_b, [2] db2 per chunk, summed after the loop.
  at::Tensor part = at::zeros({3, chunks, D}, x_.options().dtype(acc));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dt, "ian_projection_bwd_cpu_ln", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* dyp = in.dy.data_ptr<scalar_t>();
    const scalar_t* xhp = in.xhat.data_ptr<scalar_t>();
    const scalar_t* gp = in.ln_w.data_ptr<scalar_t>();
    const float* rsp = in.rstd.data_ptr<float>();
    A* pp = part.data_ptr<A>();
    A* dzp = in.need_dz2 ? dz2.data_ptr<A>() : nullptr;
    scalar_t* dzo = in.need_dz2 ? dz2_op.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t ch = c0; ch < c1; ++ch) {
        A* pw = pp + (0 * chunks + ch) * D;
        A* pb = pp + (1 * chunks + ch) * D;
        A* pb2 = pp + (2 * chunks + ch) * D;
        const int64_t r_end = std::min(N, (ch + 1) * per);
        for (int64_t r = ch * per; r < r_end; ++r) {
          const scalar_t* g = dyp + r * D;
          const scalar_t* xh = xhp + r * D;
          A m1 = 0, m2 = 0;
          for (int64_t c = 0; c < D; ++c) {
            const A gv = static_cast<A>(g[c]), xv = static_cast<A>(xh[c]);
            pw[c] += gv * xv;
            pb[c] += gv;
            const A dxh = gv * static_cast<A>(gp[c]);
            m1 += dxh;
            m2 += dxh * xv;
          }
          if (!in.need_dz2) continue;
          m1 /= A(D);
          m2 /= A(D);
          const A rs = static_cast<A>(rsp[r]);
          for (int64_t c = 0; c < D; ++c) {
            const A xv = static_cast<A>(xh[c]);
            const A v = rs * (static_cast<A>(g[c]) * static_cast<A>(gp[c]) - m1 - xv * m2);
            dzp[r * D + c] = v;
            dzo[r * D + c] = static_cast<scalar_t>(v);
            pb2[c] += v;
          }
        }
      }
    });
  });
  const at::Tensor colsum = part.sum(1);  // (3, D), fixed order
  const auto empty_like_src = [](const at::Tensor& src) { return at::empty({0}, src.options()); };
  at::Tensor dx = empty_like_src(x_), dw1 = empty_like_src(w1), db1 = empty_like_src(w1);
  at::Tensor dw2 = empty_like_src(w2), db2 = empty_like_src(w2);
  // copy=true: rows of one (3, D) tensor must not come back as aliasing outputs.
  at::Tensor dln_w = nlw ? colsum[0].to(ln_w_.scalar_type(), false, true) : empty_like_src(ln_w_);
  at::Tensor dln_b = nlb ? colsum[1].to(ln_w_.scalar_type(), false, true) : empty_like_src(ln_w_);
  if (nb2) db2 = colsum[2].to(w2.scalar_type(), false, true);
  if (!in.need_dz2) return {dx, dw1, db1, dw2, db2, dln_w, dln_b};

  const at::Tensor dz2_w = dz2_op.to(acc);  // operand rounded to dt, widened exactly
  if (nw2) {
    // Recompute GELU(in.z1) instead of having stored it.
    at::Tensor h = at::empty({N, D}, x_.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dt, "ian_projection_bwd_cpu_gelu", [&] {
      using A = at::opmath_type<scalar_t>;
      const scalar_t* zp = in.z1.data_ptr<scalar_t>();
      scalar_t* hp = h.data_ptr<scalar_t>();
      at::parallel_for(0, N * D, 4096, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) hp[i] = static_cast<scalar_t>(gelu(static_cast<A>(zp[i])));
      });
    });
    dw2 = at::mm(dz2_w.t(), h.to(acc)).to(w2.scalar_type());
  }
  if (!in.need_dz1) return {dx, dw1, db1, dw2, db2, dln_w, dln_b};

  at::Tensor dz1 = at::mm(dz2_w, w2.to(acc)).contiguous();  // (N, D) fp32
  at::Tensor dz1_op = at::empty({N, D}, x_.options());
  at::Tensor part1 = at::zeros({chunks, D}, x_.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dt, "ian_projection_bwd_cpu_dgelu", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* zp = in.z1.data_ptr<scalar_t>();
    A* dp = dz1.data_ptr<A>();
    scalar_t* op_ = dz1_op.data_ptr<scalar_t>();
    A* pp = part1.data_ptr<A>();
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t ch = c0; ch < c1; ++ch) {
        A* pb = pp + ch * D;
        const int64_t r_end = std::min(N, (ch + 1) * per);
        for (int64_t r = ch * per; r < r_end; ++r) {
          for (int64_t c = 0; c < D; ++c) {
            const int64_t i = r * D + c;
            const A v = dp[i] * gelu_grad(static_cast<A>(zp[i]));
            pb[c] += v;
            op_[i] = static_cast<scalar_t>(v);
          }
        }
      }
    });
  });
  if (nb1) db1 = part1.sum(0).to(w1.scalar_type());
  const at::Tensor dz1_w = dz1_op.to(acc);
  if (nw1) dw1 = at::mm(dz1_w.t(), x_.to(acc)).to(w1.scalar_type());
  if (nx) dx = at::mm(dz1_w, w1.to(acc)).to(dt);
  return {dx, dw1, db1, dw2, db2, dln_w, dln_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(mage_fast, CPU, m) {
  m.impl("ian_projection_fwd", &ian_projection_fwd_cpu);
  m.impl("ian_projection_bwd", &ian_projection_bwd_cpu);
}

}  // namespace mage_fast
