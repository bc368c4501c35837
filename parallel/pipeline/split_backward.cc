// Split backward on the autograd engine (see split_backward.h).
//
// Terms. R_in: the graph nodes on a path from the output to the input (the
// input's grad accumulator included). A boundary node is a node of R_in
// with a next edge leaving R_in towards a parameter (directly its grad
// accumulator, or a subgraph such as t() that leads to one): AddmmBackward
// for a Linear, MulBackward for an RMSNorm weight, AddBackward for a bias
// branch. The subgraphs hanging off boundary nodes outside R_in never lead
// to the input, so they are disjoint from R_in.
//
// Input phase: pre-hooks on the boundary nodes capture the gradients they
// receive; the engine runs towards the input only (its exec_info makes each
// node compute just the outputs on the way to the input). A non-leaf input
// (the first stage's split point, e.g. the embedding output) is where the
// engine stops: its node does not run, and when it leads to parameters it is
// a boundary node whose captured gradient is the phase's result.
// Weight phase: the boundary nodes' edges into R_in are cut (the graph is
// released afterwards anyway), and one engine call starts at all boundary
// nodes with their captured gradients, towards the parameters, accumulating
// into .grad. With the R_in edges cut no boundary node reaches another, so
// nothing of R_in runs twice, and a subgraph shared by several boundary
// nodes (a parameter used twice) runs once with the summed gradient, as in
// backward().
#include "parallel/pipeline/split_backward.h"

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "core/check.h"

namespace fulcrum::parallel::pipeline {

namespace ag = torch::autograd;

namespace {

// Where a captured gradient goes: the slot is filled when the engine calls
// the boundary node in the input phase.
struct CapturedGrads {
  ag::variable_list grads;
  bool filled = false;
};

class CapturePreHook : public ag::FunctionPreHook {
 public:
  explicit CapturePreHook(std::shared_ptr<CapturedGrads> slot) : slot_(std::move(slot)) {}
  ag::variable_list operator()(const ag::variable_list& grads) override {
    slot_->grads = grads;
    slot_->filled = true;
    return grads;
  }

