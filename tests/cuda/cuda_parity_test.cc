// The CUDA paths give the CPU's numbers: the same tiny models, built from the
// same seed on both devices, on a packed and padded batch. On CUDA attention
// goes through LibTorch's fused scaled_dot_product_attention (with the
// document-aware additive mask), on the CPU through the explicit fallback, so
// these tests are also the fused-vs-fallback check. Registered with ctest only
// when LibTorch has CUDA (scripts/gpu_check.sh); compiled everywhere so that
// it keeps building.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

// The CPU LibTorch ships c10/cuda headers without the generated macros (and
// no libc10_cuda): the synchronisation check compiles only against CUDA.
#if __has_include(<c10/cuda/impl/cuda_cmake_macros.h>)
#include <c10/cuda/CUDAFunctions.h>
#define FULCRUM_TEST_SYNC_DEBUG 1
#endif

#include "trainer/metrics/device_memory.h"
#include "trainer/models/attention.h"
#include "trainer/models/attention_mask.h"
#include "trainer/models/causal_lm.h"
#include "trainer/models/concurrent_branch.h"
#include "trainer/models/init.h"
#include "trainer/models/loss.h"
#include "trainer/models/model_config.h"
#include "trainer/models/moe_block.h"
#include "trainer/models/torch_compat.h"

