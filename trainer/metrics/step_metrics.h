// What one optimizer step reports, and where it goes: the console (rank 0,
// progress with step/total and ETA) and a JSONL file (one object per step).
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/runtime/logger.h"
#include "trainer/metrics/phase_timer.h"
#include "trainer/metrics/tensorboard_writer.h"

namespace fulcrum::metrics {

struct StepMetrics {
  int64_t step = 0;  // 1-based index of the finished optimizer step
  int64_t total_steps = 0;
  double loss = 0.0;  // global mean over the step's target tokens
  double lr = 0.0;
  double grad_norm = 0.0;  // before clipping
  int64_t tokens = 0;      // tokens processed by all ranks in this step
  double step_seconds = 0.0;
  StepTimes times;                 // step_seconds broken down (the rest: host bookkeeping)
  double tokens_per_second = 0.0;  // all ranks
  double tokens_per_second_per_rank = 0.0;
  double flops_per_second_per_rank = 0.0;  // achieved, model FLOPs
  double peak_flops_per_rank = 0.0;
  double mfu = 0.0;  // achieved / peak
  int64_t rss_bytes = 0;
  int64_t peak_rss_bytes = 0;
  // The CachingHostAllocator's peaks (0 without it): large tensors' bytes,
  // and those plus its cached free blocks (metrics/memory.h).
  int64_t peak_host_tensor_bytes = 0;
  int64_t peak_host_reserved_bytes = 0;
  // On a GPU (0 on the CPU): the caching allocator's tensor bytes now and at
  // this step's peak, and what it holds from the device.
  int64_t device_bytes = 0;
  int64_t peak_device_bytes = 0;
  int64_t reserved_device_bytes = 0;
  int64_t optimizer_state_bytes = 0;
  // train.on_nonfinite: skip: this step's update was dropped (its gradient
  // norm was not finite), and how many steps of the run were, so far.
  bool skipped = false;
  int64_t skipped_steps = 0;  // this rank's moments and masters (1/dp of it under ZeRO-1)
  // Mixture-of-experts models only (empty / 0 otherwise): per MoE layer, in
  // layer order, the most loaded expert's tokens over the mean (1 = balanced)
  // over the step's global batch, and the balance loss the objective added
  // (summed over layers, mean over micro-batches; not part of `loss`), and
  // per MoE layer the (token, expert) choices dropped over capacity
  // (moe.capacity_factor; 0 when dropless).
  std::vector<double> expert_load_max_over_mean;
  std::vector<int64_t> moe_tokens_dropped;
  double moe_balance_loss = 0.0;
};

class MetricsSink {
 public:
  // jsonl_path "" = no JSONL, tensorboard_dir "" = no event file; the
  // console always. Only the rank that logs should create it.
  static absl::StatusOr<std::unique_ptr<MetricsSink>> Create(const std::string& jsonl_path,
                                                             const std::string& tensorboard_dir,
                                                             const parallel::Logger& logger,
                                                             int64_t console_every);
  // The JSONL line, the TensorBoard scalars, and every `console_every`
  // steps the console line.
  void Record(const StepMetrics& metrics);

 private:
  MetricsSink(const parallel::Logger& logger, int64_t console_every)
      : logger_(logger), console_every_(console_every) {}

  void RecordTensorBoard(const StepMetrics& metrics);

  const parallel::Logger& logger_;
  int64_t console_every_;
  std::ofstream jsonl_;
  std::unique_ptr<TensorBoardWriter> tensorboard_;
  double elapsed_seconds_ = 0.0;
  int64_t recorded_ = 0;
};

}  // namespace fulcrum::metrics
