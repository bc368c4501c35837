#include "trainer/optim/grad_clip.h"

namespace fulcrum::optim {

torch::Tensor ClipGradNorm(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  std::vector<torch::Tensor> norms;  // each 0-dim fp32
  for (const torch::Tensor& p : params) {
    const torch::Tensor& g = p.grad();
    if (!g.defined()) continue;
    grads.push_back(g);
    norms.push_back(at::linalg_vector_norm(g, 2, c10::nullopt, false, torch::kFloat));
  }
  if (grads.empty()) return torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat));
  torch::Tensor total = at::linalg_vector_norm(torch::stack(norms), 2);  // 0-dim fp32
  if (max_norm > 0.0) {
    // clamp instead of a branch: the comparison would sync with the host.
    torch::Tensor coef = torch::full_like(total, max_norm).div_(total + 1e-6).clamp_max_(1.0);
    for (torch::Tensor& g : grads) g.mul_(coef);
  }
  return total;
}

}  // namespace fulcrum::optim
