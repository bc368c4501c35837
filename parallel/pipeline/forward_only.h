// Forward passes through the pipeline without gradients (validation): every
// micro-batch crosses the virtual stages in order, no backward, no schedule.
#pragma once

#include "parallel/comm/communicator.h"
#include "parallel/pipeline/pipeline_executor.h"
#include "parallel/pipeline/schedule.h"

namespace fulcrum::parallel::pipeline {

// Collective over the pp group (`activations`: group rank = stage). Runs
// model.Forward for every (micro-batch, chunk) of `stage` under NoGradGuard,
// receiving each chunk's input from the previous virtual stage and sending
// its output to the next, with blocking calls in (micro-batch, virtual
// stage) order: every stage meets its transfers in the same global order, so
// none waits on another in a cycle.
void RunForwardOnly(StageModel& model, const ScheduleShape& shape, int stage,
                    Communicator& activations);

}  // namespace fulcrum::parallel::pipeline
