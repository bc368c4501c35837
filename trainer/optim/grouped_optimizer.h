// GroupedOptimizer: optimizers over disjoint parameter groups, stepped,
// checkpointed and measured as one. Under expert parallelism with ZeRO-1 the
// dense parameters' state is sharded over dp and the routed experts' over the
// expert-data-parallel group, each by its own ShardedAdamW; the trainer sees
// one Optimizer whose state dict is the union of theirs.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "trainer/optim/optimizer.h"

namespace fulcrum::optim {

class GroupedOptimizer : public Optimizer {
 public:
  // groups: non-empty, their parameter names disjoint (checked).
  explicit GroupedOptimizer(std::vector<std::unique_ptr<Optimizer>> groups);

  // Steps every group in order (each may be collective over its own group).
  void Step(double lr, float grad_scale) override;
  // The groups' parameters, group 0's first.
  const std::vector<NamedParameter>& parameters() const override { return params_; }
  int64_t step_count() const override;
  // The union of the groups' state dicts, "step" once.
  std::vector<checkpoint::NamedTensor> StateDict() override;
  // Each group gets "step" and its own parameters' entries. A key no group
  // claims is an error naming it, found before any group loads; a group's own
  // error stops the load after the groups before it loaded (the trainer
  // aborts on it, so a half-loaded state is never trained on).
  absl::Status LoadStateDict(const std::map<std::string, torch::Tensor>& state) override;
  std::vector<LocalStateShard> LocalState() override;
  void RestoreStepCount(int64_t step) override;
  int64_t state_bytes() const override;

 private:
  std::vector<std::unique_ptr<Optimizer>> groups_;
  std::vector<NamedParameter> params_;
  std::map<std::string, size_t> group_of_;  // parameter name -> group index
};

}  // namespace fulcrum::optim
