// The memory model's terms against numbers computed by hand for a small
// Llama-shaped config (hidden 8, 2 heads of 4, 1 kv head, ffn 16, vocab 32,
// 2 layers) at micro-batch 2 x seq 4 (N = 8 tokens), fp32; the step-time
// model's FLOPs and bubble; the layout search's validity.
#include "trainer/plan/memory_model.h"

#include <gtest/gtest.h>

#include "trainer/plan/layout_search.h"
#include "trainer/plan/step_time_model.h"

namespace fulcrum::plan {
namespace {

models::ModelConfig Small() {
  models::ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 32;
  c.hidden_size = 8;
  c.intermediate_size = 16;
  c.num_layers = 2;
  c.num_heads = 2;
  c.num_kv_heads = 1;
  c.head_dim = 4;
  c.max_position_embeddings = 64;
  return c;
}

// Small() with every layer's MLP 4 experts (top-2) of width 16.
models::ModelConfig SmallMixtral() {
  models::ModelConfig c = Small();
  c.moe.style = models::MoeStyle::kMixtral;
  c.moe.num_experts = 4;
  c.moe.experts_per_token = 2;
  c.moe.expert_intermediate_size = 16;
  return c;
}

recipe::Recipe Full() {
  recipe::Recipe r;
  r.source = "r.yaml";
  r.finetune.method = "full";
  r.batch.global_batch = 4;
  r.batch.micro_batch = 2;
  r.batch.seq_len = 4;
  return r;
}

MemoryOptions Exact() { return MemoryOptions{}; }  // no runtime, no heap factor

// `ranks` ranks in one node, every rate `rate` (FLOP/s and bytes/s).
Hardware Node(int64_t ranks, double rate) {
  Hardware hw;
  hw.ranks = hw.ranks_per_node = ranks;
  hw.memory_bytes = 1e9;
  hw.peak_flops = hw.intra_node_bytes_per_s = hw.inter_node_bytes_per_s = rate;
  return hw;
}

// Per layer, one micro-batch, fp32 (x4 bytes), N = 8, h = 8, q = 8, kv = 4,
// f = 16, the rows' softmax max and 1 / sum 2 x b x H x T = 32 floats (no
// probabilities, models/attention_core.h):
//   norms      2 x (input 64 + 1/rms 8) floats                  =  576 B
//   attention  q 64 + k 32 + v 32 + rows 32 + o in 64             =  896 B
//   mlp        gate, up 2 x 128                                   = 1024 B
// q/k/v's and gate/up's input, the norms' output, is computed again from
// the norms' input and 1/rms (lora/normed_linear.h), and down's input
// silu(gate) * up from gate and up (lora/swiglu_linear.h).
constexpr double kNorms = 2 * 288;
constexpr double kAttention = 896;
constexpr double kLayerFull = kNorms + kAttention + 1024;

TEST(MemoryModelTest, ActivationsOfOneLayerByHand) {
  const models::ModelConfig c = Small();
  recipe::Recipe r = Full();
  EXPECT_DOUBLE_EQ(ActivationBytes(c, r, "none", 0), kLayerFull);
  // selective: the norms keep their input and 1/rms in every mode.
  EXPECT_DOUBLE_EQ(ActivationBytes(c, r, "selective", 0), kLayerFull);
  // full: the layer's input [N, h].
  EXPECT_DOUBLE_EQ(ActivationBytes(c, r, "full", 0), 8 * 8 * 4);
  // bf16: 2-byte tensors, fp32 1/rms and softmax statistics.
  r.precision.dtype = "bf16";
  EXPECT_DOUBLE_EQ(ActivationBytes(c, r, "none", 0),
                   2 * (128 + 32) + (128 + 64 + 64 + 128 + 128) + (2 * 256));
  // tp 2: heads, kv heads (1 replicated), ffn split; the norms stay whole
  // and the column shards compute the tp region's copy of their output again
  // too. Sequence parallel splits the norms, and the column groups gather
  // the norms' output again in backward instead of keeping it.
  r = Full();
  r.parallel.tp = 2;
  const double tp2 = kNorms + (8 * (4 + 2 * 4) * 4 + 16 * 4 + 8 * 4 * 4) + 2 * 256;
  EXPECT_DOUBLE_EQ(ActivationBytes(c, r, "none", 0), tp2);
  r.parallel.sequence_parallel = true;
  EXPECT_DOUBLE_EQ(ActivationBytes(c, r, "none", 0), tp2 - kNorms / 2);
}

TEST(MemoryModelTest, LoraKeepsTheInputsOfAdaptedLayersOnly) {
  const models::ModelConfig c = Small();
  recipe::Recipe r = Full();
  r.finetune.method = "lora";
  r.finetune.lora.rank = 2;
  r.finetune.lora.targets = {"q_proj", "v_proj"};
  // Norms: input and 1/rms. Attention: q, k, v, the softmax statistics, and
  // the [N, r] intermediates of 2 adapters; o's input is not kept, q/v's is
  // computed again. MLP: gate and up only.
  const double lora = kNorms + (512 + 128 + 2 * 8 * 2 * 4) + 2 * 512;
  EXPECT_DOUBLE_EQ(ActivationBytes(c, r, "none", 0), lora);
  // Adapter dropout: q and v keep their input (the mask is not replayed).
  r.finetune.lora.dropout = 0.1;
  EXPECT_DOUBLE_EQ(ActivationBytes(c, r, "none", 0), lora + 256);
  r.finetune.lora.dropout = 0.0;
  // Adapters: q [2, 8] + [8, 2], v [2, 8] + [4, 2] per layer.
  EXPECT_DOUBLE_EQ(LayerAdapterParams(c, r, 0), 32 + 24);
  // An adapter on down reads silu(gate) * up, recomputed in backward unless
  // dropout's mask must be replayed: then [N, f] is kept.
  r.finetune.lora.targets = {"down_proj"};
  const double recomputed = ActivationBytes(c, r, "none", 0);
  r.finetune.lora.dropout = 0.1;
  EXPECT_DOUBLE_EQ(ActivationBytes(c, r, "none", 0) - recomputed, 8 * 16 * 4);
}

// The plan adapts the layers ApplyLora adapts: "all-linear" leaves lm_head
// frozen (so its loss holds no logits' gradient for an adapter) until named.
TEST(MemoryModelTest, AllLinearAdaptsLmHeadOnlyWhenNamed) {
  const models::ModelConfig c = Small();
  recipe::Recipe r = Full();
  r.finetune.method = "lora";
  r.finetune.lora.targets = {"all-linear"};
  const double all_linear = PlanMemory(c, r, Exact())->worst_stage().bytes.loss;
  r.finetune.lora.targets = {"lm_head"};
  const double head = PlanMemory(c, r, Exact())->worst_stage().bytes.loss;
  r.finetune.lora.targets = {"all-linear", "lm_head"};
  EXPECT_DOUBLE_EQ(PlanMemory(c, r, Exact())->worst_stage().bytes.loss, head);
  EXPECT_NE(all_linear, head);
}

TEST(MemoryModelTest, StateAndPeakOfOneRankByHand) {
  const models::ModelConfig c = Small();
  recipe::Recipe r = Full();
  // Layer: q 64 + k 32 + v 32 + o 64 + mlp 384 + norms 16 = 592; embedding
  // and lm_head 256 each, final norm 8: 1704 parameters.
  const absl::StatusOr<MemoryPlan> plan = PlanMemory(c, r, Exact());
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->stages.size(), 1u);
  const MemoryBreakdown& b = plan->worst_stage().bytes;
  EXPECT_DOUBLE_EQ(b.parameters, 1704 * 4);
  EXPECT_DOUBLE_EQ(b.gradients, 1704 * 4);
  EXPECT_DOUBLE_EQ(b.optimizer, 1704 * 8);
  EXPECT_DOUBLE_EQ(b.lora, 0);
  // Two layers + the rope tables (cos, sin [N, head_dim]).
  EXPECT_DOUBLE_EQ(b.activations, 2 * kLayerFull + 2 * 8 * 4 * 4);
  // Loss (models::LinearCrossEntropySum): final norm 288, lm_head's input
  // 256 and its gradient 256, one chunk of all 8 rows' logits [8, 32] 1024
  // (their gradient written over them by the CPU kernel), lm_head's fp32
  // gradient [32, 8] 1024.
  EXPECT_DOUBLE_EQ(b.loss, 288 + 2 * 256 + 1024 + 1024);
  EXPECT_DOUBLE_EQ(b.communication, 0);

