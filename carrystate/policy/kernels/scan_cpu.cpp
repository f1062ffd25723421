// The `scan` recurrence on the CPU: per step one GEMM (ATen) and one fused elementwise pass, forward and
// backward, instead of ~10 separate PyTorch ops per step. Same contract and math as `LSTMScan`, the torch-op
// recurrence (gate order i, f, g, o; a reset multiplies the carried h and c by keep = 0 before the step).
// Built by kernels/cpu.py with torch.utils.cpp_extension, with -ffast-math -fno-finite-math-only: the compiler
// may reorder float math, and expf vectorizes, but NaN and infinity keep their meaning, so a non-finite input
// gives a non-finite output as torch's ops do (never a finite value that hides it).
// With `bf16` every matrix product takes bfloat16 operands (fp32 accumulation, the result rounded to bf16 as
// torch's autocast does) and everything else stays fp32: the gates' sum, the elementwise math, h and c
// (carrystate/precision.py).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

// glibc declares expf's vector versions (libmvec) only under __FAST_MATH__, which -fno-finite-math-only
// undefines; declared here, the loops below call them a whole vector at a time as before.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__FAST_MATH__)
extern "C" float expf(float) noexcept __attribute__((__simd__("notinbranch")));
#endif

namespace {

// exp's argument is kept where it cannot overflow: beyond |x| = 40 the sigmoid is 0 or 1 and the tanh -1 or 1
// in float anyway. std::max/min with x first return x where it is NaN (std::fmax/fmin would drop the NaN).
inline float clamp40(float x) { return std::min(std::max(x, -40.0f), 40.0f); }
inline float sigm(float x) { return 1.0f / (1.0f + std::exp(-clamp40(x))); }
inline float tanh_(float x) { return 2.0f / (1.0f + std::exp(-2.0f * clamp40(x))) - 1.0f; }

// bf16 <-> fp32 by bits, so that the elementwise passes read the products' bf16 results and write the next
// product's bf16 operand themselves (no separate conversion passes). to_bf16 rounds to nearest even and keeps
// NaN a NaN, as c10::BFloat16 does.
inline float from_bf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return (u & 0x7fffffffu) > 0x7f800000u ? static_cast<uint16_t>(0x7fc0u) : static_cast<uint16_t>(rounded);
}
inline const uint16_t* bf16_data(const torch::Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>());
}
inline uint16_t* bf16_data(torch::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()); }

// x [n] fp32 -> out [n] bf16
inline void round_into(const float* x, uint16_t* out, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) out[k] = to_bf16(x[k]);
}

// x (fp32 or bf16) -> its values rounded to bf16, as a contiguous fp32 tensor of its shape
inline torch::Tensor rounded(const torch::Tensor& x) {
  const auto in = x.contiguous();
  auto out = torch::empty(in.sizes(), in.options().dtype(torch::kFloat32));
  float* o = out.data_ptr<float>();
  const int64_t n = in.numel();
  if (in.scalar_type() == torch::kBFloat16) {
    const uint16_t* u = bf16_data(in);
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) o[k] = from_bf16(u[k]);
  } else {
    const float* f = in.data_ptr<float>();
#pragma omp simd
    for (int64_t k = 0; k < n; ++k) o[k] = from_bf16(to_bf16(f[k]));
  }
  return out;
}

// t's values rounded to bf16 in place (fp32, contiguous)
inline void round_in_place(torch::Tensor& t) {
  float* f = t.data_ptr<float>();
  const int64_t n = t.numel();
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) f[k] = from_bf16(to_bf16(f[k]));
}

}  // namespace

