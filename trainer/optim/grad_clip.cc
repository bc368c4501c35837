#include "trainer/optim/grad_clip.h"

#include <algorithm>
#include <cmath>

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

torch::Tensor GlobalGradNorm(const std::vector<torch::Tensor>& counted,
                             const std::vector<parallel::Communicator*>& sum_over) {
  torch::NoGradGuard no_grad;
  torch::Device device = torch::kCPU;
  for (const torch::Tensor& t : counted) {
    if (t.defined()) device = t.device();
  }
  // [1] fp32: the communicators reduce it in place; 0-dim at the end.
  torch::Tensor sum_sq =
      torch::zeros({1}, torch::TensorOptions().dtype(torch::kFloat).device(device));
  for (const torch::Tensor& g : counted) {
    if (!g.defined() || g.numel() == 0) continue;
    sum_sq.add_(at::linalg_vector_norm(g, 2, c10::nullopt, false, torch::kFloat).square());
  }
  for (parallel::Communicator* comm : sum_over) {
    if (comm != nullptr && comm->size() > 1) comm->AllReduce(sum_sq, parallel::ReduceOp::kSum);
  }
  return sum_sq.sqrt().squeeze(0);
}

float ClipCoefficient(float norm, double max_norm) {
  if (max_norm <= 0.0) return 1.0f;
  // ClipGradNorm's tensor ops in fp32: full(max_norm) / (norm + 1e-6), clamped.
  const float factor = static_cast<float>(max_norm) / (norm + 1e-6f);
  return std::isnan(factor) ? factor : std::min(factor, 1.0f);
}

}  // namespace fulcrum::optim
