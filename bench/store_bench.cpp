// store_bench: N sagas x M events appended by C concurrent writers through postgres_event_store (group commit),
// then the same rows inserted with plain single-row transactions from C connections (the baseline).
// Default durability: fsync and synchronous_commit as the server has them (on). Last line: one JSON object.
//
//   saga_store_bench [--sagas N] [--events M] [--writers C] [--per-append K] [--baseline-rows R]
//                    [--batch B] [--wait-us U] [--writer-connections W] [--caller-threads T] [--warmup 0|1]
//                    (SAGA_PG_URL must point at the server)
#include "saga/storage/hash_chain.hpp"
#include "saga/storage/migrate.hpp"
#include "saga/storage/postgres_event_store.hpp"
#include "saga/storage/postgres_session.hpp"

#include <unistd.h>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace saga;
using steady = std::chrono::steady_clock;

struct config {
  std::size_t sagas = 2560;
  std::size_t events = 50;   // per saga
  std::size_t writers = 64;  // concurrent sagas in flight
  // Events per append: the order saga appends 2.1 on average (12 events in 5.6 appends: the start with its first
  // command, each reply with the next command or the ending), so 2 is the shape a saga gives the store; every run
  // also measures 1 per append (events_per_s_one_per_append).
  std::size_t per_append = 2;
  std::size_t baseline_rows = 20000;
  std::size_t batch = 256;
  long wait_us = 2000;
  std::size_t connections = storage::postgres_event_store_options{}.writer_connections;
  std::size_t caller_threads = 2;  // threads that prepare the writers' next appends (the orchestrator's strands)
  bool warmup = true;
};

time_point at(std::uint64_t i) {
  return time_point(std::chrono::milliseconds(1'700'000'000'000 + static_cast<std::int64_t>(i)));
}

event event_at(const saga_id& id, std::uint64_t seq) {
  if (seq == 1) return {1, at(1), events::saga_started{"order", 1, "fp", R"({"order":"o-1","amount":1250})", ""}};
  return {seq, at(seq),
          events::step_requested{"charge", static_cast<std::uint32_t>(seq), make_command_id(id, seq), "payment",
                                 "charge", R"({"amount":1250,"currency":"EUR","order":"o-1"})", at(seq + 30000)}};
}

storage::append_request request_for(const saga_id& id, std::uint64_t expected, std::size_t count, std::size_t total) {
  storage::append_request r;
  r.saga = id;
  r.saga_type = "order";
  r.expected_seq = expected;
  for (std::uint64_t seq = expected + 1; seq <= expected + count && seq <= total; ++seq)
    r.events.push_back(event_at(id, seq));
  r.status_after = r.events.back().seq == total ? saga_status::completed : saga_status::running;
  return r;
}

double percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
}