// pre_x [T, B, 4H] (x @ W_ih^T + biases; with bf16 the bf16 product), keep [T, B], h0, c0 [B, H], w_hh [4H, H] ->
// y [T, B, H], act [T, B, 4H] (activated gates), h_prev, c_prev [T, B, H] (the masked state each step read),
// tanh_c [T, B, H], c_T [B, H], and with bf16 h_prev rounded to bf16 (the recurrent products' operand, which
// the backward's weight gradient reuses; empty in fp32).
std::vector<torch::Tensor> forward(torch::Tensor pre_x, torch::Tensor keep, torch::Tensor h0, torch::Tensor c0,
                                   torch::Tensor w_hh, bool bf16) {
  const int64_t T = pre_x.size(0), B = pre_x.size(1), G = pre_x.size(2), H = G / 4;
  const auto f32 = h0.options();
  auto act = torch::empty({T, B, G}, f32);
  auto y = torch::empty({T, B, H}, f32);
  auto h_prev = torch::empty({T, B, H}, f32);
  auto c_prev = torch::empty({T, B, H}, f32);
  auto tanh_c = torch::empty({T, B, H}, f32);
  auto c_end = torch::empty({B, H}, f32);
  auto w_t = bf16 ? w_hh.t().contiguous().to(torch::kBFloat16) : w_hh.t();
  // bf16: h_prev rounded as each step's elementwise pass writes it, and each step's recurrent product
  auto h16 = bf16 ? torch::empty({T, B, H}, f32.dtype(torch::kBFloat16)) : torch::empty({0});
  auto rec = bf16 ? torch::empty({B, G}, h16.options()) : torch::empty({0});
  const float* kp = keep.data_ptr<float>();
  {
    const float* h = h0.data_ptr<float>();
    const float* c = c0.data_ptr<float>();
    float* hp = h_prev.data_ptr<float>();
    float* cp = c_prev.data_ptr<float>();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < H; ++j) {
        hp[b * H + j] = h[b * H + j] * kp[b];
        cp[b * H + j] = c[b * H + j] * kp[b];
      }
  }
  if (bf16) round_into(h_prev.data_ptr<float>(), bf16_data(h16), B * H);
  for (int64_t t = 0; t < T; ++t) {
    auto a_t = act[t];
    float* a = a_t.data_ptr<float>();
    if (bf16) {  // the gates' sum in fp32 of the input product and the recurrent one, each rounded to bf16
      at::mm_out(rec, h16[t], w_t);
      const uint16_t* px = bf16_data(pre_x) + t * B * G;
      const uint16_t* r = bf16_data(rec);
#pragma omp simd
      for (int64_t k = 0; k < B * G; ++k) a[k] = from_bf16(px[k]) + from_bf16(r[k]);
    } else {
      at::addmm_out(a_t, pre_x[t], h_prev[t], w_t);
    }
    const float* cp = c_prev.data_ptr<float>() + t * B * H;
    float* yt = y.data_ptr<float>() + t * B * H;
    float* tc = tanh_c.data_ptr<float>() + t * B * H;
    const bool last = t + 1 == T;
    float* hn = last ? nullptr : h_prev.data_ptr<float>() + (t + 1) * B * H;
    uint16_t* hn16 = bf16 && !last ? bf16_data(h16) + (t + 1) * B * H : nullptr;
    float* cn = last ? c_end.data_ptr<float>() : c_prev.data_ptr<float>() + (t + 1) * B * H;
    const float* kn = last ? nullptr : kp + (t + 1) * B;
    at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        float* ab = a + b * G;
        const float keep_next = last ? 1.0f : kn[b];
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const float i = sigm(ab[j]), f = sigm(ab[H + j]), g = tanh_(ab[2 * H + j]), o = sigm(ab[3 * H + j]);
          ab[j] = i;
          ab[H + j] = f;
          ab[2 * H + j] = g;
          ab[3 * H + j] = o;
          const float c = f * cp[b * H + j] + i * g;
          const float tcj = tanh_(c);
          const float h = o * tcj;
          tc[b * H + j] = tcj;
          yt[b * H + j] = h;
          cn[b * H + j] = c * keep_next;  // the last step stores c_T unmasked (keep_next = 1)
          if (!last) hn[b * H + j] = h * keep_next;
        }
        if (hn16) round_into(hn + b * H, hn16 + b * H, H);
      }
    });
  }
  return {y, act, h_prev, c_prev, tanh_c, c_end, h16};
}

