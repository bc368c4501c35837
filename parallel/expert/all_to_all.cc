#include "parallel/expert/all_to_all.h"

#include <numeric>

#include "core/check.h"

namespace fulcrum::parallel::expert {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

int64_t Sum(const std::vector<int64_t>& v) {
  return std::accumulate(v.begin(), v.end(), int64_t{0});
}

torch::Tensor Exchange(const torch::Tensor& x, const std::vector<int64_t>& output_splits,
                       const std::vector<int64_t>& input_splits, Communicator& group) {
  FULCRUM_CHECK(static_cast<int>(input_splits.size()) == group.size() &&
                    static_cast<int>(output_splits.size()) == group.size(),
                "all_to_all splits must have one entry per rank of ", group.name());
  FULCRUM_CHECK(x.size(0) == Sum(input_splits), "all_to_all input has ", x.size(0),
                " rows, splits sum to ", Sum(input_splits));
  std::vector<int64_t> shape = x.sizes().vec();
  shape[0] = Sum(output_splits);
  torch::Tensor out = torch::empty(shape, x.options());
  group.AllToAll(x.contiguous(), out, output_splits, input_splits);
  return out;
}

// The group rides in saved_data as an integer (an IValue holds no raw
// pointer); it belongs to the mesh, which outlives every graph.
class AllToAllRowsFn : public torch::autograd::Function<AllToAllRowsFn> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               std::vector<int64_t> output_splits,
                               std::vector<int64_t> input_splits, Communicator* group) {
    ctx->saved_data["group"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(group));
    ctx->saved_data["output_splits"] = output_splits;
    ctx->saved_data["input_splits"] = input_splits;
    return Exchange(x, output_splits, input_splits, *group);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto& group =
        *reinterpret_cast<Communicator*>(static_cast<intptr_t>(ctx->saved_data["group"].toInt()));
    // The gradient of each received row goes back to the rank it came from.
    const std::vector<int64_t> output_splits = ctx->saved_data["output_splits"].toIntVector();
    const std::vector<int64_t> input_splits = ctx->saved_data["input_splits"].toIntVector();
    return {Exchange(grads[0], input_splits, output_splits, group), torch::Tensor(),
            torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor AllToAllRows(const torch::Tensor& x, const std::vector<int64_t>& output_splits,
                           const std::vector<int64_t>& input_splits, Communicator& group) {
  return AllToAllRowsFn::apply(x, output_splits, input_splits, &group);
}

}  // namespace fulcrum::parallel::expert
