#include "trainer/metrics/step_metrics.h"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/status.h"

namespace fulcrum::metrics {
namespace {

std::string FormatDuration(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, (s / 60) % 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsSink>> MetricsSink::Create(const std::string& jsonl_path,
                                                                 const std::string& tensorboard_dir,
                                                                 const parallel::Logger& logger,
                                                                 int64_t console_every) {
  std::unique_ptr<MetricsSink> sink(new MetricsSink(logger, std::max<int64_t>(1, console_every)));
  if (!tensorboard_dir.empty()) {
    absl::StatusOr<std::unique_ptr<TensorBoardWriter>> writer =
        TensorBoardWriter::Create(tensorboard_dir);
    if (!writer.ok()) return Annotate(writer.status(), "logging.tensorboard_dir");
    sink->tensorboard_ = std::move(*writer);
  }
  if (!jsonl_path.empty()) {
    const std::filesystem::path path(jsonl_path);
    std::error_code ec;
    if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), ec);
    sink->jsonl_.open(jsonl_path, std::ios::out | std::ios::app);
    if (!sink->jsonl_) {
      return absl::InvalidArgumentError(
          absl::StrCat("logging.metrics_file: cannot open ", jsonl_path, " for writing"));
    }
  }
  return sink;
}

void MetricsSink::RecordTensorBoard(const StepMetrics& m) {
  std::vector<std::pair<std::string, double>> scalars = {
      {"train/loss", m.loss},
      {"train/lr", m.lr},
      {"train/grad_norm", m.grad_norm},
      {"throughput/tokens_per_second", m.tokens_per_second},
      {"throughput/tokens_per_second_per_rank", m.tokens_per_second_per_rank},
      {"throughput/mfu", m.mfu},
      {"throughput/step_seconds", m.step_seconds},
      {"time/data_wait_seconds", m.times.data_wait},
      {"time/forward_seconds", m.times.forward},
      {"time/backward_seconds", m.times.backward},
      {"time/comm_wait_seconds", m.times.comm_wait},
      {"time/optimizer_seconds", m.times.optimizer},
      {"memory/rss_bytes", static_cast<double>(m.rss_bytes)},
      {"memory/peak_rss_bytes", static_cast<double>(m.peak_rss_bytes)},
  };
  if (m.peak_host_reserved_bytes > 0) {
    scalars.emplace_back("memory/peak_host_tensor_bytes",
                         static_cast<double>(m.peak_host_tensor_bytes));
    scalars.emplace_back("memory/peak_host_reserved_bytes",
                         static_cast<double>(m.peak_host_reserved_bytes));
  }
  if (m.peak_device_bytes > 0) {
    scalars.emplace_back("memory/device_bytes", static_cast<double>(m.device_bytes));
    scalars.emplace_back("memory/peak_device_bytes", static_cast<double>(m.peak_device_bytes));
    scalars.emplace_back("memory/reserved_device_bytes",
                         static_cast<double>(m.reserved_device_bytes));
  }
  for (size_t i = 0; i < m.expert_load_max_over_mean.size(); ++i) {
    scalars.emplace_back(absl::StrCat("moe/expert_load_max_over_mean/", i),
                         m.expert_load_max_over_mean[i]);
  }
  if (!m.expert_load_max_over_mean.empty()) {
    scalars.emplace_back("moe/balance_loss", m.moe_balance_loss);
  }
  if (m.skipped_steps > 0) {
    scalars.emplace_back("train/skipped_steps", static_cast<double>(m.skipped_steps));
  }
  const absl::Status written = tensorboard_->AddScalars(m.step, scalars);
  if (!written.ok()) {
    // Metrics are not worth ending a training run for: say so once, stop writing.
    logger_.Warn("logging.tensorboard_dir: ", written.message(), "; no more TensorBoard events");
    tensorboard_.reset();
  }
}

void MetricsSink::Record(const StepMetrics& m) {
  elapsed_seconds_ += m.step_seconds;
  ++recorded_;
  if (jsonl_.is_open()) {
    nlohmann::json line = {
        {"step", m.step},
        {"loss", m.loss},
        {"lr", m.lr},
        {"grad_norm", m.grad_norm},
        {"tokens", m.tokens},
        {"step_seconds", m.step_seconds},
        {"data_wait_seconds", m.times.data_wait},
        {"forward_seconds", m.times.forward},
        {"backward_seconds", m.times.backward},
        {"comm_wait_seconds", m.times.comm_wait},
        {"optimizer_seconds", m.times.optimizer},
        {"tokens_per_second", m.tokens_per_second},
        {"tokens_per_second_per_rank", m.tokens_per_second_per_rank},
        {"flops_per_second_per_rank", m.flops_per_second_per_rank},
        {"peak_flops_per_rank", m.peak_flops_per_rank},
        {"mfu", m.mfu},
        {"rss_bytes", m.rss_bytes},
        {"peak_rss_bytes", m.peak_rss_bytes},
        {"optimizer_state_bytes", m.optimizer_state_bytes},
    };
    if (m.peak_host_reserved_bytes > 0) {
      line["peak_host_tensor_bytes"] = m.peak_host_tensor_bytes;
      line["peak_host_reserved_bytes"] = m.peak_host_reserved_bytes;
    }
    if (m.peak_device_bytes > 0) {
      line["device_bytes"] = m.device_bytes;
      line["peak_device_bytes"] = m.peak_device_bytes;
      line["reserved_device_bytes"] = m.reserved_device_bytes;
    }
    if (!m.expert_load_max_over_mean.empty()) {
      line["expert_load_max_over_mean"] = m.expert_load_max_over_mean;
      line["moe_balance_loss"] = m.moe_balance_loss;
      line["moe_tokens_dropped"] = m.moe_tokens_dropped;
    }
    if (m.skipped_steps > 0) {
      line["skipped"] = m.skipped;
      line["skipped_steps"] = m.skipped_steps;
    }
    jsonl_ << line.dump() << "\n";
    jsonl_.flush();
  }
  if (tensorboard_ != nullptr) RecordTensorBoard(m);
  if (m.step % console_every_ != 0 && m.step != m.total_steps && !m.skipped) return;
  const double eta = elapsed_seconds_ / recorded_ * static_cast<double>(m.total_steps - m.step);
  std::string moe;
  if (!m.expert_load_max_over_mean.empty()) {
    moe = absl::StrFormat(
        " | expert load max/mean %.2f",
        *std::max_element(m.expert_load_max_over_mean.begin(), m.expert_load_max_over_mean.end()));
    if (m.moe_balance_loss > 0)
      absl::StrAppendFormat(&moe, " | balance loss %.4f", m.moe_balance_loss);
    const int64_t dropped =
        std::accumulate(m.moe_tokens_dropped.begin(), m.moe_tokens_dropped.end(), int64_t{0});
    if (dropped > 0) absl::StrAppendFormat(&moe, " | dropped %d", dropped);
  }
  if (m.skipped) {
    absl::StrAppendFormat(&moe, " | SKIPPED: non-finite gradient norm (%d skipped so far)",
                          m.skipped_steps);
  }
  const std::string device_memory =
      m.peak_device_bytes > 0
          ? absl::StrFormat(" | device peak %.2f GiB", m.peak_device_bytes / 1073741824.0)
          : std::string();
  logger_.Info(absl::StrFormat(
      "step %d/%d | loss %.4f | lr %.3e | grad_norm %.3f%s | %.0f tok/s | %.2f GFLOP/s/rank "
      "(MFU %.1f%%) | rss %.0f MiB%s | eta %s",
      m.step, m.total_steps, m.loss, m.lr, m.grad_norm, moe, m.tokens_per_second,
      m.flops_per_second_per_rank / 1e9, 100.0 * m.mfu, m.rss_bytes / 1048576.0, device_memory,
      FormatDuration(eta)));
}

}  // namespace fulcrum::metrics