// dy [T, B, H], dh_T, dc_T [B, H] and what forward saved (with bf16 its h_prev rounded to bf16 as h_prev) ->
// d_pre [T, B, 4H] (with bf16 rounded to bf16: the operand of every product it enters), dh0, dc0 [B, H],
// d_w_hh [4H, H].
std::vector<torch::Tensor> backward(torch::Tensor dy, torch::Tensor dh_T, torch::Tensor dc_T, torch::Tensor keep,
                                    torch::Tensor w_hh, torch::Tensor act, torch::Tensor h_prev, torch::Tensor c_prev,
                                    torch::Tensor tanh_c, bool bf16) {
  const int64_t T = act.size(0), B = act.size(1), G = act.size(2), H = G / 4;
  auto d_pre = torch::empty(bf16 ? at::IntArrayRef{B, G} : act.sizes(), act.options());  // bf16: one step's
  auto dc = dc_T.clone();
  auto into_h = torch::empty({B, H}, act.options());  // d_pre[t+1] @ W_hh: the gradient into h_t, unmasked
  const float* kp = keep.data_ptr<float>();
  const auto w_b = bf16 ? w_hh.to(torch::kBFloat16) : w_hh;
  // bf16: d_pre rounded as the elementwise pass writes it (the products' operand), and the product into h
  auto d16 = bf16 ? torch::empty({T, B, G}, act.options().dtype(torch::kBFloat16)) : torch::empty({0});
  auto into16 = bf16 ? torch::empty({B, H}, d16.options()) : torch::empty({0});
  for (int64_t t = T - 1; t >= 0; --t) {
    const bool last = t == T - 1;
    const float* a = act.data_ptr<float>() + t * B * G;
    const float* cp = c_prev.data_ptr<float>() + t * B * H;
    const float* tc = tanh_c.data_ptr<float>() + t * B * H;
    const float* dyt = dy.data_ptr<float>() + t * B * H;
    const float* from = last ? dh_T.data_ptr<float>() : into_h.data_ptr<float>();
    const float* kn = last ? nullptr : kp + (t + 1) * B;
    const float* kt = kp + t * B;
    float* dp = d_pre.data_ptr<float>() + (bf16 ? 0 : t * B * G);
    float* dcp = dc.data_ptr<float>();
    uint16_t* dp16 = bf16 ? bf16_data(d16) + t * B * G : nullptr;
    at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const float* ab = a + b * G;
        float* db = dp + b * G;
        const float keep_next = last ? 1.0f : kn[b];
        const float keep_t = kt[b];
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const float i = ab[j], f = ab[H + j], g = ab[2 * H + j], o = ab[3 * H + j];
          const float tcj = tc[b * H + j];
          const float dh = dyt[b * H + j] + keep_next * from[b * H + j];
          const float dcj = dcp[b * H + j] + dh * o * (1.0f - tcj * tcj);
          db[j] = dcj * g * i * (1.0f - i);
          db[H + j] = dcj * cp[b * H + j] * f * (1.0f - f);
          db[2 * H + j] = dcj * i * (1.0f - g * g);
          db[3 * H + j] = dh * tcj * o * (1.0f - o);
          dcp[b * H + j] = dcj * f * keep_t;  // into c_{t-1}: through the forget gate and the reset mask
        }
        if (dp16) round_into(db, dp16 + b * G, G);
      }
    });
    if (bf16) {  // bf16 operands, the product rounded to bf16, read back as fp32
      at::mm_out(into16, d16[t], w_b);
      const uint16_t* r = bf16_data(into16);
      float* ih = into_h.data_ptr<float>();
#pragma omp simd
      for (int64_t k = 0; k < B * H; ++k) ih[k] = from_bf16(r[k]);
    } else {
      at::mm_out(into_h, d_pre[t], w_hh);
    }
  }
  auto dh0 = into_h * keep[0].unsqueeze(1);
  auto d_w = bf16 ? d16.view({T * B, G}).t().mm(h_prev.view({T * B, H})).to(torch::kFloat32)
                  : d_pre.view({T * B, G}).t().mm(h_prev.view({T * B, H}));
  return {bf16 ? d16 : d_pre, dh0, dc, d_w};
}