 private:
  std::shared_ptr<CapturedGrads> slot_;
};

struct NodeFlags {
  bool reaches_input = false;
  bool reaches_param = false;
};

using FlagMap = std::unordered_map<const ag::Node*, NodeFlags>;

// Post-order walk (iterative: a deep model's graph has thousands of nodes)
// computing, for every node reachable from `root`, whether it leads to the
// input's node and whether it leads to a parameter's grad accumulator.
FlagMap ClassifyNodes(const std::shared_ptr<ag::Node>& root, const ag::Node* input_node,
                      const std::unordered_set<const ag::Node*>& param_nodes) {
  FlagMap flags;
  struct Frame {
    ag::Node* node;
    size_t next = 0;
  };
  std::vector<Frame> stack;
  std::unordered_set<const ag::Node*> visited;
  stack.push_back({root.get()});
  visited.insert(root.get());
  while (!stack.empty()) {
    Frame& top = stack.back();
    const ag::edge_list& edges = top.node->next_edges();
    if (top.next < edges.size()) {
      ag::Node* child = edges[top.next++].function.get();
      if (child != nullptr && visited.insert(child).second) stack.push_back({child});
      continue;
    }
    NodeFlags f;
    f.reaches_input = top.node == input_node;
    f.reaches_param = param_nodes.count(top.node) > 0;
    for (const ag::Edge& e : edges) {
      if (!e.is_valid()) continue;
      const NodeFlags& c = flags[e.function.get()];
      f.reaches_input |= c.reaches_input;
      f.reaches_param |= c.reaches_param;
    }
    flags[top.node] = f;
    stack.pop_back();
  }
  return flags;
}

ag::Edge GradientEdge(const torch::Tensor& t) { return ag::impl::gradient_edge(t); }

}  // namespace

struct DeferredWeightGradients::State {
  struct Boundary {
    std::shared_ptr<ag::Node> node;
    std::shared_ptr<CapturedGrads> captured;
    std::vector<size_t> input_side_edges;  // next edges into R_in (cut in the weight phase)
  };
  std::vector<Boundary> boundaries;
  // The whole backward deferred (no input, or the output does not depend on
  // it): the root edge and its gradient.
  ag::edge_list roots;
  ag::variable_list root_grads;
  ag::edge_list param_edges;  // the weight phase's targets
};

DeferredWeightGradients::DeferredWeightGradients() = default;
DeferredWeightGradients::~DeferredWeightGradients() = default;
DeferredWeightGradients::DeferredWeightGradients(DeferredWeightGradients&&) noexcept = default;
DeferredWeightGradients& DeferredWeightGradients::operator=(DeferredWeightGradients&&) noexcept =
    default;
bool DeferredWeightGradients::pending() const { return state_ != nullptr; }

namespace {

// Finds the boundary nodes and hooks them (see the file comment).
void HookBoundaries(const std::shared_ptr<ag::Node>& root, const FlagMap& flags,
                    DeferredWeightGradients::State& state) {
  std::unordered_set<const ag::Node*> seen;
  std::vector<std::shared_ptr<ag::Node>> stack{root};
  seen.insert(root.get());
  while (!stack.empty()) {
    std::shared_ptr<ag::Node> node = std::move(stack.back());
    stack.pop_back();
    DeferredWeightGradients::State::Boundary boundary;
    bool is_boundary = false;
    const ag::edge_list& edges = node->next_edges();
    for (size_t i = 0; i < edges.size(); ++i) {
      if (!edges[i].is_valid()) continue;
      const NodeFlags& c = flags.at(edges[i].function.get());
      if (c.reaches_input) {
        boundary.input_side_edges.push_back(i);
        if (seen.insert(edges[i].function.get()).second) stack.push_back(edges[i].function);
      } else if (c.reaches_param) {
        is_boundary = true;
      }
    }
    if (!is_boundary) continue;
    boundary.captured = std::make_shared<CapturedGrads>();
    node->add_pre_hook(std::make_unique<CapturePreHook>(boundary.captured));
    boundary.node = std::move(node);
    state.boundaries.push_back(std::move(boundary));
  }
}

// Removes the capture hooks (the last pre-hook of each boundary node is ours).
void UnhookBoundaries(DeferredWeightGradients::State& state) {
  for (auto& b : state.boundaries) {
    auto& hooks = b.node->pre_hooks();
    for (auto it = hooks.begin(); it != hooks.end(); ++it) {
      auto* capture = dynamic_cast<CapturePreHook*>(it->get());
      if (capture != nullptr) {
        hooks.erase(it);
        break;
      }
    }
  }
}

}  // namespace

torch::Tensor BackwardInput(const torch::Tensor& output, const torch::Tensor& grad_output,
                            const torch::Tensor& input, const std::vector<torch::Tensor>& params,
                            DeferredWeightGradients& deferred) {
  FULCRUM_CHECK(!deferred.pending(), "BackwardInput on a pending DeferredWeightGradients");
  FULCRUM_CHECK(output.defined() && output.requires_grad(), "the output has no autograd graph");
  FULCRUM_CHECK(grad_output.defined() || output.dim() == 0,
                "grad_output is needed for a non-scalar output of shape ",
                c10::str(output.sizes()));
  auto state = std::make_unique<DeferredWeightGradients::State>();
  const torch::Tensor grad = grad_output.defined() ? grad_output : torch::ones_like(output);
  const ag::Edge root_edge = GradientEdge(output);

  std::unordered_set<const ag::Node*> param_nodes;
  for (const torch::Tensor& p : params) {
    if (!p.requires_grad()) continue;
    ag::Edge e = GradientEdge(p);
    param_nodes.insert(e.function.get());
    state->param_edges.push_back(std::move(e));
  }

  const bool has_input = input.defined();
  if (has_input) {
    FULCRUM_CHECK(input.requires_grad(), "the chunk's input must require grad");
  }
  const ag::Edge input_edge = has_input ? GradientEdge(input) : ag::Edge();
  const FlagMap flags = ClassifyNodes(root_edge.function, input_edge.function.get(), param_nodes);
  if (!has_input || !flags.at(root_edge.function.get()).reaches_input) {
    // Nothing flows to an input: the whole backward is the weight phase.
    state->roots.push_back(root_edge);
    state->root_grads.push_back(grad);
    deferred.state_ = std::move(state);
    return has_input ? torch::zeros_like(input) : torch::Tensor();
  }

  HookBoundaries(root_edge.function, flags, *state);
  ag::variable_list result;
  try {
    result = ag::Engine::get_default_engine().execute({root_edge}, {grad}, /*keep_graph=*/true,
                                                      /*create_graph=*/false,
                                                      /*accumulate_grad=*/false, {input_edge});
  } catch (...) {
    UnhookBoundaries(*state);
    throw;
  }
  UnhookBoundaries(*state);
  FULCRUM_CHECK(result.size() == 1, "the engine returned ", result.size(), " gradients");
  if (!input.is_leaf()) {
    // A split point inside the graph: the engine stopped at its node without
    // running it, so its gradient is the input phase's result; when the node
    // leads to parameters (an embedding) the weight phase starts there too.
    for (auto& b : state->boundaries) {
      if (b.node != input_edge.function) continue;
      FULCRUM_CHECK(b.node->num_inputs() == 1, "the split point's node ", b.node->name(), " has ",
                    b.node->num_inputs(), " outputs; it must have one");
      b.captured->grads = {result[0]};
      b.captured->filled = result[0].defined();
    }
  }
  deferred.state_ = std::move(state);
  return result[0].defined() ? result[0] : torch::zeros_like(input);
}

void BackwardWeight(DeferredWeightGradients& deferred) {
  FULCRUM_CHECK(deferred.pending(), "BackwardWeight without a pending input phase");
  std::unique_ptr<DeferredWeightGradients::State> state = std::move(deferred.state_);
  ag::edge_list roots = std::move(state->roots);
  ag::variable_list grads = std::move(state->root_grads);
  for (auto& b : state->boundaries) {
    FULCRUM_CHECK(b.captured->filled, "boundary node ", b.node->name(),
                  " did not run in the input phase");
    // Cut the edges into R_in: the input phase already computed them, and
    // the graph is released after this phase.
    for (size_t i : b.input_side_edges) b.node->next_edges()[i] = ag::Edge();
    const ag::variable_list& captured = b.captured->grads;
    for (size_t i = 0; i < captured.size(); ++i) {
      if (!captured[i].defined()) continue;
      roots.emplace_back(b.node, static_cast<uint32_t>(i));
      grads.push_back(captured[i]);
    }
  }
  if (roots.empty() || state->param_edges.empty()) return;
  ag::Engine::get_default_engine().execute(roots, grads, /*keep_graph=*/false,
                                           /*create_graph=*/false, /*accumulate_grad=*/true,
                                           state->param_edges);
}

}  // namespace fulcrum::parallel::pipeline
