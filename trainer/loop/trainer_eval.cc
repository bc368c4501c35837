// Trainer's validation loss: every validation row once per evaluation,
// split over dp (and run through the pipeline under pp), and its record.
#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "absl/strings/str_format.h"
#include "parallel/pipeline/forward_only.h"
#include "trainer/loop/forward_inputs.h"
#include "trainer/loop/trainer.h"
#include "trainer/models/loss.h"

namespace fulcrum::loop {
namespace {

// Rows [begin, end) as one batch of [end - begin, seq_len] int64 tensors.
data::MicroBatch StackRows(const std::vector<data::Row>& rows, size_t begin, size_t end) {
  const int64_t n = static_cast<int64_t>(end - begin);
  const int64_t seq_len = static_cast<int64_t>(rows[begin].input_ids.size());
  auto stack = [&](std::vector<int64_t> data::Row::*field) {
    torch::Tensor t = torch::empty({n, seq_len}, torch::kLong);
    int64_t* out = t.data_ptr<int64_t>();
    for (size_t r = begin; r < end; ++r) {
      const std::vector<int64_t>& v = rows[r].*field;
      std::copy(v.begin(), v.end(), out + static_cast<int64_t>(r - begin) * seq_len);
    }
    return t;
  };
  data::MicroBatch batch;
  batch.input_ids = stack(&data::Row::input_ids);
  batch.labels = stack(&data::Row::labels);
  batch.attention_mask = stack(&data::Row::attention_mask);
  batch.position_ids = stack(&data::Row::position_ids);
  batch.document_ids = stack(&data::Row::document_ids);
  return batch;
}

}  // namespace

double Trainer::Evaluate() {
  torch::NoGradGuard no_grad;
  built_.model->eval();
  // dp rank r takes rows r, r + dp, r + 2 dp, ...; micro_batch of them per
  // forward (its tp group runs the same rows).
  std::vector<data::Row> mine;
  for (size_t i = static_cast<size_t>(parallel_.dp_rank()); i < validation_rows_.size();
       i += static_cast<size_t>(parallel_.dp_size())) {
    mine.push_back(validation_rows_[i]);
  }
  const size_t micro = static_cast<size_t>(recipe_.batch.micro_batch);
  torch::Tensor loss_sum = torch::zeros({}, torch::kDouble);
  if (pipeline_) {
    std::vector<data::MicroBatch> batches;
    for (size_t begin = 0; begin < mine.size(); begin += micro) {
      batches.push_back(StackRows(mine, begin, std::min(mine.size(), begin + micro)));
    }
    stage_->SetBatch(batches, 1.0);
    parallel::pipeline::ScheduleShape shape = pipeline_->schedule().shape;
    shape.micro_batches = static_cast<int>(batches.size());
    parallel::pipeline::RunForwardOnly(*stage_, shape, parallel_.pp_rank(), parallel_.pp());
    loss_sum += stage_->loss_sum().to(torch::kCPU, torch::kDouble);
    parallel_.pp().AllReduce(loss_sum);
  }
  // Under ep every rank of an ep group joins every forward's all-to-alls: a
  // rank with fewer rows runs the missing forwards on a row without targets.
  size_t forwards = (mine.size() + micro - 1) / micro;
  if (parallel_.ep_size() > 1) {
    const size_t dp = static_cast<size_t>(parallel_.dp_size());
    forwards = ((validation_rows_.size() + dp - 1) / dp + micro - 1) / micro;
  }
  for (size_t f = 0; f < forwards && !pipeline_; ++f) {
    const size_t begin = f * micro;
    data::MicroBatch batch;
    if (begin < mine.size()) {
      batch = StackRows(mine, begin, std::min(mine.size(), begin + micro));
    } else {
      batch = StackRows(validation_rows_, 0, 1);
      batch.labels.fill_(-100);
    }
    const torch::Tensor logits = built_.model->forward(ForwardInputsOn(batch, device_));
    loss_sum += models::TrainingLossSum(*built_.model, logits, batch.labels.to(device_))
                    .to(torch::kCPU, torch::kDouble);
  }
  parallel_.dp().AllReduce(loss_sum);
  built_.model->train();
  return loss_sum.item<double>() / static_cast<double>(std::max<int64_t>(1, validation_targets_));
}

void Trainer::RecordEval(int64_t step, double val_loss) {
  logger_.Info(absl::StrFormat("eval step %d/%d | val_loss %.4f | %d targets", step,
                               recipe_.train.steps, val_loss, validation_targets_));
  if (!world_.is_root() || recipe_.logging.metrics_file.empty()) return;
  // Appended next to the step lines (the sink's file is opened for appending too).
  std::ofstream out(recipe_.logging.metrics_file, std::ios::out | std::ios::app);
  const nlohmann::json line = {
      {"step", step}, {"val_loss", val_loss}, {"val_targets", validation_targets_}};
  out << line.dump() << "\n";
  if (!out) logger_.Warn("cannot append val_loss to ", recipe_.logging.metrics_file);
}

}  // namespace fulcrum::loop