// One rollout step of every layer: x [B, in], h, c [L, B, H] (already zero where an episode starts), weights
// (nn.LSTM's flat list: w_ih, w_hh, b_ih, b_hh per layer) -> y [B, H], h', c' [L, B, H]. Per layer the same
// input GEMM (biases summed first), recurrent GEMM and elementwise math as the scan (scan.lstm_scan and
// forward above), so that a replay reproduces the rollout's state. `rounded_fp32` (with bf16): the weight
// matrices hold bf16 values as fp32, and each bf16 product runs as an fp32 GEMM of the rounded operands, rounded
// to bf16 (the same values up to the order of summation; faster for few rows, precision.py: Linear).
std::vector<torch::Tensor> step(torch::Tensor x, torch::Tensor h, torch::Tensor c, std::vector<torch::Tensor> weights,
                                bool bf16, bool rounded_fp32) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  const int64_t L = h.size(0), B = h.size(1), H = h.size(2), G = 4 * H;
  auto h_in = h.contiguous(), c_in = c.contiguous();
  auto h_new = torch::empty_like(h_in);
  auto c_new = torch::empty_like(c_in);
  torch::Tensor inp = x;
  for (int64_t l = 0; l < L; ++l) {
    const auto& w_ih = weights[4 * l];
    const auto& w_hh = weights[4 * l + 1];
    auto bias = weights[4 * l + 2] + weights[4 * l + 3];
    torch::Tensor pre;
    if (bf16 && rounded_fp32) {  // as below, on fp32 units
      round_in_place(bias);
      pre = at::addmm(bias, rounded(inp), w_ih.t());
      auto rec = at::mm(rounded(h_in[l]), w_hh.t());
      float* p = pre.data_ptr<float>();
      const float* r = rec.data_ptr<float>();
#pragma omp simd
      for (int64_t k = 0; k < B * G; ++k) p[k] = from_bf16(to_bf16(p[k])) + from_bf16(to_bf16(r[k]));
    } else if (bf16) {  // the scan's rounding: the input product (with the bias) in bf16, the recurrent one added
                        // in fp32
      const auto b16 = torch::kBFloat16;
      const auto in16 = at::linear(inp.to(b16), w_ih.to(b16), bias.to(b16)).contiguous();
      const auto rec16 = at::mm(h_in[l].to(b16), w_hh.t().to(b16)).contiguous();
      pre = torch::empty({B, G}, h_in.options());
      float* p = pre.data_ptr<float>();
      const uint16_t *u = bf16_data(in16), *r = bf16_data(rec16);
#pragma omp simd
      for (int64_t k = 0; k < B * G; ++k) p[k] = from_bf16(u[k]) + from_bf16(r[k]);
    } else {
      pre = at::linear(inp, w_ih, bias).contiguous();
      at::addmm_out(pre, pre, h_in[l], w_hh.t());
    }
    const float* a = pre.data_ptr<float>();
    const float* cp = c_in.data_ptr<float>() + l * B * H;
    float* hn = h_new.data_ptr<float>() + l * B * H;
    float* cn = c_new.data_ptr<float>() + l * B * H;
    for (int64_t b = 0; b < B; ++b) {
      const float* ab = a + b * G;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const float i = sigm(ab[j]), f = sigm(ab[H + j]), g = tanh_(ab[2 * H + j]), o = sigm(ab[3 * H + j]);
        const float cj = f * cp[b * H + j] + i * g;
        cn[b * H + j] = cj;
        hn[b * H + j] = o * tanh_(cj);
      }
    }
    inp = h_new[l];
  }
  return {inp, h_new, c_new};
}

// A bf16 linear layer's product without gradients, for few rows: x [rows, in] (fp32 or bf16), w [out, in] and
// b [out] holding bf16 values as fp32 -> [rows, out] bf16. An fp32 GEMM of the bf16-rounded operands, rounded to
// bf16 (carrystate/precision.py: Linear), with autocast kept out of it.
torch::Tensor linear_rounded(torch::Tensor x, torch::Tensor w, torch::Tensor b) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  const auto xr = rounded(x);
  const auto out = at::addmm(b, xr.view({-1, w.size(1)}), w.t());
  auto out16 = torch::empty(out.sizes(), out.options().dtype(torch::kBFloat16));
  round_into(out.data_ptr<float>(), bf16_data(out16), out.numel());
  auto shape = x.sizes().vec();
  shape.back() = w.size(0);
  return out16.view(shape);
}

// tokens_cpu.cpp, compiled into the same library
std::tuple<torch::Tensor, int64_t> token_bag_forward(torch::Tensor obs, torch::Tensor table, int64_t F);
torch::Tensor token_bag_backward(torch::Tensor obs, torch::Tensor grad, int64_t F);
// heads_cpu.cpp
std::vector<torch::Tensor> gumbel_max(torch::Tensor logp, torch::Tensor u);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "scan forward (CPU)");
  m.def("backward", &backward, "scan backward (CPU)");
  m.def("step", &step, "one rollout step of every layer (CPU)");
  m.def("linear_rounded", &linear_rounded, "a small bf16 linear product as fp32 on rounded operands (CPU)");
  m.def("token_bag_forward", &token_bag_forward, "token encoder sum from uint8 tokens (CPU)");
  m.def("token_bag_backward", &token_bag_backward, "its gradient for the table (CPU)");
  m.def("gumbel_max", &gumbel_max, "one categorical choice sampled by Gumbel-max, and its log-probability (CPU)");
}