namespace fulcrum::models {
namespace {

ModelConfig Parse(const nlohmann::json& json) {
  auto config = ParseModelConfig(json, "cuda_parity_test");
  EXPECT_TRUE(config.ok()) << config.status();
  return *config;
}

ModelConfig TinyLlama() {
  return Parse({{"architectures", {"LlamaForCausalLM"}},
                {"model_type", "llama"},
                {"vocab_size", 96},
                {"hidden_size", 64},
                {"intermediate_size", 96},
                {"num_hidden_layers", 2},
                {"num_attention_heads", 4},
                {"num_key_value_heads", 2},
                {"head_dim", 16},
                {"max_position_embeddings", 64},
                {"rope_theta", 10000.0},
                {"rms_norm_eps", 1e-5}});
}

// MLA attention (Dv != Dqk) and a routed MoE with a shared expert.
ModelConfig TinyDeepSeek() {
  return Parse({{"architectures", {"DeepseekV2ForCausalLM"}},
                {"model_type", "deepseek_v2"},
                {"vocab_size", 96},
                {"hidden_size", 32},
                {"intermediate_size", 64},
                {"num_hidden_layers", 2},
                {"num_attention_heads", 2},
                {"num_key_value_heads", 2},
                {"q_lora_rank", nullptr},
                {"kv_lora_rank", 16},
                {"qk_nope_head_dim", 8},
                {"qk_rope_head_dim", 4},
                {"v_head_dim", 6},
                {"n_routed_experts", 4},
                {"num_experts_per_tok", 2},
                {"moe_intermediate_size", 16},
                {"n_shared_experts", 1},
                {"first_k_dense_replace", 1},
                {"moe_layer_freq", 1},
                {"n_group", 1},
                {"topk_group", 1},
                {"topk_method", "greedy"},
                {"scoring_func", "softmax"},
                {"norm_topk_prob", false},
                {"routed_scaling_factor", 1.0},
                {"max_position_embeddings", 64},
                {"rope_theta", 10000.0},
                {"rms_norm_eps", 1e-6}});
}

// Row 0 packs three documents; row 1 is one document followed by padding.
struct PackedBatch {
  torch::Tensor input_ids, labels, attention_mask, position_ids, document_ids;
};

PackedBatch MakeBatch(int64_t vocab) {
  const int64_t t = 24;
  torch::manual_seed(7);
  PackedBatch b;
  b.input_ids = torch::randint(3, vocab, {2, t}, torch::kLong);
  b.document_ids = torch::zeros({2, t}, torch::kLong);
  b.document_ids[0].narrow(0, 7, 9).fill_(1);
  b.document_ids[0].narrow(0, 16, 8).fill_(2);
  b.document_ids[1].narrow(0, 15, 9).fill_(-1);
  b.attention_mask = b.document_ids.ge(0).to(torch::kLong);
  // Positions restart at each document, as packing writes them.
  b.position_ids = torch::zeros({2, t}, torch::kLong);
  auto docs = b.document_ids.accessor<int64_t, 2>();
  auto positions = b.position_ids.accessor<int64_t, 2>();
  for (int64_t row = 0; row < 2; ++row) {
    int64_t position = 0;
    for (int64_t i = 0; i < t; ++i) {
      if (i > 0 && docs[row][i] != docs[row][i - 1]) position = 0;
      positions[row][i] = position++;
    }
  }
  b.labels = b.input_ids.masked_fill(b.attention_mask.eq(0), kIgnoreIndex);
  return b;
}

// As the trainer passes a batch (loop/forward_inputs.h): ids and positions
// on the device, the padding mask and document ids on the host.
ForwardInputs On(const PackedBatch& b, const torch::Device& device) {
  return ForwardInputs(b.input_ids.to(device), b.attention_mask, b.position_ids.to(device),
                       b.document_ids);
}

// A model on `device` holding exactly `source`'s values, in `dtype`.
CausalLM CopyTo(const CausalLM& source, const ModelConfig& config, const torch::Device& device,
                torch::ScalarType dtype) {
  CausalLM copy(config, torch::TensorOptions().dtype(dtype).device(device));
  torch::NoGradGuard no_grad;
  const auto from = source->named_parameters();
  for (auto& p : copy->named_parameters()) p.value().copy_(from[p.key()]);
  const auto from_buffers = source->named_buffers();
  for (auto& buffer : copy->named_buffers()) buffer.value().copy_(from_buffers[buffer.key()]);
  return copy;
}

double MaxRelativeDiff(const torch::Tensor& got, const torch::Tensor& want) {
  const torch::Tensor g = got.to(torch::kCPU, torch::kDouble);
  const torch::Tensor w = want.to(torch::kCPU, torch::kDouble);
  return (g - w).abs().max().item<double>() / std::max(1.0, w.abs().max().item<double>());
}

// Two full rows of one document each: the causal triangle is the whole mask.
PackedBatch MakeCausalOnlyBatch(int64_t vocab) {
  const int64_t t = 24;
  torch::manual_seed(8);
  PackedBatch b;
  b.input_ids = torch::randint(3, vocab, {2, t}, torch::kLong);
  b.document_ids = torch::zeros({2, t}, torch::kLong);
  b.attention_mask = torch::ones({2, t}, torch::kLong);
  b.position_ids = torch::arange(t, torch::kLong).expand({2, t}).contiguous();
  b.labels = b.input_ids.clone();
  return b;
}

void ExpectCudaMatchesCpu(const ModelConfig& config, const PackedBatch& batch) {
  ASSERT_TRUE(torch::cuda::is_available()) << "this test needs a CUDA device";
  CausalLM cpu(config, torch::TensorOptions().dtype(torch::kFloat));
  InitializeWeights(*cpu, /*seed=*/3);
  const torch::Device cuda(torch::kCUDA, 0);
  CausalLM gpu = CopyTo(cpu, config, cuda, torch::kFloat);

  const torch::Tensor logits_cpu = cpu->forward(On(batch, torch::kCPU));
  const torch::Tensor logits_gpu = gpu->forward(On(batch, cuda));
  EXPECT_TRUE(logits_gpu.is_cuda());
  // Padded query rows attend to nothing real: their values are arbitrary on
  // either path and masked out of the loss.
  const torch::Tensor real = batch.attention_mask.ne(0).unsqueeze(-1);
  const double logit_diff = MaxRelativeDiff(logits_gpu.cpu().masked_fill(real.logical_not(), 0),
                                            logits_cpu.masked_fill(real.logical_not(), 0));
  EXPECT_LE(logit_diff, 1e-5) << "logits differ";

  const torch::Tensor loss_cpu = CausalLmLoss(logits_cpu, batch.labels);
  const torch::Tensor loss_gpu = CausalLmLoss(logits_gpu, batch.labels.to(cuda));
  EXPECT_NEAR(loss_gpu.item<double>(), loss_cpu.item<double>(), 1e-5 * loss_cpu.item<double>());
  loss_cpu.backward();
  loss_gpu.backward();
  const auto grads_cpu = cpu->named_parameters();
  int compared = 0;
  for (const auto& p : gpu->named_parameters()) {
    const torch::Tensor& want = grads_cpu[p.key()].grad();
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_LE(MaxRelativeDiff(p.value().grad(), want), 1e-4) << "gradient of " << p.key();
    ++compared;
  }
  EXPECT_GT(compared, 10);
}

TEST(CudaParityTest, FusedAttentionIsUsedOnCuda) {
  // The CUDA build must run the fused kernel, not the fallback, or the tests
  // below compare the fallback with itself.
  EXPECT_TRUE(compat::kHasFusedAttention);
}

TEST(CudaParityTest, GroupedAttentionFusedEqualsFallbackWithPackedMask) {
  ASSERT_TRUE(torch::cuda::is_available()) << "this test needs a CUDA device";
  const PackedBatch batch = MakeBatch(96);
  const int64_t b = 2, h = 8, hkv = 2, t = batch.input_ids.size(1), d = 32;
  torch::manual_seed(11);
  const torch::Tensor q = torch::randn({b, h, t, d}), k = torch::randn({b, hkv, t, d}),
                      v = torch::randn({b, hkv, t, d});
  const auto mask_on = [&](const torch::Device& device) {
    return BuildAttentionMask(b, t, batch.attention_mask, batch.document_ids, torch::kFloat,
                              device);
  };
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const torch::Tensor fallback = GroupedAttention(q, k, v, mask_on(torch::kCPU), scale);
  const torch::Device cuda(torch::kCUDA, 0);
  const torch::Tensor fused =
      GroupedAttention(q.to(cuda), k.to(cuda), v.to(cuda), mask_on(cuda), scale);
  const torch::Tensor real = batch.attention_mask.ne(0).view({b, 1, t, 1});
  EXPECT_LE(MaxRelativeDiff(fused.cpu().masked_fill(real.logical_not(), 0),
                            fallback.masked_fill(real.logical_not(), 0)),
            1e-5);
}

// MoeBlock's shared expert runs this way: on a side stream, joined by
// events. The result and its gradients are those of the plain expression.
TEST(CudaParityTest, ConcurrentBranchRunsOnASideStreamWithTheSameNumbers) {
  ASSERT_TRUE(torch::cuda::is_available()) << "this test needs a CUDA device";
  torch::manual_seed(4);
  const torch::Device cuda(torch::kCUDA, 0);
  const torch::Tensor w = torch::randn({256, 256}, torch::device(cuda).requires_grad(true));
  const torch::Tensor x = torch::randn({512, 256}, torch::device(cuda).requires_grad(true));
  const torch::Tensor h = x * 3;  // produced on the current stream just before the branch
  ConcurrentBranch branch({h}, [&] { return torch::silu(h.matmul(w)).matmul(w.t()); });
  EXPECT_TRUE(branch.on_side_stream());
  const torch::Tensor routed = torch::tanh(h.matmul(w.t()));
  const torch::Tensor loss = (routed + branch.Join()).pow(2).mean();
  const auto grads = torch::autograd::grad({loss}, {x, w}, {}, /*retain_graph=*/true);

  const torch::Tensor plain_loss = (routed + torch::silu(h.matmul(w)).matmul(w.t())).pow(2).mean();
  const auto want = torch::autograd::grad({plain_loss}, {x, w});
  EXPECT_LE(MaxRelativeDiff(loss, plain_loss), 1e-6);
  EXPECT_LE(MaxRelativeDiff(grads[0], want[0]), 1e-6);
  EXPECT_LE(MaxRelativeDiff(grads[1], want[1]), 1e-6);
}

TEST(CudaParityTest, LlamaPackedBatchMatchesCpu) {
  ExpectCudaMatchesCpu(TinyLlama(), MakeBatch(TinyLlama().vocab_size));
}

TEST(CudaParityTest, DeepSeekMlaMoePackedBatchMatchesCpu) {
  ExpectCudaMatchesCpu(TinyDeepSeek(), MakeBatch(TinyDeepSeek().vocab_size));
}

// A causal-only batch goes to the fused kernel without a mask (is_causal:
// flash), GQA and MLA alike, and still gives the CPU's numbers.
TEST(CudaParityTest, CausalOnlyBatchRunsMaskFreeAndMatchesCpu) {
  ASSERT_TRUE(torch::cuda::is_available()) << "this test needs a CUDA device";
  for (const ModelConfig& config : {TinyLlama(), TinyDeepSeek()}) {
    const PackedBatch batch = MakeCausalOnlyBatch(config.vocab_size);
    CausalLM gpu(config, torch::TensorOptions().device(torch::kCUDA, 0));
    EXPECT_FALSE(
        gpu->model->PrepareLayerInputs(On(batch, torch::Device(torch::kCUDA, 0))).mask.defined());
    ExpectCudaMatchesCpu(config, batch);
  }
}

TEST(CudaParityTest, Bf16LossIsNearFp32) {
  ASSERT_TRUE(torch::cuda::is_available()) << "this test needs a CUDA device";
  const ModelConfig config = TinyLlama();
  CausalLM cpu(config, torch::TensorOptions().dtype(torch::kFloat));
  InitializeWeights(*cpu, /*seed=*/5);
  const torch::Device cuda(torch::kCUDA, 0);
  CausalLM gpu = CopyTo(cpu, config, cuda, torch::kBFloat16);
  const PackedBatch batch = MakeBatch(config.vocab_size);
  const double want =
      CausalLmLoss(cpu->forward(On(batch, torch::kCPU)), batch.labels).item<double>();
  const torch::Tensor logits = gpu->forward(On(batch, cuda));
  EXPECT_EQ(logits.scalar_type(), torch::kBFloat16);
  const double got = CausalLmLoss(logits, batch.labels.to(cuda)).item<double>();
  EXPECT_NEAR(got, want, 2e-2 * want);
}

// The step metrics' device memory comes from the caching allocator.
#ifdef FULCRUM_TEST_SYNC_DEBUG
// With padded capacity slots a MoE block's training forward and backward
// read nothing back to the host: under CUDA's sync debug mode "error" any
// synchronising call (.item(), a device-to-host copy, bincount's max, a
// boolean mask) throws.
TEST(CudaParityTest, PaddedMoeBlockTrainsWithoutAHostSynchronisation) {
  ASSERT_TRUE(torch::cuda::is_available()) << "this test needs a CUDA device";
  const torch::Device cuda(torch::kCUDA, 0);
  ModelConfig config = TinyDeepSeek();
  MoeBlock block(config, torch::TensorOptions().device(cuda));
  {
    torch::NoGradGuard no_grad;
    for (torch::Tensor& p : block->parameters()) p.normal_(0.0, 0.1);
  }
  block->SetCapacityFactor(1.25, /*pad_to_capacity=*/true);
  const torch::Tensor x =
      torch::randn({2, 16, config.hidden_size}, torch::device(cuda).requires_grad(true));
  torch::cuda::synchronize();
  c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
  try {
    block->forward(x).pow(2).sum().backward();
  } catch (const std::exception& e) {
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
    FAIL() << "a host synchronisation inside the padded MoE block: " << e.what();
  }
  c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
  EXPECT_TRUE(x.grad().defined());
  EXPECT_TRUE(torch::isfinite(x.grad()).all().item<bool>());
}
#endif

TEST(CudaMemoryTest, AllocatorStatisticsSeeATensorAndItsPeak) {
  ASSERT_TRUE(torch::cuda::is_available()) << "this test needs a CUDA device";
  const torch::Device cuda(torch::kCUDA, 0);
  metrics::ResetDevicePeak(cuda);
  const metrics::DeviceMemoryUsage before = metrics::CurrentDeviceMemory(cuda);
  constexpr int64_t kBytes = int64_t{64} << 20;
  {
    const torch::Tensor t = torch::empty({kBytes}, torch::TensorOptions(torch::kByte).device(cuda));
    const metrics::DeviceMemoryUsage during = metrics::CurrentDeviceMemory(cuda);
    EXPECT_GE(during.allocated_bytes - before.allocated_bytes, kBytes);
    EXPECT_GE(during.reserved_bytes, during.allocated_bytes);
  }
  const metrics::DeviceMemoryUsage after = metrics::CurrentDeviceMemory(cuda);
  EXPECT_LT(after.allocated_bytes, before.allocated_bytes + kBytes);
  EXPECT_GE(after.peak_allocated_bytes, before.allocated_bytes + kBytes);
  EXPECT_EQ(metrics::CurrentDeviceMemory(torch::kCPU).peak_allocated_bytes, 0);
}

}  // namespace
}  // namespace fulcrum::models
