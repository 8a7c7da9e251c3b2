#include "saga/runtime/metrics.hpp"

#include <cmath>

namespace saga::runtime {

double histogram::bound(std::size_t i) noexcept { return 0.05 * std::pow(2.0, static_cast<double>(i)); }

void histogram::observe(double ms) noexcept {
  std::size_t i = 0;
  while (i + 1 < bucket_count && ms > bound(i)) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_us_.fetch_add(static_cast<std::uint64_t>(ms * 1000.0), std::memory_order_relaxed);
}

double histogram::quantile(double q) const noexcept {
  const std::uint64_t n = count();
  if (n == 0) return 0.0;
  const auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(n)));
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < bucket_count; ++i) {
    seen += bucket(i);
    if (seen >= rank && seen > 0) return bound(i);
  }
  return bound(bucket_count - 1);
}

namespace {
void counter(std::string& out, const char* name, const char* help, const std::atomic<std::uint64_t>& v) {
  out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n" + name + " " +
         std::to_string(v.load()) + "\n";
}
void hist(std::string& out, const char* name, const char* help, const histogram& h) {
  out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " histogram\n";
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < histogram::bucket_count; ++i) {
    cumulative += h.bucket(i);
    out += std::string(name) + "_bucket{le=\"" + std::to_string(histogram::bound(i) / 1000.0) + "\"} " +
           std::to_string(cumulative) + "\n";
  }
  out += std::string(name) + "_bucket{le=\"+Inf\"} " + std::to_string(h.count()) + "\n";
  out += std::string(name) + "_sum " + std::to_string(h.sum_ms() / 1000.0) + "\n";
  out += std::string(name) + "_count " + std::to_string(h.count()) + "\n";
}
}  // namespace

std::string metrics::prometheus() const {
  std::string out;
  counter(out, "saga_sagas_started_total", "Sagas started by this process.", sagas_started);
  counter(out, "saga_sagas_completed_total", "Sagas that completed.", sagas_completed);
  counter(out, "saga_sagas_compensated_total", "Sagas that were compensated.", sagas_compensated);
  counter(out, "saga_sagas_stuck_total", "Sagas parked for an operator.", sagas_stuck);
  counter(out, "saga_steps_dispatched_total", "Step commands sent (resends included).", steps_dispatched);
  counter(out, "saga_compensations_dispatched_total", "Compensation commands sent.", compensations_dispatched);
  counter(out, "saga_retries_scheduled_total", "Retries scheduled after a failure or timeout.", retries_scheduled);
  counter(out, "saga_appends_total", "Appends to the event store.", appends);
  counter(out, "saga_events_appended_total", "Events appended.", events_appended);
  counter(out, "saga_append_conflicts_total", "Appends that lost to another writer and were re-decided.",
          append_conflicts);
  counter(out, "saga_append_retries_total",
          "Appends (or the reads of a saga's log before one) retried because the store was unavailable.",
          append_retries);
  counter(out, "saga_appends_refused_total",
          "Appends the store refused with an error it does not call retryable (each is logged with its saga).",
          appends_refused);
  counter(out, "saga_replies_ignored_total", "Replies ignored as duplicate, stale or unknown.", replies_ignored);
  counter(out, "saga_triggers_rejected_total", "Triggers refused (e.g. cancel after the pivot).", triggers_rejected);
  counter(out, "saga_send_failures_total", "Commands the transport failed to send (resent on timeout).", send_failures);
  counter(out, "saga_sagas_recovered_total", "Unfinished sagas rebuilt from their logs.", sagas_recovered);
  counter(out, "saga_recovery_preloaded_total", "Recovered sagas folded from a log read in bulk with others.",
          recovery_preloaded);
  counter(out, "saga_recovery_prefetched_total",
          "Recovered sagas whose state was read and folded ahead, before their partition was assigned.",
          recovery_prefetched);
  counter(out, "saga_recovery_read_ahead_total", "Unfinished sagas read and folded by the read-ahead at start.",
          recovery_read_ahead);
  counter(out, "saga_sagas_dropped_total", "Cached sagas dropped because another process owns them now.",
          sagas_dropped);
  counter(out, "saga_sagas_swept_total",
          "Unfinished sagas of owned partitions, not held in memory, recovered by the orphan sweep.", sagas_swept);
  counter(out, "saga_partition_count_mismatches_total",
          "Saga types refused while running: their reply topic's partition count changed under unfinished sagas.",
          partition_count_mismatches);
  out +=
      "# HELP saga_reply_partitions_owned Reply partitions assigned to this process.\n"
      "# TYPE saga_reply_partitions_owned gauge\nsaga_reply_partitions_owned " +
      std::to_string(reply_partitions_owned.load()) + "\n";
  hist(out, "saga_append_latency_seconds", "From decision to durable append.", append_latency);
  hist(out, "saga_saga_latency_seconds", "From start to finish.", saga_latency);
  return out;
}

}  // namespace saga::runtime
