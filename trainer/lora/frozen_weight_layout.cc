#include "trainer/lora/frozen_weight_layout.h"

#include "trainer/lora/apply_lora.h"
#include "trainer/models/matrix_product.h"

namespace fulcrum::lora {
namespace {

constexpr int64_t kPageBytes = 4096;
constexpr int64_t kFloatBytes = 4;

}  // namespace

bool AliasedRowsMoveColumnMajor(int64_t out_features, int64_t in_features) {
  return out_features > 1 && in_features > 1 && (in_features * kFloatBytes) % kPageBytes == 0 &&
         (out_features * kFloatBytes) % kPageBytes != 0;
}

int64_t StoreAliasedFrozenWeightsColumnMajor(torch::nn::Module& model) {
  if (!models::MatrixProductUsesOneDnn()) return 0;
  int64_t moved = 0;
  for (const LoraLayer& l : LoraLayers(model)) {
    torch::Tensor& w = l.layer->weight;
    if (w.requires_grad() || !w.device().is_cpu() || w.scalar_type() != torch::kFloat ||
        w.dim() != 2 || !w.is_contiguous() || !AliasedRowsMoveColumnMajor(w.size(0), w.size(1))) {
      continue;
    }
    // The old block, freed here, is what the next weight of its size takes.
    w.set_data(w.t().contiguous().t());
    ++moved;
  }
  return moved;
}

}  // namespace fulcrum::lora
