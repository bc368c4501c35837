// fulcrum_bench_moe: the cost of expert-parallel token dispatch next to the
// expert computation it feeds (scripts/bench_moe.sh).
//
//   mpirun -np N fulcrum_bench_moe EP [steps]
//
// A DeepSeek-V2-shaped MoE stack without attention: 4 layers of router
// (softmax top-4 of 16 experts) -> TokenDispatcher -> per-expert SwiGLU
// (hidden 512, expert width 256) -> combine, plus one shared expert of the
// same width, on 1024 tokens per rank, forward and backward. EP ranks split
// the experts (EP 1: every rank holds all 16, plain data parallelism).
// Printed per run:
//   - tokens/s over all ranks for the whole stack (fwd + bwd);
//   - all-to-all bytes per step sent by this rank (tokens out and back, in
//     forward and in backward);
//   - dispatch + combine time without the exchange (measured fwd + bwd of
//     dispatch and combine alone, minus a replay of the same all-to-alls)
//     over the expert FFN time (fwd + bwd of the per-expert loop);
//   - the grouped expert GEMM rate (FLOP/s of the per-expert loop) over the
//     rate of one dense SwiGLU FFN of the same width on all the rows (the
//     same FLOPs in one GEMM per projection).
#include <malloc.h>
#include <mpi.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <numeric>
#include <vector>

#include "core/check.h"
#include "parallel/comm/communicator_factory.h"
#include "parallel/expert/all_to_all.h"
#include "parallel/expert/token_dispatcher.h"
#include "parallel/runtime/mpi_check.h"