  // dp 2 + ZeRO-1: AdamW state halves; a bucket and the reduce-scatter chunk.
  r.parallel.dp = 2;
  r.parallel.zero = 1;
  r.batch.micro_batch = 2;
  const MemoryBreakdown z = PlanMemory(c, r, Exact())->worst_stage().bytes;
  EXPECT_DOUBLE_EQ(z.optimizer, 1704 * 8 / 2.0);
  EXPECT_DOUBLE_EQ(z.communication, 1704 * 4 + 1704 * 4 / 2.0);

  // bf16: 2-byte weights and gradients; moments and an fp32 master.
  r = Full();
  r.precision.dtype = "bf16";
  const MemoryBreakdown h = PlanMemory(c, r, Exact())->worst_stage().bytes;
  EXPECT_DOUBLE_EQ(h.parameters, 1704 * 2);
  EXPECT_DOUBLE_EQ(h.optimizer, 1704 * 12);
  // Final norm: bf16 input 128 + fp32 1/rms 32; lm_head's input and its
  // gradient 2 x 128; bf16 logits [8, 32] 512 and their bf16 gradient 512;
  // lm_head's fp32 gradient 1024.
  EXPECT_DOUBLE_EQ(h.loss, 160 + 2 * 128 + 512 + 512 + 1024);

