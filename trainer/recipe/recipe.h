// The recipe: one complete YAML file, parsed into typed sections with
// defaults, then `key=value` overrides, then validation.
//
//   Recipe              all sections + seed + device
//   ParseRecipe         YAML text (+ overrides) -> Recipe, strict typing,
//                       unknown keys rejected with a "did you mean"
//   LoadRecipe          ParseRecipe on a file; resolves relative paths
//   ValidateRecipe      checks that need no model and no files
//   RecipeToYaml        the complete recipe back as YAML
//
// NOTE: plain data only; no torch headers here (keeps dependents' compiles fast).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace fulcrum::models {
struct ModelConfig;
}  // namespace fulcrum::models

namespace fulcrum::recipe {

struct ModelSection {
  std::string path;    // HF model dir (config.json + safetensors) to fine-tune; or
  std::string config;  // a config.json to initialise randomly (training from scratch)
  // DeepSeek-V3 multi-token-prediction layers in the checkpoint (config
  // num_nextn_predict_layers > 0): "skip" drops them; "load" is not supported
  // yet; "" (unset) is an error for such a model (never dropped silently).
  std::string mtp_layers;
};

// One entry of data.datasets (an alternative to data.path: several files mixed by weight).
struct DatasetEntry {
  std::string path;     // JSONL file
  std::string format;   // text | instruction | messages | sharegpt; "" = data.format
  double weight = 1.0;  // > 0: times per epoch (fractions subsample deterministically)
  std::map<std::string, std::string> fields;  // logical field name -> key in the records
};

// data.validation: a held-out split, by fraction of the training data or a file.
struct ValidationSection {
  double fraction = 0.0;  // in [0, 1): share of the (text) training samples held out
  std::string path;       // a separate JSONL file ("" = none)
  std::string format;     // of `path`; "" = data.format
};

struct DataSection {
  std::string path;                     // JSONL file ("" when data.datasets is used)
  std::string format = "pretokenized";  // pretokenized | text | instruction | messages | sharegpt
  bool shuffle = true;                  // deterministic shuffle per epoch from seed
  bool pack = true;                     // pack samples into seq_len rows
  std::vector<DatasetEntry> datasets;   // instead of path: several text datasets with weights
  std::string tokenizer;                // tokenizer.json or its dir ("" = model.path's)
  std::string chat_template = "auto";   // auto (from tokenizer_config.json) or a known name
  bool train_on_prompt = false;         // prompt tokens are targets too
  bool mask_history = false;            // only the last assistant turn is a target
  std::string on_error = "fail";        // fail | skip: a bad record stops or is counted
  std::string truncation = "truncate";  // truncate | drop: samples longer than seq_len
  ValidationSection validation;         // held-out split for the eval loss
  std::string
      cache_dir;  // prepared data ("" = <checkpoint.dir>/data_cache or ./fulcrum_data_cache)
  int64_t num_workers = 0;  // tokenization threads (0 = all cores)
};

struct LoraSection {
  int64_t rank = 8;      // r: inner dimension of the adapter
  double alpha = 16.0;   // scale = alpha / rank (alpha / sqrt(rank) with rslora)
  double dropout = 0.0;  // dropout on the adapter's input, in [0, 1)
  std::vector<std::string> targets = {"q_proj", "v_proj"};  // module names or "all-linear"
  bool rslora = false;  // rank-stabilised scaling alpha / sqrt(rank)
};

struct FinetuneSection {
  std::string method = "lora";  // lora | full
  LoraSection lora;             // used when method is lora
};

struct OptimSection {
  double lr = 2e-4;    // peak learning rate
  double beta1 = 0.9;  // YAML: betas: [0.9, 0.95]
  double beta2 = 0.95;
  double eps = 1e-8;                    // AdamW denominator epsilon
  double weight_decay = 0.0;            // decoupled (AdamW) weight decay
  bool decay_norms_and_biases = false;  // false: no weight decay on 1-D params (norms, biases)
  double grad_clip = 1.0;               // global grad-norm clip; 0 disables
};

struct ScheduleSection {
  std::string type = "cosine";  // constant | linear | cosine
  int64_t warmup_steps = 0;     // linear warmup from 0 to lr
  double min_lr_ratio = 0.0;    // floor as a fraction of lr (linear/cosine)
};

struct BatchSection {
  int64_t global_batch = 8;  // sequences per optimizer step, over all dp ranks
  int64_t micro_batch = 1;   // sequences per forward/backward per rank
  int64_t seq_len = 512;     // tokens per sequence (row)
};

struct TrainSection {
  int64_t steps = 100;     // optimizer steps
  int64_t eval_every = 0;  // steps between validation-loss passes (0 = never)
  // A step whose gradient norm is not finite (NaN/inf loss or gradients):
  // abort ends the run with an error before the update (nothing of it is
  // saved); skip drops the update, counts and logs it, and trains on.
  std::string on_nonfinite = "abort";
  // Activation recomputation (models/recompute.h): none keeps every
  // activation for backward; selective recomputes the RMSNorm
  // intermediates in backward (the attention core never keeps its
  // probabilities: models/attention_core.h); full
  // keeps only each decoder layer's input and recomputes the layer.
  std::string recompute = "none";
  // GiB of memory each rank may use: `train` checks the layout's predicted
  // peak (plan/memory_model.h) against it before allocating anything. 0 =
  // what the machine reports (host MemAvailable / local ranks on the CPU,
  // the device's free memory on CUDA).
  double memory_gib = 0.0;
};

struct PrecisionSection {
  std::string dtype = "fp32";  // fp32 | bf16 (bf16 params/activations, fp32 master weights)
};

struct ParallelSection {
  int64_t dp = 1;                  // data parallel degree
  int64_t tp = 1;                  // tensor parallel degree (divides heads, ffn, vocab)
  int64_t pp = 1;                  // pipeline parallel degree (stages)
  std::vector<int64_t> pp_layers;  // layers per virtual stage, pp x pp_virtual entries ([] = even)
  int64_t pp_virtual = 1;          // model chunks per stage (> 1 only with interleaved_1f1b)
  std::string pp_schedule = "1f1b";  // gpipe | 1f1b | interleaved_1f1b | zb_h1
  int64_t ep = 1;                    // expert parallel degree (divides dp; MoE models only)
  bool sequence_parallel = false;    // norms run on sequence shards inside tp (needs tp > 1)
  int64_t zero = 0;                  // 0 | 1: ZeRO-1 shards optimizer state over dp
  double bucket_mb = 25.0;           // gradient bucket size for the overlapped dp reduction
  double comm_timeout_s = 60.0;      // a collective not done by then ends the run, naming the rank
};

// Router balancing for mixture-of-experts models (models/moe_balance.h has
// the formulas). Anything but the defaults on a dense model is an error.
struct MoeSection {
  std::string aux_loss = "none";  // none | switch | seq: the router's balance loss
  double aux_loss_coeff = 0.01;   // its coefficient (DeepSeek's aux_loss_alpha)
  double z_loss_coeff = 0.0;      // router z-loss coefficient (0 = off)
  // DeepSeek-V3's aux-loss-free balancing: after each step every router's
  // e_score_correction_bias moves by this much towards balance (0 = off).
  double bias_update_rate = 0.0;
  // Expert capacity in training forwards: each expert takes at most
  // ceil(capacity_factor * tokens * top_k / experts) choices of a forward's
  // tokens, first choices before second ones, the rest dropped and counted
  // (0 = dropless).
  double capacity_factor = 0.0;
  // With a capacity: the kept choices travel in capacity slots per expert,
  // zero-padded, so that no count is read back to the host within a layer
  // (Megatron's moe_pad_expert_input_to_capacity). Same drops, same result.
  bool pad_to_capacity = false;
};

struct CheckpointSection {
  std::string dir;        // where training checkpoints go ("" = no checkpoints)
  int64_t every = 0;      // steps between checkpoints (0 = only at the end when dir is set)
  std::string resume;     // "" | "latest" | a checkpoint path
  int64_t keep_last = 0;  // 0 keeps all
  // Copy the state to host memory at the step boundary and write it on a
  // background thread while training goes on; a save still being written
  // when the next one is due is waited for first (back-pressure).
  bool async = false;
};

struct LoggingSection {
  int64_t every = 1;            // steps between console lines
  std::string metrics_file;     // JSONL metrics ("" = none)
  std::string tensorboard_dir;  // TensorBoard event files, written by rank 0 ("" = none)
  bool all_ranks = false;       // every rank logs
  double peak_flops = 0.0;      // FLOP/s per rank for MFU; 0 = measure a GEMM at start
};

struct Recipe {
  std::string source;  // file the recipe came from (for messages)
  ModelSection model;
  DataSection data;
  FinetuneSection finetune;
  OptimSection optim;
  ScheduleSection schedule;
  BatchSection batch;
  TrainSection train;
  PrecisionSection precision;
  ParallelSection parallel;
  MoeSection moe;
  CheckpointSection checkpoint;
  LoggingSection logging;
  int64_t seed = 1234;         // seeds init, dropout and data shuffling
  std::string device = "cpu";  // cpu | cuda
};

// Parses YAML text; `source` names the file in messages. Overrides are "a.b=value" strings
// applied to the YAML tree before conversion (value parsed as YAML, so `optim.betas=[0.9,0.99]`
// and `finetune.lora.targets=[q_proj,k_proj]` work) and type-checked the same way.
// Errors read "recipe.yaml:4:7: optim.lr: expected a number, got \"fast\"" or
// "override optim.lrr=1: unknown key optim.lrr (did you mean optim.lr?)".
absl::StatusOr<Recipe> ParseRecipe(const std::string& yaml_text, const std::string& source,
                                   const std::vector<std::string>& overrides = {});

// Reads and parses `path`. Relative model.path, model.config, data.path, data.datasets[].path,
// data.tokenizer, data.validation.path, data.cache_dir and checkpoint.dir written in the file are
// resolved against the file's directory; values set by overrides are taken as given (relative to
// the current directory).
absl::StatusOr<Recipe> LoadRecipe(const std::string& path,
                                  const std::vector<std::string>& overrides = {});

// Checks that need no model and no files: batch arithmetic, enum values, ranges, parallel
// degrees (ep divides dp; dp x tp x pp must equal `world_size`; zero in
// {0, 1}; sequence_parallel needs tp > 1 and seq_len divisible by tp; bucket_mb and
// comm_timeout_s > 0), the pipeline keys (pp_virtual >= 1, > 1 exactly with interleaved_1f1b;
// pp_layers only with pp > 1, pp x pp_virtual entries each >= 1; the micro-batches per step,
// global_batch / (micro_batch x dp), usable by pp_schedule:
// parallel::pipeline::CheckScheduleShape), exactly one of model.path / model.config, exactly one of
// data.path / data.datasets, data options (formats, weights, validation fraction, eval_every).
// Reports every problem found, one per line, each naming the source file and the key path.
absl::Status ValidateRecipe(const Recipe& recipe, int world_size);

// Legal but probably unintended settings (zero=1 with dp=1), one line each naming the source
// file and the key; empty when there are none. Printed by `fulcrum validate` and `train`
// (rank 0) after ValidateRecipe succeeds; they do not stop a run.
std::vector<std::string> RecipeWarnings(const Recipe& recipe);

// The divisibility tensor parallelism needs from the model (config.json): num_heads,
// intermediate_size and vocab_size divisible by parallel.tp, and num_kv_heads either divisible
// by tp or dividing it (then every kv head is replicated on tp / num_kv_heads ranks). Each
// failure prints the arithmetic and names the config file ("r.yaml: parallel.tp=3:
// num_attention_heads 4 of model/config.json is not divisible by 3 (4 % 3 = 1)"). OK for tp=1.
// With pp > 1, num_layers (num_hidden_layers) must split into the pipeline's stages: divisible
// by pp x pp_virtual, or summed by pp_layers (parallel::pipeline::StagePartition::Create's
// messages, naming the config file).
absl::Status ValidateParallelForModel(const Recipe& recipe, int64_t num_heads, int64_t num_kv_heads,
                                      int64_t intermediate_size, int64_t vocab_size,
                                      int64_t num_layers);

// ValidateParallelForModel with `config`'s numbers, plus what the model's
// features need, every problem collected: a config with multi-token-prediction
// layers (num_mtp_layers > 0) needs model.mtp_layers (skip; load is "not
// supported yet"); under tp the routed and shared experts' intermediate
// sizes divide by tp too (MLA has no kv heads to check, and a dense size no
// layer uses is not checked); parallel.ep needs a mixture-of-experts model
// whose experts split evenly over it. Messages name the recipe, the key and
// the config file.
absl::Status ValidateRecipeForModel(const Recipe& recipe, const models::ModelConfig& config);

// True when the data is tokenized by fulcrum (any format but pretokenized, or data.datasets).
bool UsesTextData(const DataSection& data);

// Every path of the recipe made absolute against the current directory (the
// recipe saved in checkpoints then names the same files from anywhere).
void MakePathsAbsolute(Recipe& recipe);

// global_batch / (micro_batch * dp), validated to divide exactly by ValidateRecipe.
int64_t GradAccumulationSteps(const BatchSection& batch, int64_t dp);

// The recipe back as YAML (complete, every field), parseable by ParseRecipe to an equal Recipe.
std::string RecipeToYaml(const Recipe& recipe);

}  // namespace fulcrum::recipe
