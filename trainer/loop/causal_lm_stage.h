// CausalLmStage: this rank's pipeline chunks of a CausalLM as the
// PipelineExecutor sees them (parallel/pipeline/pipeline_executor.h), for one
// step's micro-batches at a time.
//
// The last virtual stage turns its logits into the micro-batch's summed
// target loss divided by the step's global target count — the same
// normalisation as the single-rank step — and keeps the unscaled sum for the
// logs.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "data/dataset/loader.h"
#include "parallel/pipeline/pipeline_executor.h"
#include "parallel/pipeline/stage_partition.h"
#include "trainer/models/causal_lm.h"

namespace fulcrum::loop {

class CausalLmStage : public parallel::pipeline::StageModel {
 public:
  // `model` is built for `chunks` (ModelParallel::pipeline_chunks).
  CausalLmStage(models::CausalLMImpl& model, std::vector<parallel::pipeline::StageChunk> chunks,
                torch::Device device);

  // The step's micro-batches (kept by reference until the next call) and the
  // loss denominator (the global batch's target count). Resets loss_sum() and
  // logits(). Undefined optional inputs (masks, positions) stay undefined.
  void SetBatch(const std::vector<data::MicroBatch>& micro_batches, double denominator);

  torch::Tensor Forward(int chunk, int micro_batch, const torch::Tensor& input) override;
  std::vector<int64_t> ActivationShape(int chunk, int micro_batch) const override;
  torch::TensorOptions ActivationOptions() const override;
  std::vector<torch::Tensor> ChunkParameters(int chunk) const override;

  // Summed target losses of this step's micro-batches (0-dim fp32; zero on a
  // stage without the last virtual stage).
  const torch::Tensor& loss_sum() const { return loss_sum_; }
  const std::vector<parallel::pipeline::StageChunk>& chunks() const { return chunks_; }
  // Keep the last virtual stage's logits (detached, by micro-batch) until the
  // next SetBatch: `fulcrum score` writes them.
  void KeepLogits(bool keep) { keep_logits_ = keep; }
  const std::vector<torch::Tensor>& logits() const { return logits_; }

 private:
  models::ForwardInputs InputsOf(int micro_batch) const;

  models::CausalLMImpl& model_;
  std::vector<parallel::pipeline::StageChunk> chunks_;
  torch::Device device_;
  torch::TensorOptions activation_options_;               // the parameters' dtype and device
  std::vector<std::vector<torch::Tensor>> chunk_params_;  // [chunk] -> trainable parameters
  const std::vector<data::MicroBatch>* micro_batches_ = nullptr;
  double denominator_ = 1.0;
  torch::Tensor loss_sum_;
  bool keep_logits_ = false;
  std::vector<torch::Tensor> logits_;
};

// The trainable parameters of each chunk, by HF name: the chunk's layers,
// plus the embedding on the first virtual stage and the final norm, lm_head
// (or the tied embedding copy) on the last.
std::vector<std::vector<torch::Tensor>> ChunkTrainableParameters(
    models::CausalLMImpl& model, const std::vector<parallel::pipeline::StageChunk>& chunks);

}  // namespace fulcrum::loop