namespace fulcrum::parallel::expert {
namespace {

constexpr int64_t kHidden = 512, kExperts = 16, kTopK = 4, kFfn = 256, kLayers = 4;
constexpr int64_t kTokens = 1024;  // per rank

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

torch::Tensor Weight(int64_t out, int64_t in) {
  return (torch::randn({out, in}) / std::sqrt(static_cast<double>(in))).requires_grad_(true);
}

struct Expert {
  torch::Tensor gate, up, down;  // [F, H], [F, H], [H, F]
  Expert() : gate(Weight(kFfn, kHidden)), up(Weight(kFfn, kHidden)), down(Weight(kHidden, kFfn)) {}
  torch::Tensor Forward(const torch::Tensor& x) const {
    return torch::mm(torch::silu(torch::mm(x, gate.t())) * torch::mm(x, up.t()), down.t());
  }
};

struct Layer {
  torch::Tensor router = Weight(kExperts, kHidden);
  std::vector<Expert> experts;  // this rank's
  Expert shared;
};

// Per-expert loop over contiguous slices (the grouped GEMM).
torch::Tensor RunExperts(const std::vector<Expert>& experts, const torch::Tensor& rows,
                         const std::vector<int64_t>& counts) {
  std::vector<torch::Tensor> out;
  int64_t offset = 0;
  for (size_t e = 0; e < experts.size(); ++e) {
    out.push_back(experts[e].Forward(rows.narrow(0, offset, counts[e])));
    offset += counts[e];
  }
  return torch::cat(out);
}

struct Figures {
  double step = 0, dispatch_combine = 0, exchange = 0, experts = 0, dense = 0;
  double dispatch_fwd = 0, combine_fwd = 0, backward = 0;
  double expert_rows = 0, a2a_bytes = 0;
};

// One layer's pieces timed apart on `x` (no autograd link to other layers).
void MeasureLayer(const Layer& layer, const TokenDispatcher& dispatcher, Communicator* ep,
                  const torch::Tensor& x_in, Figures& f) {
  const torch::Tensor x = x_in.detach().requires_grad_(true);
  torch::Tensor ids, weights;
  {
    torch::NoGradGuard no_grad;
    const auto top = torch::softmax(torch::mm(x, layer.router.t()), -1).topk(kTopK);
    weights = std::get<0>(top);
    ids = std::get<1>(top);
  }
  // Dispatch + combine alone (experts replaced by identity on a leaf); the
  // ranks start together so that one's wait for the other is not counted.
  if (ep != nullptr) ep->Barrier();
  Clock::time_point start = Clock::now();
  Dispatched d = dispatcher.Dispatch(x, ids, weights);
  f.dispatch_fwd += Since(start);
  const torch::Tensor expert_out = d.expert_input.detach().clone().requires_grad_(true);
  Clock::time_point mark = Clock::now();
  const torch::Tensor y = dispatcher.Combine(expert_out, d.handle);
  f.combine_fwd += Since(mark);
  mark = Clock::now();
  y.backward(torch::ones_like(y));
  d.expert_input.backward(torch::ones_like(d.expert_input));
  f.backward += Since(mark);
  f.dispatch_combine += Since(start);
  // The exchanges of that: counts, tokens out and back, forward and backward.
  if (ep != nullptr) {
    const torch::Tensor counts = torch::zeros({kExperts}, torch::kLong);
    torch::Tensor counts_out = torch::empty_like(counts);
    const torch::Tensor sent = torch::ones({d.handle.local.tokens.size(0), kHidden});
    ep->Barrier();
    start = Clock::now();
    ep->AllToAll(counts, counts_out);
    for (int pass = 0; pass < 2; ++pass) {
      const torch::Tensor there =
          AllToAllRows(sent, d.handle.recv_splits, d.handle.send_splits, *ep);
      AllToAllRows(there, d.handle.send_splits, d.handle.recv_splits, *ep);
    }
    f.exchange += Since(start);
    // Rows that leave this rank (its own block is a local copy), out and
    // back, forward and backward.
    const int64_t kept = d.handle.send_splits[static_cast<size_t>(ep->rank())];
    f.a2a_bytes += 4.0 * static_cast<double>(sent.size(0) - kept) * kHidden * sizeof(float);
  }
  // The experts alone, forward and backward.
  const torch::Tensor rows = d.expert_input.detach().requires_grad_(true);
  start = Clock::now();
  const torch::Tensor out = RunExperts(layer.experts, rows, d.tokens_per_local_expert);
  out.backward(torch::ones_like(out));
  f.experts += Since(start);
  f.expert_rows += static_cast<double>(rows.size(0));
  // One dense FFN of the same width on the same rows.
  start = Clock::now();
  const torch::Tensor dense = layer.shared.Forward(rows);
  dense.backward(torch::ones_like(dense));
  f.dense += Since(start);
}

// The whole stack, forward and backward, as training runs it.
double Step(const std::vector<Layer>& layers, const TokenDispatcher& dispatcher,
            const torch::Tensor& input) {
  const Clock::time_point start = Clock::now();
  torch::Tensor h = input;
  for (const Layer& layer : layers) {
    const auto top = torch::softmax(torch::mm(h, layer.router.t()), -1).topk(kTopK);
    Dispatched d = dispatcher.Dispatch(h, std::get<1>(top), std::get<0>(top));
    const torch::Tensor routed = dispatcher.Combine(
        RunExperts(layer.experts, d.expert_input, d.tokens_per_local_expert), d.handle);
    h = h + routed + layer.shared.Forward(h);
  }
  h.sum().backward();
  return Since(start);
}

int Main(int argc, char** argv) {
  const int ep_size = argc > 1 ? std::atoi(argv[1]) : 1;
  const int steps = argc > 2 ? std::atoi(argv[2]) : 5;
  CommOptions options;
  options.timeout_seconds = 120.0;
  auto world = CreateCommunicator(CommBackend::kMpi, MPI_COMM_WORLD, "world", options);
  FULCRUM_CHECK(world.ok(), world.status().ToString());
  const int rank = (*world)->rank(), size = (*world)->size();
  FULCRUM_CHECK(ep_size >= 1 && size % ep_size == 0, "ep ", ep_size, " must divide ", size);
  // ep groups: consecutive ranks.
  MPI_Comm ep_comm;
  FULCRUM_MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, rank / ep_size, rank, &ep_comm));
  auto ep = CreateCommunicator(CommBackend::kMpi, ep_comm, "ep", options);
  FULCRUM_CHECK(ep.ok(), ep.status().ToString());
  Communicator* ep_group = ep_size > 1 ? ep->get() : nullptr;
  const TokenDispatcher dispatcher(kExperts, ep_group);
  torch::manual_seed(1 + rank);
  std::vector<Layer> layers(kLayers);
  for (Layer& layer : layers) {
    for (int64_t e = 0; e < dispatcher.num_local_experts(); ++e) layer.experts.emplace_back();
  }
  const torch::Tensor input = torch::randn({kTokens, kHidden}).requires_grad_(true);
  Step(layers, dispatcher, input);  // warm-up
  Figures f;
  for (int s = 0; s < steps; ++s) {
    (*world)->Barrier();
    f.step += Step(layers, dispatcher, input);
    for (const Layer& layer : layers) MeasureLayer(layer, dispatcher, ep_group, input, f);
  }
  // Worst rank for times (the step waits for it), sums for bytes.
  std::vector<double> maxed = {f.step,  f.dispatch_combine, f.exchange,    f.experts,
                               f.dense, f.dispatch_fwd,     f.combine_fwd, f.backward};
  MPI_Allreduce(MPI_IN_PLACE, maxed.data(), static_cast<int>(maxed.size()), MPI_DOUBLE, MPI_MAX,
                MPI_COMM_WORLD);
  if (rank == 0) {
    const double step = maxed[0] / steps;
    const double overhead = (maxed[1] - maxed[2]) / maxed[3];
    const double expert_flops = 18.0 * kHidden * kFfn * f.expert_rows;  // 6 HF fwd + 12 HF bwd
    std::printf(
        "ranks %d, ep %d (%lld experts per rank): %.0f tokens/s (step %.1f ms, %lld tokens per "
        "rank, %lld layers)\n",
        size, ep_size, static_cast<long long>(dispatcher.num_local_experts()),
        size * kTokens / step, 1e3 * step, static_cast<long long>(kTokens),
        static_cast<long long>(kLayers));
    std::printf("  all-to-all bytes per step sent by rank 0 to other ranks: %.2f MiB\n",
                f.a2a_bytes / steps / 1048576.0);
    std::printf(
        "  dispatch + combine without the exchange: %.2f ms per layer (exchange %.2f ms), expert "
        "FFN %.2f ms: %.1f%% (goal <= 15%%)\n",
        1e3 * (maxed[1] - maxed[2]) / (steps * kLayers), 1e3 * maxed[2] / (steps * kLayers),
        1e3 * maxed[3] / (steps * kLayers), 100.0 * overhead);
    std::printf("    of which dispatch fwd %.2f ms, combine fwd %.2f ms, both backward %.2f ms\n",
                1e3 * maxed[5] / (steps * kLayers), 1e3 * maxed[6] / (steps * kLayers),
                1e3 * maxed[7] / (steps * kLayers));
    std::printf(
        "  grouped expert GEMMs %.2f GFLOP/s vs one dense FFN on the same rows %.2f GFLOP/s: "
        "%.1f%% (goal >= 70%%)\n",
        expert_flops / maxed[3] / 1e9, expert_flops / maxed[4] / 1e9, 100.0 * maxed[4] / maxed[3]);
  }
  ep->reset();
  MPI_Comm_free(&ep_comm);
  return 0;
}

}  // namespace
}  // namespace fulcrum::parallel::expert

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  // Freed activations stay in the process (as a caching allocator keeps them
  // on a GPU), so the timings measure compute, not page faults.
  FULCRUM_CHECK(mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1,
                "mallopt");
  const int rc = fulcrum::parallel::expert::Main(argc, argv);
  MPI_Finalize();
  return rc;
}
