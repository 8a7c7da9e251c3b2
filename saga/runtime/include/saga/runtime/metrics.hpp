// saga/runtime/metrics.hpp — counters and latency histograms of an orchestrator, in-process and as Prometheus text.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

namespace saga::runtime {

// A lock-free latency histogram with exponential buckets (0.05 ms … ~100 s); quantiles are bucket upper bounds.
class histogram {
 public:
  static constexpr std::size_t bucket_count = 32;
  // Records one observation in milliseconds.
  void observe(double ms) noexcept;
  // The q-quantile (0..1) in milliseconds, or 0 without observations.
  [[nodiscard]] double quantile(double q) const noexcept;
  [[nodiscard]] std::uint64_t count() const noexcept { return count_.load(std::memory_order_relaxed); }
  [[nodiscard]] double sum_ms() const noexcept {
    return static_cast<double>(sum_us_.load(std::memory_order_relaxed)) / 1000.0;
  }
  // Upper bound of bucket i in milliseconds.
  [[nodiscard]] static double bound(std::size_t i) noexcept;
  [[nodiscard]] std::uint64_t bucket(std::size_t i) const noexcept {
    return buckets_[i].load(std::memory_order_relaxed);
  }

 private:
  std::array<std::atomic<std::uint64_t>, bucket_count> buckets_{};
  std::atomic<std::uint64_t> count_{0}, sum_us_{0};
};

// Everything an orchestrator counts. All members are safe to read while it runs.
struct metrics {
  std::atomic<std::uint64_t> sagas_started{0}, sagas_completed{0}, sagas_compensated{0}, sagas_stuck{0};
  std::atomic<std::uint64_t> steps_dispatched{0}, compensations_dispatched{0}, retries_scheduled{0};
  std::atomic<std::uint64_t> appends{0}, events_appended{0}, append_conflicts{0}, append_retries{0};
  std::atomic<std::uint64_t> replies_ignored{0}, triggers_rejected{0}, send_failures{0}, sagas_recovered{0};
  // Appends the store refused (an error it does not call retryable). A caller awaiting one (start, cancel, an
  // operator's action) gets the error; a reply or timer is decided again after refused_append_backoff.
  std::atomic<std::uint64_t> appends_refused{0};
  std::atomic<std::uint64_t> sagas_dropped{0};  // cached sagas let go: their reply partition went to another process
  std::atomic<std::uint64_t> sagas_swept{0};    // unfinished sagas not held here, recovered by the orphan sweep
  std::atomic<std::uint64_t> recovery_preloaded{0};      // recovered sagas folded from a log read in bulk (no own load)
  std::atomic<std::uint64_t> recovery_prefetched{0};     // of those, folded ahead by run() before the assignment
  std::atomic<std::uint64_t> recovery_read_ahead{0};     // sagas folded by the read-ahead of run() (once it finished)
  std::atomic<std::uint64_t> reply_partitions_owned{0};  // gauge: reply partitions assigned to this process now
  // Saga types refused while running because their reply topic's partition count changed under unfinished sagas
  // (see orchestrator::run); nonzero means the process needs an operator and a restart.
  std::atomic<std::uint64_t> partition_count_mismatches{0};
  histogram append_latency;  // trigger decided -> append durable
  histogram saga_latency;    // start -> finished, for sagas started by this process

  // Prometheus text exposition format (version 0.0.4).
  [[nodiscard]] std::string prometheus() const;
};

}  // namespace saga::runtime
