// FLOPs per trained token, from the model config.
//
// Full fine-tuning: 6 FLOPs per matmul weight per token (forward 2, backward
// 2 for the input gradient and 2 for the weight gradient) plus attention's
// score and value matmuls, 6 * 2 * T * head_dim * heads per layer per token
// (causal masking is not subtracted, as in PaLM's MFU accounting).
// LoRA: the frozen weights cost 4 per token (no weight gradient), the
// adapters 6 per adapter weight; attention is the same as full.
// The embedding lookup is not a matmul and is not counted; lm_head is.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace fulcrum::metrics {

struct FlopsModel {
  int64_t frozen_matmul_params = 0;     // weights that get no gradient
  int64_t trainable_matmul_params = 0;  // weights that get a gradient
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t head_dim = 0;
};

// Training FLOPs for one token in a sequence of length seq_len.
double TrainingFlopsPerToken(const FlopsModel& model, int64_t seq_len);

// Measured peak of this process on `device`: the best of `repeats` torch::mm
// (and, for fp32 on the CPU, as many of the model's own oneDNN products) of
// two n x n matrices of `dtype` (the training's parameter dtype, so that
// MFU is against what the hardware gives that dtype: fp32 on the CPU, bf16
// tensor cores on a GPU). n = 0: 2048 on the CPU, 8192 on CUDA. On the CPU
// n is halved while a product timed at 256 predicts over 1 s for it, so that
// a slow dtype (bf16 emulated) is measured in seconds, not a minute.
double MeasureGemmFlops(const torch::Device& device = torch::kCPU,
                        torch::ScalarType dtype = torch::kFloat, int64_t n = 0, int repeats = 3);

// On the CPU, for a dtype other than fp32 whose measured GEMM peak
// `dtype_peak` is below half of fp32's (measured here): a warning that names
// both rates, as the dtype is emulated and fp32 trains faster on this
// machine. Empty otherwise (and on a GPU, where bf16 has tensor cores).
std::string SlowDtypeWarning(const torch::Device& device, torch::ScalarType dtype,
                             double dtype_peak);

}  // namespace fulcrum::metrics
