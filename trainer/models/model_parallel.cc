#include "trainer/models/model_parallel.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "core/check.h"
#include "trainer/models/family_registry.h"

namespace fulcrum::models {

bool ModelParallel::HeldByOtherStage(const std::string& module_path) const {
  if (!pipelined()) return false;
  constexpr char kLayers[] = "model.layers.";
  if (absl::StartsWith(module_path, kLayers)) {
    const std::string rest = module_path.substr(sizeof(kLayers) - 1);
    int64_t index = 0;
    if (!absl::SimpleAtoi(rest.substr(0, rest.find('.')), &index)) return false;
    for (const auto& chunk : pipeline_chunks) {
      if (index >= chunk.layers.first && index < chunk.layers.first + chunk.layers.count) {
        return false;
      }
    }
    return true;
  }
  if (absl::StartsWith(module_path, "lm_head") || absl::StartsWith(module_path, "model.norm")) {
    return !HoldsLast();
  }
  return false;
}

bool ModelParallel::HoldsFirst() const {
  if (pipeline_chunks.empty()) return true;
  for (const auto& chunk : pipeline_chunks) {
    if (chunk.first) return true;
  }
  return false;
}

bool ModelParallel::HoldsLast() const {
  if (pipeline_chunks.empty()) return true;
  for (const auto& chunk : pipeline_chunks) {
    if (chunk.last) return true;
  }
  return false;
}

HeadShard ShardHeads(int64_t num_heads, int64_t num_kv_heads,
                     const parallel::tensor::TensorParallel& tp) {
  const int size = tp.size(), rank = tp.rank();
  FULCRUM_CHECK(num_heads % size == 0, "num_attention_heads ", num_heads, " % tp ", size, " != 0");
  HeadShard shard;
  shard.num_heads = num_heads / size;
  if (num_kv_heads % size == 0) {
    shard.num_kv_heads = num_kv_heads / size;
    shard.first_kv_head = rank * shard.num_kv_heads;
    return shard;
  }
  FULCRUM_CHECK(size % num_kv_heads == 0, "num_key_value_heads ", num_kv_heads, " and tp ", size,
                ": neither divides the other");
  shard.kv_replicas = static_cast<int>(size / num_kv_heads);
  shard.num_kv_heads = 1;
  shard.first_kv_head = rank / shard.kv_replicas;
  return shard;
}

lora::LinearParallel ProjectionParallel(const std::string& module_name,
                                        const ModelParallel& parallel) {
  lora::LinearParallel out;
  out.tp = parallel.tp;
  switch (ProjectionSplit(module_name)) {
    case TpSplit::kColumn:
      out.shard = lora::LinearShard::kColumn;
      break;
    case TpSplit::kRow:
      out.shard = lora::LinearShard::kRow;
      break;
    case TpSplit::kVocab:
    case TpSplit::kReplicated:
      out.shard = lora::LinearShard::kNone;
      break;
  }
  return out;
}

}  // namespace fulcrum::models
