#include "trainer/loop/checkpoint_state.h"

#include <ATen/CPUGeneratorImpl.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/check.h"
#include "core/status.h"
#include "trainer/models/hf_loading.h"

namespace fulcrum::loop {
namespace {

constexpr char kModel[] = "model/";
constexpr char kOptimizer[] = "optimizer/";

std::string GeneratorKey(int rank) { return absl::StrCat("rng/cpu_generator.", rank); }

checkpoint::ShardRegion SegmentOf(const models::ParamLayout& layout,
                                  const optim::LocalStateShard& shard) {
  checkpoint::ShardRegion region = RegionOf(layout);
  region.flat_begin = shard.flat_begin;
  region.flat_end = shard.flat_begin + shard.values.numel();
  return region;
}

// Reads `region` of `tensor` into `target` (any layout, any device).
absl::Status ReadInto(checkpoint::ShardedCheckpointReader& reader, const std::string& tensor,
                      const checkpoint::ShardRegion& region, torch::Tensor target) {
  if (target.is_contiguous() && target.device().is_cpu()) {
    return reader.Read(tensor, region, target);
  }
  torch::Tensor staged = torch::empty(target.sizes(), target.options().device(torch::kCPU));
  FULCRUM_RETURN_IF_ERROR(reader.Read(tensor, region, staged));
  target.copy_(staged);
  return absl::OkStatus();
}

// The saved tensor's global shape must be the model's.
absl::Status CheckShape(const checkpoint::ShardedCheckpointReader& reader,
                        const std::string& tensor, const std::vector<int64_t>& shape) {
  const std::string where = reader.dir() + "/metadata.json";
  auto it = reader.metadata().tensors.find(tensor);
  if (it == reader.metadata().tensors.end()) {
    return absl::DataLossError(absl::StrCat(where, ": missing tensor ", tensor,
                                            " (was the run's model or finetune section changed?)"));
  }
  if (it->second.shape != shape) {
    return absl::DataLossError(absl::StrCat(
        where, ": ", tensor, " has shape [", absl::StrJoin(it->second.shape, ", "),
        "], the model needs [", absl::StrJoin(shape, ", "), "] (a checkpoint of another model?)"));
  }
  return absl::OkStatus();
}

}  // namespace

LayoutIndex IndexLayouts(const std::vector<optim::NamedParameter>& params,
                         const std::vector<models::ParamLayout>& layouts) {
  std::map<std::string, const models::ParamLayout*> by_name;
  for (const models::ParamLayout& layout : layouts) by_name[layout.name] = &layout;
  LayoutIndex index;
  for (const optim::NamedParameter& p : params) {
    auto it = by_name.find(p.name);
    FULCRUM_CHECK(it != by_name.end(), "trainable parameter ", p.name, " has no parallel layout");
    index[p.name] = it->second;
  }
  return index;
}

checkpoint::ShardRegion RegionOf(const models::ParamLayout& layout) {
  const std::vector<int64_t> lengths = layout.param.sizes().vec();
  std::vector<int64_t> offsets(lengths.size(), 0);
  if (layout.shard_dim >= 0) {
    offsets[layout.shard_dim] = layout.tp.rank() / layout.kv_replicas * lengths[layout.shard_dim];
  }
  return checkpoint::ShardRegion::Box(offsets, lengths);
}

std::vector<checkpoint::LocalPiece> TrainingStatePieces(const LayoutIndex& layouts,
                                                        optim::Optimizer& optimizer,
                                                        torch::nn::Module& model, int rank,
                                                        int pp_rank) {
  auto tied_copy = [&](const models::ParamLayout& layout) {
    return layout.grad_sync == models::GradSync::kEmbedding && pp_rank > 0;
  };
  std::vector<checkpoint::LocalPiece> pieces;
  for (const optim::NamedParameter& p : optimizer.parameters()) {
    const models::ParamLayout& layout = *layouts.at(p.name);
    if (tied_copy(layout)) continue;
    pieces.push_back(
        {kModel + p.name, models::FullShape(layout), RegionOf(layout), p.param.detach()});
  }
  for (const auto& item : model.named_buffers()) {
    if (!models::IsPersistentBuffer(item.key())) continue;
    const std::vector<int64_t> shape = item.value().sizes().vec();
    pieces.push_back(
        {kModel + item.key(), shape, checkpoint::ShardRegion::Whole(shape), item.value().detach()});
  }
  for (optim::LocalStateShard& shard : optimizer.LocalState()) {
    const models::ParamLayout& layout = *layouts.at(shard.param);
    if (tied_copy(layout)) continue;
    pieces.push_back({kOptimizer + shard.key, models::FullShape(layout), SegmentOf(layout, shard),
                      shard.values});
  }
  const torch::Tensor generator = at::detail::getDefaultCPUGenerator().get_state();
  pieces.push_back({GeneratorKey(rank), generator.sizes().vec(),
                    checkpoint::ShardRegion::Whole(generator.sizes().vec()), generator});
  return pieces;
}

absl::Status RestoreTrainingState(checkpoint::ShardedCheckpointReader& reader,
                                  const LayoutIndex& layouts, optim::Optimizer& optimizer,
                                  torch::nn::Module& model, int rank) {
  torch::NoGradGuard no_grad;
  for (const optim::NamedParameter& p : optimizer.parameters()) {
    const models::ParamLayout& layout = *layouts.at(p.name);
    FULCRUM_RETURN_IF_ERROR(CheckShape(reader, kModel + p.name, models::FullShape(layout)));
    FULCRUM_RETURN_IF_ERROR(ReadInto(reader, kModel + p.name, RegionOf(layout), p.param.data()));
  }
  // Checkpoints of runs whose buffers were not trained keep the model's own.
  for (const auto& item : model.named_buffers()) {
    if (!models::IsPersistentBuffer(item.key()) || !reader.Has(kModel + item.key())) continue;
    const std::vector<int64_t> shape = item.value().sizes().vec();
    FULCRUM_RETURN_IF_ERROR(CheckShape(reader, kModel + item.key(), shape));
    FULCRUM_RETURN_IF_ERROR(
        ReadInto(reader, kModel + item.key(), checkpoint::ShardRegion::Whole(shape), item.value()));
  }
  for (optim::LocalStateShard& shard : optimizer.LocalState()) {
    const models::ParamLayout& layout = *layouts.at(shard.param);
    FULCRUM_RETURN_IF_ERROR(CheckShape(reader, kOptimizer + shard.key, models::FullShape(layout)));
    FULCRUM_RETURN_IF_ERROR(
        ReadInto(reader, kOptimizer + shard.key, SegmentOf(layout, shard), shard.values));
  }
  optimizer.RestoreStepCount(reader.metadata().header.optimizer_step);
  // A rank that did not exist in the saving run keeps its own generator.
  if (reader.Has(GeneratorKey(rank))) {
    FULCRUM_ASSIGN_OR_RETURN(const torch::Tensor state, reader.ReadWhole(GeneratorKey(rank)));
    at::Generator generator = at::detail::getDefaultCPUGenerator();
    generator.set_state(state);
  }
  return absl::OkStatus();
}

}  // namespace fulcrum::loop