// Threads of the caller: a completed append's callback hands the writer's next append to them, as the orchestrator's
// callbacks hand work to its strands, so encoding and hashing do not run on the store's single completion thread.
class caller_pool {
 public:
  explicit caller_pool(std::size_t threads) {
    for (std::size_t i = 0; i < std::max<std::size_t>(1, threads); ++i)
      threads_.emplace_back([this] {
        for (;;) {
          std::function<void()> job;
          {
            std::unique_lock lock(mutex_);
            cv_.wait(lock, [&] { return stopping_ || !jobs_.empty(); });
            if (jobs_.empty()) return;
            job = std::move(jobs_.front());
            jobs_.pop_front();
          }
          job();
        }
      });
  }
  ~caller_pool() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  caller_pool(const caller_pool&) = delete;
  caller_pool& operator=(const caller_pool&) = delete;
  void post(std::function<void()> job) {
    {
      std::lock_guard lock(mutex_);
      jobs_.push_back(std::move(job));
    }
    cv_.notify_one();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

// C writers, each driving one saga at a time with async appends chained from the callbacks.
struct group_commit_run {
  config cfg;
  storage::postgres_event_store& store;
  caller_pool& callers;
  std::vector<saga_id> ids;
  std::atomic<std::size_t> next_saga{0};
  std::mutex mutex;
  std::condition_variable done_cv;
  std::size_t writers_done = 0;
  std::vector<std::vector<double>> latencies;  // per writer, ms
  std::atomic<std::size_t> errors{0};

  void start_writer(std::size_t w) {
    const std::size_t s = next_saga++;
    if (s >= ids.size()) {
      std::lock_guard lock(mutex);
      ++writers_done;
      done_cv.notify_all();
      return;
    }
    append(w, s, 0);
  }
  void append(std::size_t w, std::size_t s, std::uint64_t expected) {
    const auto t0 = steady::now();
    store.async_append(request_for(ids[s], expected, expected == 0 ? 1 : cfg.per_append, cfg.events),
                       [this, w, s, t0](std::exception_ptr error, storage::append_result result) {
                         latencies[w].push_back(std::chrono::duration<double, std::milli>(steady::now() - t0).count());
                         if (error) {
                           ++errors;
                           callers.post([this, w] { start_writer(w); });
                           return;
                         }
                         if (result.last_seq >= cfg.events)
                           callers.post([this, w] { start_writer(w); });
                         else
                           callers.post([this, w, s, seq = result.last_seq] { append(w, s, seq); });
                       });
  }
};

}  // namespace

int main(int argc, char** argv) {
  config cfg;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const auto value = std::strtoul(argv[i + 1], nullptr, 10);
    if (flag == "--sagas")
      cfg.sagas = value;
    else if (flag == "--events")
      cfg.events = value;
    else if (flag == "--writers")
      cfg.writers = value;
    else if (flag == "--per-append")
      cfg.per_append = value;
    else if (flag == "--baseline-rows")
      cfg.baseline_rows = value;
    else if (flag == "--batch")
      cfg.batch = value;
    else if (flag == "--warmup")
      cfg.warmup = value != 0;
    else if (flag == "--wait-us")
      cfg.wait_us = static_cast<long>(value);
    else if (flag == "--writer-connections")
      cfg.connections = value;
    else if (flag == "--caller-threads")
      cfg.caller_threads = value;
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  const char* base = std::getenv("SAGA_PG_URL");
  if (base == nullptr || *base == '\0') {
    std::fprintf(stderr, "SAGA_PG_URL is not set (scripts/bench store starts a private server)\n");
    return 2;
  }
  const std::string schema = "saga_bench_" + std::to_string(::getpid());
  const std::string url =
      std::string(base) + (std::strchr(base, '?') ? "&" : "?") + "options=-csearch_path%3D" + schema;
  try {
    storage::postgres_session admin(base);
    admin.exec("CREATE SCHEMA " + schema);
    (void)storage::migrate(url);
    const auto settings = admin.exec("SELECT current_setting('fsync'), current_setting('synchronous_commit')");
    std::printf("server: fsync=%s synchronous_commit=%s\n", settings[0][0]->c_str(), settings[0][1]->c_str());

    std::mt19937_64 rng(std::random_device{}());
    // --- group commit through postgres_event_store
    storage::postgres_event_store_options options;
    options.max_batch_size = cfg.batch;
    options.max_batch_wait = std::chrono::microseconds(cfg.wait_us);
    options.writer_connections = cfg.connections;
    // One measured run of cfg.sagas sagas at `per_append` events per append (after an unmeasured one when warming).
    struct measured {
      double events_per_s = 0, p50 = 0, p99 = 0;
      storage::postgres_event_store_stats stats;
    };
    const auto measure = [&](std::size_t per_append, bool warm) -> std::optional<measured> {
      config run_cfg = cfg;
      run_cfg.per_append = per_append;
      storage::postgres_event_store store(url, options);
      caller_pool callers(cfg.caller_threads);
      group_commit_run run{run_cfg, store, callers, {}, {}, {}, {}, 0, {}, {}};
      for (std::size_t i = 0; i < cfg.sagas; ++i) run.ids.push_back(saga_id::from_words(rng(), rng()));
      run.latencies.resize(cfg.writers);
      const auto t0 = steady::now();
      for (std::size_t w = 0; w < cfg.writers; ++w) run.start_writer(w);
      {
        std::unique_lock lock(run.mutex);
        run.done_cv.wait(lock, [&] { return run.writers_done == cfg.writers; });
      }
      const double seconds = std::chrono::duration<double>(steady::now() - t0).count();
      measured m;
      m.stats = store.stats();
      if (warm) return m;
      m.events_per_s = static_cast<double>(m.stats.events) / seconds;
      std::vector<double> all;
      for (auto& l : run.latencies) all.insert(all.end(), l.begin(), l.end());
      m.p50 = percentile(all, 0.50);
      m.p99 = percentile(all, 0.99);
      std::printf(
          "group commit, %zu event(s) per append: %llu events in %llu appends, %llu transactions (%.1f appends "
          "each), %.2f s: %.0f events/s, append latency p50 %.2f ms p99 %.2f ms, %zu errors\n",
          per_append, static_cast<unsigned long long>(m.stats.events), static_cast<unsigned long long>(m.stats.appends),
          static_cast<unsigned long long>(m.stats.batches),
          static_cast<double>(m.stats.appends) / static_cast<double>(std::max<std::uint64_t>(1, m.stats.batches)),
          seconds, m.events_per_s, m.p50, m.p99, run.errors.load());
      if (run.errors.load() != 0) return std::nullopt;
      // Sanity: a sample of sagas verifies.
      for (std::size_t i = 0; i < run.ids.size(); i += std::max<std::size_t>(1, run.ids.size() / 20)) {
        const auto log = store.load(run.ids[i]);
        if (log.size() != cfg.events || storage::verify_chain(log)) {
          std::fprintf(stderr, "saga %s did not verify\n", run.ids[i].to_string().c_str());
          return std::nullopt;
        }
      }
      return m;
    };
    // a fresh server first creates WAL segments and fills caches: the same load once, unmeasured
    if (cfg.warmup) (void)measure(cfg.per_append, true);
    const auto headline = measure(cfg.per_append, false);
    if (!headline) return 1;
    std::optional<measured> single = headline;
    if (cfg.per_append != 1 && !(single = measure(1, false))) return 1;
    const double events_per_s = headline->events_per_s, p50 = headline->p50, p99 = headline->p99;
    const auto& stats = headline->stats;

    // --- baseline: the same kind of rows, one INSERT per transaction, from C connections
    const std::size_t per_writer = std::max<std::size_t>(1, cfg.baseline_rows / cfg.writers);
    std::vector<std::vector<storage::recorded_event>> rows(cfg.writers);
    for (auto& w : rows) {
      const saga_id id = saga_id::from_words(rng(), rng());
      storage::append_request r = request_for(id, 0, per_writer, per_writer);
      w = storage::seal(r, "");
    }
    std::atomic<std::size_t> baseline_errors{0};
    std::vector<std::thread> threads;
    const auto b0 = steady::now();
    for (std::size_t w = 0; w < cfg.writers; ++w)
      threads.emplace_back([&, w] {
        try {
          storage::postgres_session session(url);
          for (const auto& e : rows[w])
            session.exec(
                "INSERT INTO saga_events (saga_id, seq, type, schema_version, payload, metadata, prev_hash, hash)"
                " VALUES ($1::uuid, $2::bigint, $3, $4::integer, $5::jsonb, $6::jsonb, $7, $8)",
                {e.saga.to_string(), std::to_string(e.seq), e.type, std::to_string(e.schema_version), e.payload,
                 e.metadata, e.prev_hash, e.hash});
        } catch (const std::exception& ex) {
          std::fprintf(stderr, "baseline writer: %s\n", ex.what());
          ++baseline_errors;
        }
      });
    for (auto& t : threads) t.join();
    const double baseline_seconds = std::chrono::duration<double>(steady::now() - b0).count();
    const double baseline_events_per_s = static_cast<double>(per_writer * cfg.writers) / baseline_seconds;
    std::printf(
        "baseline: %zu single-row transactions (BEGIN; INSERT one event; COMMIT) from %zu connections in %.2f s: "
        "%.0f events/s\n",
        per_writer * cfg.writers, cfg.writers, baseline_seconds, baseline_events_per_s);
    admin.exec("DROP SCHEMA " + schema + " CASCADE");
    if (baseline_errors.load() != 0) return 1;

    std::printf(
        "{\"bench\":\"store\",\"sagas\":%zu,\"events_per_saga\":%zu,\"writers\":%zu,\"events_per_append\":%zu,"
        "\"events\":%llu,\"transactions\":%llu,\"events_per_s\":%.0f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,"
        "\"baseline_events_per_s\":%.0f,\"speedup\":%.2f,\"events_per_s_one_per_append\":%.0f,"
        "\"p50_ms_one_per_append\":%.3f,\"p99_ms_one_per_append\":%.3f}\n",
        cfg.sagas, cfg.events, cfg.writers, cfg.per_append, static_cast<unsigned long long>(stats.events),
        static_cast<unsigned long long>(stats.batches), events_per_s, p50, p99, baseline_events_per_s,
        events_per_s / baseline_events_per_s, single->events_per_s, single->p50, single->p99);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "store bench failed: %s\n", e.what());
    return 1;
  }
  return 0;
}