  // tp 2: LinearCrossEntropySum over the vocab shard: final norm 288,
  // lm_head's input 256 and its gradient (the shard's partial sum) 256, one
  // chunk of logits [8, 16] 512 and their gradient 512, the shard's fp32
  // gradient [16, 8] 512.
  r = Full();
  r.parallel.tp = 2;
  EXPECT_DOUBLE_EQ(PlanMemory(c, r, Exact())->worst_stage().bytes.loss,
                   288 + 2 * 256 + 2 * 512 + 512);
  // Under sp the final norm sees 4 rows (144, its output 128), and lm_head
  // reads them gathered (256).
  r.parallel.sequence_parallel = true;
  EXPECT_DOUBLE_EQ(PlanMemory(c, r, Exact())->worst_stage().bytes.loss,
                   144 + 128 + 256 + 256 + 2 * 512 + 512);
  // With an adapter on lm_head, the logits [8, 16] and their gradient of the
  // vocab-parallel cross entropy.
  r = Full();
  r.parallel.tp = 2;
  r.finetune.method = "lora";
  r.finetune.lora.targets = {"lm_head"};
  EXPECT_DOUBLE_EQ(PlanMemory(c, r, Exact())->worst_stage().bytes.loss, 288 + 256 + 512 + 512);
}

// A layer's backward recomputes the attention probabilities of one block of
// query positions at a time (models/attention_core.h): 64 of them on the
// CPU, all T on a GPU. At T = 256, micro-batch 1, 2 heads the fp32
// probabilities and their gradient are 2 x 2 x 64 x 256 x 4 = 256 KiB on the
// CPU against 1 MiB, more than the loss and the MLP's gradients (32 KiB).
TEST(MemoryModelTest, BackwardHoldsOneBlockOfAttentionProbabilities) {
  const models::ModelConfig c = Small();
  recipe::Recipe r = Full();
  r.batch.seq_len = 256;
  r.batch.global_batch = 1;
  r.batch.micro_batch = 1;
  MemoryOptions cuda = Exact();
  cuda.cuda = true;
  const double mlp = 2 * 256 * 16 * 4;
  EXPECT_DOUBLE_EQ(PlanMemory(c, r, Exact())->worst_stage().bytes.loss, 2 * 2 * 64 * 256 * 4 + mlp);
  EXPECT_DOUBLE_EQ(PlanMemory(c, r, cuda)->worst_stage().bytes.loss, 2 * 2 * 256 * 256 * 4 + mlp);
}

TEST(MemoryModelTest, PipelineStagesHoldTheirLayersAndInFlightMicroBatches) {
  const models::ModelConfig c = Small();
  recipe::Recipe r = Full();
  r.parallel.pp = 2;
  r.batch.global_batch = 8;
  r.batch.micro_batch = 2;  // 4 micro-batches
  MemoryPlan plan = *PlanMemory(c, r, Exact());
  ASSERT_EQ(plan.stages.size(), 2u);
  // 1F1B: the first stage holds pp = 2 micro-batches, the last one.
  EXPECT_EQ(plan.stages[0].in_flight, 2);
  EXPECT_EQ(plan.stages[1].in_flight, 1);
  EXPECT_DOUBLE_EQ(plan.stages[0].bytes.parameters, (592 + 256) * 4);
  EXPECT_DOUBLE_EQ(plan.stages[1].bytes.parameters, (592 + 256 + 8) * 4);
  EXPECT_DOUBLE_EQ(plan.stages[0].bytes.activations, 2 * (kLayerFull + 256));
  const double one_loss = plan.stages[1].bytes.loss;
  // GPipe: every micro-batch in flight on both; the last stage's 3 waiting
  // micro-batches also keep what their loss computed in forward: the final
  // norm's input and 1/rms 288, lm_head's input's gradient 256 and its fp32
  // weight's 1024.
  r.parallel.pp_schedule = "gpipe";
  plan = *PlanMemory(c, r, Exact());
  EXPECT_EQ(plan.stages[0].in_flight, 4);
  EXPECT_EQ(plan.stages[1].in_flight, 4);
  EXPECT_DOUBLE_EQ(plan.stages[1].bytes.loss, one_loss + 3 * (288 + 256 + 1024));
  // A heap factor and a runtime scale and add as documented.
  MemoryOptions options;
  options.runtime_bytes = 1000;
  options.transient_factor = 2;
  const MemoryPlan scaled = *PlanMemory(c, r, options);
  EXPECT_DOUBLE_EQ(scaled.stages[0].bytes.activations, 2 * plan.stages[0].bytes.activations);
  EXPECT_DOUBLE_EQ(scaled.stages[0].bytes.total(),
                   plan.stages[0].bytes.total() + 1000 + plan.stages[0].bytes.activations +
                       plan.stages[0].bytes.loss + plan.stages[0].bytes.communication);
}

TEST(MemoryModelTest, ExpertsSplitOverEp) {
  const models::ModelConfig c = SmallMixtral();
  recipe::Recipe r = Full();
  r.parallel.dp = 2;
  r.parallel.ep = 2;
  r.batch.micro_batch = 2;
  const MemoryBreakdown b = PlanMemory(c, r, Exact())->worst_stage().bytes;
  // Per layer: attention 192 + norms 16 + router 32 + 2 of 4 experts x 384.
  EXPECT_DOUBLE_EQ(b.parameters, (2 * (192 + 16 + 32 + 2 * 384) + 520) * 4);
  // MoE activations: tokens 64 + router scores 2 x 8 x 4 floats, the 16
  // dispatched rows in and out (2 x 128), their SwiGLU (gate, up) 2 x 16 x 16.
  r.parallel.ep = 1;
  EXPECT_DOUBLE_EQ(ActivationBytes(c, r, "none", 0),
                   kNorms + kAttention + (64 + 64 + 2 * 128 + 2 * 256) * 4);
}

// Padded capacity slots: every expert's ceil(1.5 x 16 / 4) = 6 slots, 24
// rows where 16 choices travel unpadded; the experts multiply them all, and
// no count is exchanged (4 blocking all-to-alls per MoE layer, not 5).
TEST(MemoryModelTest, PaddedCapacitySlotsCountEverySlot) {
  const models::ModelConfig c = SmallMixtral();
  recipe::Recipe r = Full();
  r.moe.capacity_factor = 1.5;
  r.moe.pad_to_capacity = true;
  EXPECT_DOUBLE_EQ(ActivationBytes(c, r, "none", 0),
                   kNorms + kAttention + (64 + 64 + 2 * 24 * 8 + 2 * 24 * 16) * 4);
  r.parallel.dp = 2;
  r.parallel.ep = 2;
  r.batch.global_batch = 8;
  Hardware hw = Node(2, 1e6);
  hw.collective_latency_s = 1e-3;
  const StepTime padded = *EstimateStepTime(c, r, hw);
  r.moe.pad_to_capacity = false;
  const StepTime unpadded = *EstimateStepTime(c, r, hw);
  // 2 micro-batches x 2 MoE layers.
  EXPECT_DOUBLE_EQ(unpadded.blocking_collectives, 2 * 2 * 5);
  EXPECT_DOUBLE_EQ(padded.blocking_collectives, 2 * 2 * 4);
  EXPECT_DOUBLE_EQ(padded.ep_comm_s, 1.5 * unpadded.ep_comm_s);
  // Routed matmul parameters per token: 2 layers x 2 of 4 experts x 384;
  // 0.5 of them again, 6 FLOPs each, over 16 tokens per rank at half the peak.
  EXPECT_NEAR(padded.compute_s - unpadded.compute_s, 0.5 * 2 * 2 * 384 * 6 * 16 / (0.5 * 1e6),
              1e-9);
}

// MoE layers cost moe_row_s per routed row beyond their FLOPs: 2 micro-
// batches x 2 MoE layers x 8 tokens x top-2 = 64 rows a step on one rank;
// capacity slots count every slot; under pp each stage its own layers'.
TEST(StepTimeModelTest, MoeRowsCostTheirMeasuredTimeBeyondFlops) {
  const models::ModelConfig c = SmallMixtral();
  recipe::Recipe r = Full();
  Hardware hw = Node(1, 1e6);
  const StepTime flops_only = *EstimateStepTime(c, r, hw);
  EXPECT_DOUBLE_EQ(flops_only.moe_rows, 64);
  hw.moe_row_s = 1e-3;
  const StepTime rows = *EstimateStepTime(c, r, hw);
  EXPECT_DOUBLE_EQ(rows.moe_rows, 64);
  EXPECT_NEAR(rows.compute_s - flops_only.compute_s, 64e-3, 1e-12);
  EXPECT_NEAR(rows.step_s - flops_only.step_s, 64e-3, 1e-12);
  r.moe.capacity_factor = 1.5;
  r.moe.pad_to_capacity = true;
  EXPECT_DOUBLE_EQ(EstimateStepTime(c, r, hw)->moe_rows, 96);
  r = Full();
  r.parallel.pp = 2;
  hw = Node(2, 1e6);
  hw.moe_row_s = 1e-3;
  const StepTime pp = *EstimateStepTime(c, r, hw);
  EXPECT_DOUBLE_EQ(pp.moe_rows, 32);  // one MoE layer a stage
  hw.moe_row_s = 0;
  const StepTime pp_flops = *EstimateStepTime(c, r, hw);
  EXPECT_NEAR(pp.stage_compute_s[0] - pp_flops.stage_compute_s[0], 32e-3, 1e-12);
  EXPECT_NEAR(pp.stage_compute_s[1] - pp_flops.stage_compute_s[1], 32e-3, 1e-12);
  // A dense model has no MoE term.
  hw.moe_row_s = 1e-3;
  EXPECT_DOUBLE_EQ(EstimateStepTime(Small(), Full(), hw)->moe_rows, 0);
}

TEST(StepTimeModelTest, FlopsBubbleAndCommunication) {
  const models::ModelConfig c = Small();
  recipe::Recipe r = Full();
  // Matmul weights: 2 x 576 + lm_head 256 = 1408, 6 FLOPs each per token,
  // attention 12 x T x head_dim x heads x layers = 12 x 4 x 4 x 2 x 2, and
  // its scores' matmul again in backward (models/attention_core.h):
  // 2 x T x head_dim x heads x layers.
  Hardware hw = Node(1, 1e6);
  hw.efficiency = 0.5;
  StepTime t = *EstimateStepTime(c, r, hw);
  EXPECT_DOUBLE_EQ(t.flops_per_token, 6 * 1408 + 12 * 4 * 4 * 2 * 2 + 2 * 4 * 4 * 2 * 2);
  EXPECT_DOUBLE_EQ(t.compute_s, t.flops_per_token * 16 / 0.5e6);
  EXPECT_DOUBLE_EQ(t.tokens_per_s, 16 / t.step_s);
  // dp 2: a ring all-reduce of the 1704 fp32 gradients, half the compute each.
  r.parallel.dp = 2;
  hw.ranks = hw.ranks_per_node = 2;
  const StepTime dp = *EstimateStepTime(c, r, hw);
  EXPECT_DOUBLE_EQ(dp.compute_s, t.compute_s / 2);
  EXPECT_DOUBLE_EQ(dp.dp_comm_s, 1704 * 4 / 1e6);
  // pp 2 1F1B with 4 micro-batches: bubble (p - 1) / (m + p - 1) = 1 / 5.
  r = Full();
  r.parallel.pp = 2;
  r.batch.global_batch = 8;
  const StepTime pp = *EstimateStepTime(c, r, hw);
  EXPECT_DOUBLE_EQ(pp.bubble_fraction, 0.2);
}

TEST(StepTimeModelTest, TheSlowestPipelineStagePacesTheStep) {
  const models::ModelConfig c = Small();
  recipe::Recipe r = Full();
  r.parallel.pp = 2;
  r.batch.global_batch = 8;  // 4 micro-batches, 32 tokens a step
  Hardware hw = Node(2, 1e6);
  hw.efficiency = 0.5;
  const StepTime t = *EstimateStepTime(c, r, hw);
  // Per token, each layer 6 x 576 + attention 12 x 4 x 4 x 2 + its scores
  // again 2 x 4 x 4 x 2 = 3904; the last stage also lm_head's 6 x 256.
  ASSERT_EQ(t.stage_compute_s.size(), 2u);
  EXPECT_DOUBLE_EQ(t.stage_compute_s[0], 3904.0 * 32 / 0.5e6);
  EXPECT_DOUBLE_EQ(t.stage_compute_s[1], (3904.0 + 6 * 256) * 32 / 0.5e6);
  EXPECT_DOUBLE_EQ(t.compute_s, t.stage_compute_s[1]);
  EXPECT_DOUBLE_EQ(t.flops_per_token, 2 * 3904 + 6 * 256);
  // Bubble 1 / 5 of the makespan over the average stage: 1 / 4 of its time.
  const double mean = (t.stage_compute_s[0] + t.stage_compute_s[1]) / 2;
  EXPECT_NEAR(t.step_s, t.compute_s + t.pp_comm_s + (mean + t.pp_comm_s) / 4, 1e-12);
  // Stages alike: the textbook busy / (1 - bubble).
  r.parallel.pp = 1;
  r.parallel.dp = 2;
  const StepTime dp = *EstimateStepTime(c, r, hw);
  EXPECT_DOUBLE_EQ(dp.compute_s, (2 * 3904.0 + 6 * 256) * 16 / 0.5e6);
  EXPECT_EQ(dp.stage_compute_s.size(), 1u);
  // A large lm_head: one layer fewer on the last stage balances the stages
  // and the plan says it is faster.
  models::ModelConfig wide = Small();
  wide.num_layers = 4;
  wide.vocab_size = 128;
  r = Full();
  r.parallel.pp = 2;
  r.batch.global_batch = 8;
  const StepTime even = *EstimateStepTime(wide, r, hw);
  r.parallel.pp_layers = {3, 1};
  const StepTime balanced = *EstimateStepTime(wide, r, hw);
  EXPECT_GT(even.stage_compute_s[1], even.stage_compute_s[0]);
  EXPECT_LT(balanced.compute_s, even.compute_s);
  EXPECT_LT(balanced.step_s, even.step_s);
}

TEST(StepTimeModelTest, LatencyOfBlockingCollectivesAndOptimizerTraffic) {
  const models::ModelConfig c = Small();  // 2 layers, 1704 parameters
  recipe::Recipe r = Full();              // 2 micro-batches per step
  Hardware hw = Node(2, 1e6);
  hw.collective_latency_s = 1e-3;
  hw.memory_bytes_per_s = 1e6;
  // One rank: no collective; AdamW's 36 bytes per fp32 parameter.
  hw.ranks = hw.ranks_per_node = 1;
  const StepTime one = *EstimateStepTime(c, r, hw);
  EXPECT_DOUBLE_EQ(one.blocking_collectives, 0);
  EXPECT_DOUBLE_EQ(one.optimizer_s, 1704 * 36 / 1e6);
  EXPECT_DOUBLE_EQ(one.step_s, one.compute_s + one.optimizer_s);
  hw.ranks = hw.ranks_per_node = 2;
  // tp 2: 4 per layer and 4 for the embedding and the loss, per micro-batch;
  // under sp 10 per layer (backward gathers the column groups' input again),
  // moving 5/4 of the bytes.
  r.parallel.tp = 2;
  const StepTime tp = *EstimateStepTime(c, r, hw);
  EXPECT_DOUBLE_EQ(tp.blocking_collectives, 2 * (4 * 2 + 4));
  EXPECT_DOUBLE_EQ(tp.latency_s, tp.blocking_collectives * 1e-3);
  EXPECT_DOUBLE_EQ(tp.step_s, tp.compute_s + tp.tp_comm_s + tp.latency_s + tp.optimizer_s);
  r.parallel.sequence_parallel = true;
  const StepTime sp = *EstimateStepTime(c, r, hw);
  EXPECT_DOUBLE_EQ(sp.blocking_collectives, 2 * (10 * 2 + 4));
  EXPECT_DOUBLE_EQ(sp.tp_comm_s, tp.tp_comm_s * 5 / 4);
  // A backend that overlaps them hides the column groups' backward
  // collectives: 2 per layer without sp, 4 of sp's 10.
  hw.overlaps_communication = true;
  const StepTime sp_overlapped = *EstimateStepTime(c, r, hw);
  EXPECT_DOUBLE_EQ(sp_overlapped.blocking_collectives, 2 * (6 * 2 + 4));
  EXPECT_DOUBLE_EQ(sp_overlapped.tp_comm_s, tp.tp_comm_s * 3 / 4);
  r.parallel.sequence_parallel = false;
  const StepTime tp_overlapped = *EstimateStepTime(c, r, hw);
  EXPECT_DOUBLE_EQ(tp_overlapped.blocking_collectives, 2 * (2 * 2 + 4));
  EXPECT_DOUBLE_EQ(tp_overlapped.tp_comm_s, tp.tp_comm_s / 2);
  hw.overlaps_communication = false;
  // dp 2: the reduction overlaps the backward (no latency term); ZeRO-1
  // updates half of the parameters.
  r = Full();
  r.parallel.dp = 2;
  r.batch.global_batch = 8;
  const StepTime dp = *EstimateStepTime(c, r, hw);
  EXPECT_DOUBLE_EQ(dp.blocking_collectives, 0);
  EXPECT_DOUBLE_EQ(dp.optimizer_s, 1704 * 36 / 1e6);
  r.parallel.zero = 1;
  EXPECT_DOUBLE_EQ(EstimateStepTime(c, r, hw)->optimizer_s, dp.optimizer_s / 2);
  // pp 2: a send each way per micro-batch; with tp 2 the last stage's 1
  // layer and its lm_head and loss (the embedding is on the first stage).
  r = Full();
  r.parallel.pp = 2;
  EXPECT_DOUBLE_EQ(EstimateStepTime(c, r, hw)->blocking_collectives, 2 * 2);
  r.parallel.tp = 2;
  EXPECT_DOUBLE_EQ(EstimateStepTime(c, r, hw)->blocking_collectives, 2 * (4 * 1 + 3 + 2));
  // bf16: 2 more bytes for the bf16 copy of the master weights.
  r = Full();
  r.precision.dtype = "bf16";
  hw.ranks = hw.ranks_per_node = 1;
  EXPECT_DOUBLE_EQ(EstimateStepTime(c, r, hw)->optimizer_s, 1704 * 38 / 1e6);
}

TEST(LayoutSearchTest, OnlyValidLayoutsFastestFirst) {
  const models::ModelConfig c = Small();
  recipe::Recipe r = Full();
  r.model.config = "config.json";  // ValidateRecipe reads no file
  r.data.path = "data.jsonl";
  r.batch.global_batch = 8;
  Hardware hw = Node(4, 1e9);
  const absl::StatusOr<LayoutSearch> search = SearchLayouts(c, r, hw, MemoryOptions{});
  ASSERT_TRUE(search.ok()) << search.status();
  EXPECT_GT(search->considered, search->valid);  // tp 4 does not split 2 heads
  ASSERT_FALSE(search->fitting.empty());
  for (size_t i = 0; i < search->fitting.size(); ++i) {
    const recipe::Recipe& l = search->fitting[i].recipe;
    EXPECT_EQ(l.parallel.tp * l.parallel.pp * l.parallel.dp, 4);
    EXPECT_NE(l.parallel.tp, 4) << "2 heads do not split over tp 4";
    EXPECT_TRUE(recipe::ValidateRecipe(l, 4).ok()) << DescribeLayout(l);
    if (i > 0) {
      EXPECT_LE(search->fitting[i].time.tokens_per_s, search->fitting[i - 1].time.tokens_per_s);
    }
  }
  // Too little memory: nothing fits.
  hw.memory_bytes = 1000;
  EXPECT_TRUE(SearchLayouts(c, r, hw, MemoryOptions{})->fitting.empty());
}

}  // namespace
}  // namespace fulcrum::plan
