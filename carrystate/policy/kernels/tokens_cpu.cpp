// The token encoder's sum on the CPU (`TokenEncoder`, policy/encoders.py), read straight from the uint8 token
// list: row r's output is the sum, over its present tokens (location byte != 255), of the table's presence row
// for (location, feature) plus value / 255 times its value row, which sits `256 * features` rows further on.
// The same sum `nn.EmbeddingBag` computes from index and weight lists, without building those lists, and a
// backward that adds each row's output gradient into the rows its tokens picked, without the sort that
// EmbeddingBag's backward runs. Both loops are deterministic: the forward splits work by observation row, the
// backward by table column, so no two threads ever add into the same float.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <tuple>
#include <vector>

// obs [R, S, 3] uint8, table [2 * 256 * F, E] float -> out [R, E], and the largest feature id among the present
// tokens (-1 if none): tokens whose feature id is F or more are left out of the sum, and the caller raises on them.
std::tuple<torch::Tensor, int64_t> token_bag_forward(torch::Tensor obs, torch::Tensor table, int64_t F) {
  TORCH_CHECK(obs.dtype() == torch::kUInt8 && obs.dim() == 3 && obs.size(2) == 3, "obs must be uint8 [R, S, 3]");
  TORCH_CHECK(table.dtype() == torch::kFloat32 && table.size(0) == 2 * 256 * F, "table must be float [512 F, E]");
  auto o_c = obs.contiguous();
  auto t_c = table.contiguous();
  const int64_t R = o_c.size(0), S = o_c.size(1), E = t_c.size(1), value_rows = 256 * F * E;
  auto out = torch::zeros({R, E}, t_c.options());
  const uint8_t* o = o_c.data_ptr<uint8_t>();
  const float* t = t_c.data_ptr<float>();
  float* y = out.data_ptr<float>();
  std::vector<int64_t> chunk_max(std::max<int64_t>(1, at::get_num_threads()), -1);
  at::parallel_for(0, R, 64, [&](int64_t r0, int64_t r1) {
    int64_t maxf = -1;
    for (int64_t r = r0; r < r1; ++r) {
      float* yr = y + r * E;
      const uint8_t* tok = o + r * S * 3;
      for (int64_t s = 0; s < S; ++s, tok += 3) {
        if (tok[0] == 255) continue;
        maxf = std::max<int64_t>(maxf, tok[1]);
        if (tok[1] >= F) continue;
        const float w = tok[2] / 255.0f;
        const float* p = t + (tok[0] * F + tok[1]) * E;
        const float* v = p + value_rows;
#pragma omp simd
        for (int64_t e = 0; e < E; ++e) yr[e] += p[e] + w * v[e];
      }
    }
    auto& slot = chunk_max[at::get_thread_num() % chunk_max.size()];
    slot = std::max(slot, maxf);
  });
  return {out, *std::max_element(chunk_max.begin(), chunk_max.end())};
}

// obs [R, S, 3] uint8, grad [R, E] (of the forward's output) -> the table's gradient [2 * 256 * F, E].
torch::Tensor token_bag_backward(torch::Tensor obs, torch::Tensor grad, int64_t F) {
  auto o_c = obs.contiguous();
  auto g_c = grad.contiguous();
  const int64_t R = o_c.size(0), S = o_c.size(1), E = g_c.size(1), value_rows = 256 * F * E;
  auto d_table = torch::zeros({2 * 256 * F, E}, g_c.options());
  const uint8_t* o = o_c.data_ptr<uint8_t>();
  const float* g = g_c.data_ptr<float>();
  float* d = d_table.data_ptr<float>();
  at::parallel_for(0, E, 16, [&](int64_t e0, int64_t e1) {
    for (int64_t r = 0; r < R; ++r) {
      const float* gr = g + r * E;
      const uint8_t* tok = o + r * S * 3;
      for (int64_t s = 0; s < S; ++s, tok += 3) {
        if (tok[0] == 255 || tok[1] >= F) continue;
        const float w = tok[2] / 255.0f;
        float* p = d + (tok[0] * F + tok[1]) * E;
        float* v = p + value_rows;
#pragma omp simd
        for (int64_t e = e0; e < e1; ++e) {
          p[e] += gr[e];
          v[e] += w * gr[e];
        }
      }
    }
  });
  return d_table;
}
