// The memory of one training rank, predicted from the recipe and the model's
// config before anything is allocated: what `fulcrum plan` prints and what
// `fulcrum train` checks before it builds the model (loop/memory_check.h).
//
//   MemoryBreakdown     bytes by what holds them (one rank)
//   StageMemory         one pipeline stage's rank: breakdown, in-flight
//                       micro-batches, activation bytes of one layer
//   MemoryPlan          every stage; the worst one
//   ActivationBytes     what one decoder layer saves for backward (one
//                       micro-batch), by recompute mode
//   PlanMemory          the whole model
//   CheckMemoryFits     the refusal message of a layout that cannot fit
//
// Activations follow what fulcrum's blocks save for backward (models/):
// RMSNorm saves its fp32 input and, when its weight trains, the normalised
// value; a linear layer saves its input when its weight trains or carries a
// LoRA adapter (the adapter's A reads it); CPU attention saves q, k, v and the
// fp32 softmax probabilities [B, H/tp, T, T] (and their bf16 copy in bf16);
// SwiGLU saves gate, up and the down projection's input; MoE
// saves the permuted tokens, each expert's SwiGLU, and the expert outputs the
// combine weights; MLA its latents, q and the head-expanded k. The peak comes
// at the end of the last stage's loss: the logits and their gradient (under
// tp the vocab-parallel loss's fp32 buffers) on top of every in-flight
// activation (models/loss.cc), or, on other stages, one layer's
// backward (recomputed when recompute is on) on top of them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "trainer/models/model_config.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::plan {

// Bytes one rank holds at its peak, by owner.
struct MemoryBreakdown {
  double parameters = 0;     // base weights of this rank's layers and shards
  double gradients = 0;      // their gradients (the dp buckets); 0 under LoRA
  double optimizer = 0;      // AdamW moments (+ fp32 masters of bf16 weights), ZeRO-1: / dp
  double lora = 0;           // adapters + their gradients and AdamW state
  double activations = 0;    // saved for backward by the in-flight micro-batches
  double loss = 0;           // logits and the loss's fp32 buffers (last stage) or one
                             // layer's backward working set
  double communication = 0;  // reduce-scatter chunks, pp receive buffers, tp/sp gathers,
                             // MoE all-to-all buffers
  double runtime = 0;        // the process itself: LibTorch, MPI, allocator (CPU RSS)
  double total() const {
    return parameters + gradients + optimizer + lora + activations + loss + communication + runtime;
  }
};

struct StageMemory {
  int stage = 0;                 // pipeline stage (its ranks are alike over dp, tp, ep)
  int in_flight = 1;             // (micro-batch, chunk) pairs whose activations are held at once
  int64_t layers = 0;            // decoder layers the stage holds
  double layer_activations = 0;  // bytes one micro-batch saves in one (average) layer
  double trainable_params = 0;   // weights or adapters this rank trains (dp-reduced gradients)
  MemoryBreakdown bytes;
};

struct MemoryPlan {
  std::vector<StageMemory> stages;  // one per pipeline stage
  int worst = 0;                    // index of the stage with the largest total
  const StageMemory& worst_stage() const { return stages[static_cast<size_t>(worst)]; }
  double peak_bytes() const { return worst_stage().bytes.total(); }
};

struct MemoryOptions {
  // The process's own footprint, added to every rank.
  double runtime_bytes = 0;
  // What the allocator holds per byte of the step's transient tensors
  // (activations, loss, communication buffers) at the peak.
  double transient_factor = 1.0;
  // CUDA sizes the loss's chunks of logits larger (models/loss.h).
  bool cuda = false;
};

// MemoryOptions of a rank on `device` ("cpu" | "cuda").
//
// CPU: fulcrum's main() keeps freed memory in the process (no mmap, no trim:
// steps reuse their buffers instead of page-faulting them again), so the
// peak RSS is the high-water mark of a heap where each step's transient
// tensors leave holes among longer-lived ones. Measured on this machine's
// Debian LibTorch 1.13 + Open MPI (scripts/bench_plan.sh, one rank of the
// 55M bench Llama at micro-batch 1, 2 and 4): 190 MiB for the process with
// a negligible model, 150 MiB more once large GEMMs have touched their BLAS
// workspace, and 1.37 bytes of heap per byte of transient tensors.
// CUDA: a context with cuBLAS workspace and NCCL buffers (~1 GiB); the
// caching allocator's fragmentation ~10%.
MemoryOptions MemoryOptionsFor(const std::string& device);

// What one micro-batch saves in one decoder layer `layer`, on a rank of
// `recipe`'s layout (tp shards; sequence parallel norms on T/tp tokens).
// recompute: "none" | "selective" | "full".
double ActivationBytes(const models::ModelConfig& config, const recipe::Recipe& recipe,
                       const std::string& recompute, int64_t layer);

// LoRA adapter parameters of decoder layer `layer` on one rank (0 for full
// fine-tuning): r x (in + out) per adapted linear, the split side / tp.
double LayerAdapterParams(const models::ModelConfig& config, const recipe::Recipe& recipe,
                          int64_t layer);

// The memory of every pipeline stage's rank. Errors: a pipeline layout the
// stage partition or the schedule refuses (messages name the recipe keys).
absl::StatusOr<MemoryPlan> PlanMemory(const models::ModelConfig& config,
                                      const recipe::Recipe& recipe, const MemoryOptions& options);

// The recompute mode of `recipe` (train.recompute).
std::string RecomputeMode(const recipe::Recipe& recipe);

// ResourceExhausted naming the recipe, the worst stage, the parallel keys,
// the predicted breakdown and `available_bytes` when the plan exceeds it;
// OK when it fits or when available_bytes <= 0 (unknown). `available_from`
// says where the number came from ("host MemAvailable / 2 local ranks").
absl::Status CheckMemoryFits(const MemoryPlan& plan, const models::ModelConfig& config,
                             const recipe::Recipe& recipe, double available_bytes,
                             const std::string& available_from);

// "1.25 GiB" / "512.0 MiB".
std::string FormatBytes(double bytes);

}  // namespace fulcrum::plan
