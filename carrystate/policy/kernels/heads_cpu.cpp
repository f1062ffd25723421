// The rollout's sampling of one categorical choice on the CPU (`CategoricalHead.act`, policy/heads.py), in one
// pass instead of the ~8 small tensor ops the torch version runs per step: Gumbel-max, argmax over actions of
// log p + g with g = -log(-log u), and the chosen action's log-probability. The log-probabilities and the
// uniform numbers come in from torch (log_softmax, and rand with the run's generator), so the stored
// log-probability is torch's value and the random stream is the generator's.
#include <torch/extension.h>
#include <cmath>
#include <vector>

// logp [B, A] float32 (log-probabilities), u [B, A] float32 uniform in [0, 1) -> action [B] int64, its
// log-probability [B]. Ties go to the first action, and a NaN sum wins (the first one), as torch's argmax.
std::vector<torch::Tensor> gumbel_max(torch::Tensor logp, torch::Tensor u) {
  TORCH_CHECK(logp.dtype() == torch::kFloat32 && u.dtype() == torch::kFloat32 && logp.dim() == 2 &&
                  logp.sizes() == u.sizes(),
              "gumbel_max takes float32 logp and u of one shape [B, A]");
  const auto lp = logp.contiguous(), uc = u.contiguous();
  const int64_t B = lp.size(0), A = lp.size(1);
  auto action = torch::empty({B}, lp.options().dtype(torch::kInt64));
  auto chosen = torch::empty({B}, lp.options());
  const float *l = lp.data_ptr<float>(), *r = uc.data_ptr<float>();
  int64_t* a = action.data_ptr<int64_t>();
  float* c = chosen.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    const float* lb = l + b * A;
    const float* rb = r + b * A;
    int64_t best = 0;
    float top = lb[0] - std::log(-std::log(rb[0]));
    for (int64_t k = 1; k < A && !std::isnan(top); ++k) {
      const float v = lb[k] - std::log(-std::log(rb[k]));
      if (v > top || std::isnan(v)) {
        top = v;
        best = k;
      }
    }
    a[b] = best;
    c[b] = lb[best];
  }
  return {action, chosen};
}
