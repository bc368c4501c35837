// LoraLinear: the linear layer every model projection is built from.
//
// Without an adapter it is y = x W^T + b. With one attached (LoRA, Hu et al.)
// it adds scaling * B(A(dropout(x))), the base W and b frozen by the caller.
// Parameter names follow Hugging Face / PEFT so that a module path plus these
// names is the checkpoint key: "weight", "bias", "lora_A.weight",
// "lora_B.weight".
#pragma once

#include <torch/torch.h>

namespace fulcrum::lora {

struct LoraSpec {
  int64_t rank = 8;      // r
  double alpha = 16.0;   // scaling numerator
  double dropout = 0.0;  // on the adapter's input only
  bool rslora = false;   // scaling alpha/sqrt(r) instead of alpha/r
  double Scaling() const;
};

// Holds one adapter matrix under the name "weight" (PEFT's lora_A.weight).
class AdapterMatrixImpl : public torch::nn::Module {
 public:
  explicit AdapterMatrixImpl(torch::Tensor value) {
    weight = register_parameter("weight", std::move(value));
  }
  torch::Tensor weight;
};
TORCH_MODULE(AdapterMatrix);

class LoraLinearImpl : public torch::nn::Module {
 public:
  // Parameters are created uninitialised (empty) with `options`; weights are
  // loaded from a checkpoint or initialised by the model's initialiser.
  LoraLinearImpl(int64_t in_features, int64_t out_features, bool bias,
                 const torch::TensorOptions& options);

  // x [..., in] -> [..., out]
  torch::Tensor forward(const torch::Tensor& x);

  // Attaches a fresh adapter: A ~ kaiming-uniform(a=sqrt(5)) as PEFT does,
  // B = 0, so the layer's output is unchanged until B trains.
  void AttachAdapter(const LoraSpec& spec);
  bool has_adapter() const { return lora_a_.defined(); }
  double scaling() const { return scaling_; }
  // Folds scaling * B A into W and removes the adapter.
  void MergeAdapter();

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }

  torch::Tensor weight;  // [out, in]
  torch::Tensor bias;    // [out], undefined without bias

  torch::Tensor lora_a() const { return lora_a_; }  // [r, in]
  torch::Tensor lora_b() const { return lora_b_; }  // [out, r]

 private:
  int64_t in_features_;
  int64_t out_features_;
  torch::Tensor lora_a_;
  torch::Tensor lora_b_;
  double scaling_ = 0.0;
  double dropout_ = 0.0;
};
TORCH_MODULE(LoraLinear);

}  // namespace fulcrum::lora
