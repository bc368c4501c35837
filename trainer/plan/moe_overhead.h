// What a MoE layer costs beyond its FLOPs: gathering each expert's rows and
// scattering its outputs back (index_select and index_add over [N k,
// hidden]), the per-expert slices, calls and autograd nodes, the products
// on ragged row counts. On one CPU rank these were a third of the bench
// MoE's step (0.27 of 0.79 s), which the FLOP count alone predicted 28%
// short. They grow with the routed rows (tokens x top-k), so the plan
// counts them per routed row, measured on this host.
#pragma once

#include "absl/status/statusor.h"
#include "trainer/models/model_config.h"
#include "trainer/recipe/recipe.h"

namespace fulcrum::plan {

// Seconds per routed row (one token's choice of one expert) of a MoE
// layer's forward and backward beyond its FLOPs at `flops_per_s`: one MoE
// block of `config` holding the experts one rank holds under the recipe's
// expert parallelism, adapters as the recipe trains them, routes as many
// tokens as give each expert the rows it would receive in training (under
// ep, ep x micro-batch tokens x k / E); its fastest of 7 runs less its FLOPs',
// over the rows. 0 when the FLOPs take longer. Blocks whose weights would
// exceed 1 GiB hold fewer experts with the same rows each. One block runs
// alone, with the caller's intra-op threads. `config` must have MoE layers.
// Errors: the recipe's LoRA spec is invalid (named by its key).
absl::StatusOr<double> MeasureMoeRowSeconds(const models::ModelConfig& config,
                                            const recipe::Recipe& recipe, double flops_per_s);

}  // namespace fulcrum::plan
