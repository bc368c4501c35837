#include "trainer/models/rms_norm.h"

#include "trainer/models/recompute.h"

namespace fulcrum::models {

RMSNormImpl::RMSNormImpl(int64_t dim, double eps, const torch::TensorOptions& options) : eps_(eps) {
  weight = register_parameter("weight", torch::empty({dim}, options));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  if (!recompute_) return Normalize(x);
  RecomputedRegion region;
  region.fn = [this](const std::vector<torch::Tensor>& in, ForwardPass) {
    return Normalize(in[0]);
  };
  region.params = {weight};
  return RunRecomputed(region, {x});
}

torch::Tensor RMSNormImpl::Normalize(const torch::Tensor& x) {
  const torch::Tensor xf = x.to(torch::kFloat);
  const torch::Tensor variance = xf.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (xf * torch::rsqrt(variance + eps_)).to(x.scalar_type());
}

}  // namespace fulcrum::models
