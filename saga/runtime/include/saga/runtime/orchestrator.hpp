// saga/runtime/orchestrator.hpp — runs sagas: fold -> decide -> append -> only then perform the effects.
#pragma once

#include "saga/decide.hpp"
#include "saga/runtime/clock.hpp"
#include "saga/runtime/metrics.hpp"
#include "saga/storage/event_store.hpp"
#include "saga/transport/transport.hpp"

#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>

namespace saga::runtime {

// How a saga ended (or parked): what an awaiting caller receives.
struct saga_outcome {
  saga_status status = saga_status::running;  // completed, compensated or stuck
  std::string output;                         // final data (completed)
  std::string reason;                         // why (compensated, stuck)
  std::chrono::microseconds elapsed{0};       // from start() to this outcome (0 when not started by this process)
};

// A started saga: its id, and its outcome as a future.
struct saga_handle {
  saga_id id;
  std::shared_future<saga_outcome> outcome;
};

// Thrown by start() when the bound on sagas in flight stays reached for the whole start timeout; retry later.
class overloaded : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Thrown by start(), cancel() and act() when the orchestrator shut down while their trigger still waited for its
// saga: it is not known to be durable (a start that was durable returns normally instead; one whose append failed
// and may have committed is found by repeating it with the same idempotency key).
class shut_down : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Thrown by run() and start() when the reply topic of a saga type no longer has the partition count the type's
// unfinished sagas were placed over (Kafka maps a key to a partition by the count, so their stored partitions no
// longer name the process that owns them, and a recovery would miss some of them). The message names the type and
// both counts.
class partition_count_changed : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct orchestrator_options {
  std::size_t threads = 2;             // worker threads (sagas run concurrently, each one serialized)
  std::size_t max_in_flight = 10'000;  // sagas started here and not finished yet; start() waits beyond
  duration start_timeout{30'000};      // how long start() waits for room (then throws overloaded)
  duration store_retry_backoff{200};   // wait before retrying an append after store_unavailable
  // Wait before deciding a reply or timer again after the store refused its append with an error it does not call
  // retryable (a full disk, a statement timeout, a read-only server): logged each time, never dropped.
  duration refused_append_backoff{5'000};
  std::size_t max_input_bytes = 1 << 20;  // start() refuses a larger saga input (std::invalid_argument naming both)
  // After recovery, a resent command's deadline is at least this far away (the downtime is not the participant's).
  duration recovery_grace{30'000};
  // How long shutdown() waits for appends in flight before it stops the workers. One that takes longer still ends:
  // its result is handled on the store's thread (a start waiting on it gets its saga id, or its error).
  duration shutdown_append_wait{5'000};
  // Recovery reads the logs of this many unfinished sagas per store.load_many call (one query on PostgreSQL).
  std::size_t recovery_load_batch = 1000;
  // On a transport that partitions, run() reads and folds the unfinished sagas' logs (up to the limit) while the
  // consumer group hands out partitions; recovery then takes the states still current instead of reading them.
  bool recovery_prefetch = true;
  std::size_t recovery_prefetch_limit = 100'000;
  // A saga awaited here (started here, or asked for with outcome()) whose reply partition another process owns, or
  // went to one: that process advances it, so its end is read from the store, this often, `elsewhere_poll_batch`
  // sagas per read (one store.load_many call on an io thread; more wait for the next reads). Its handle completes
  // then, and the in-flight slot it held is freed.
  duration elsewhere_poll{1'000};
  std::size_t elsewhere_poll_batch = 500;
  // This often (on `clock`), a process lists the unfinished sagas of the reply partitions it owns and recovers those
  // it does not hold, that nothing changed for at least as long, and whose timers all came due at least as long
  // ago (a process holding the saga would have fired them): it resends what they have pending (same command ids)
  // and arms their timers. They are sagas whose last change was made outside this process: an operator's sagactl
  // retry, skip or cancel of a saga not held here (its command sent, or left unsent, and no deadline armed), or a
  // saga started by a process that does not own its partition and ended before its timers fired. Without this,
  // such a saga whose reply never comes waits until its partition next moves. The listing runs on a thread of its
  // own. Zero: never (at most a year).
  duration orphan_sweep{30'000};
  std::function<std::string(const std::string& saga_type)> reply_to;  // reply address; default: the saga type
  std::shared_ptr<runtime::clock> clock;                              // default: system_clock
  std::function<std::uint64_t()> entropy;       // ids and jitter; default: std::random_device-seeded generator
  std::function<void(const std::string&)> log;  // debug lines (ignored replies, retries); default: none
};

// The orchestrator. Register definitions, call run(), then start sagas. Thread-safe.
// Work for one saga is serialized (an actor per saga on a strand); different sagas run concurrently.
class orchestrator {
 public:
  orchestrator(storage::event_store& store, transport::transport& bus, orchestrator_options options = {});
  // Shuts down (see shutdown()).
  ~orchestrator();
  orchestrator(const orchestrator&) = delete;
  orchestrator& operator=(const orchestrator&) = delete;

  // Registers a definition; sagas started earlier with another version of the type need that version too.
  // Call before run(). Throws std::invalid_argument for a second registration of the same type and version.
  void add(definition def);
  // Starts the workers, subscribes to replies and recovers the unfinished sagas this process owns (all of them
  // when the transport does not partition). Throws std::logic_error when called twice.
  // On a transport that partitions, it first learns each registered type's reply partition count (waiting up to
  // 30 s, then throwing transport::transport_error) and checks it against the one recorded in the store
  // (event_store::reply_partition_count, which records it while no saga of the type is unfinished): where they
  // differ it throws partition_count_changed, having started nothing; store errors propagate the same way (run() may
  // be called again). The check is repeated whenever the transport's count changes (it re-reads it at each
  // assignment; a start() notices it too): a type whose count changed under unfinished sagas while this process ran
  // is refused from then on (start(), cancel() and act() throw partition_count_changed, its replies are dropped, its
  // partitions are not recovered, its cached sagas are dropped; metrics::partition_count_mismatches counts it) until
  // the process is restarted against a topic that matches.
  void run();
  // Starts a saga and returns once its start event is durable. With an idempotency key that was used before for
  // this type, returns the existing saga instead (the start's own append finds it: the store's unique key decides,
  // between processes too, with no read before; so a repeated key also needs a free slot). Throws
  // std::invalid_argument when refused (unknown type, input not JSON), overloaded when too many sagas are in flight,
  // storage::store_error when the store fails.
  [[nodiscard]] saga_handle start(const std::string& type, const std::string& input_json,
                                  const std::string& idempotency_key = {});
  // Asks a running saga to stop and compensate; returns the decision (rejected says why, e.g. after the pivot).
  // Throws partition_count_changed, having appended nothing, when it would append for a saga whose type is refused
  // here (see run()).
  [[nodiscard]] decision cancel(const saga_id& id, const std::string& reason, const std::string& by);
  // Retries or skips the stuck action of a stuck saga (recorded with who and why); returns the decision. Throws
  // partition_count_changed like cancel().
  [[nodiscard]] decision act(const saga_id& id, const triggers::operator_action& action);
  // The outcome of a saga as a future (ready at once when it already finished). Throws std::invalid_argument
  // when the saga does not exist.
  [[nodiscard]] std::shared_future<saga_outcome> outcome(const saga_id& id);
  // Graceful shutdown: stops taking triggers, finishes appends in flight (waiting up to shutdown_append_wait),
  // stops the transport (which commits consumer offsets), stops the workers. Then it lets go of the work still
  // queued: a start/cancel/act waiting on it throws shut_down, a reply stays unhandled (the next owner of its
  // partition gets it again), a store retry waiting for its backoff is dropped (recovery redoes it from the log).
  // An append still in flight afterwards is handled when the store answers, on the store's thread: its caller gets
  // the result (or shut_down when the store asks for a retry). Idempotent; never throws. Called on one of the
  // orchestrator's own threads (from its log callback), it stops taking triggers and returns; a thread of its own
  // finishes the rest once that callback has returned. A later call from any other thread (the destructor's, say)
  // waits until that is done: destroy the orchestrator elsewhere, before its store and transport. A start, cancel or
  // act called once shutdown has begun throws std::logic_error (or shut_down, when it got in before the drain).
  void shutdown() noexcept;
  // Counters and histograms.
  [[nodiscard]] const runtime::metrics& stats() const noexcept;
  // Sagas held in memory right now (in flight or with queued triggers).
  [[nodiscard]] std::size_t active() const;

 private:
  struct impl;
  // Held weakly by queued work, timers and transport callbacks; strongly only by store callbacks in flight.
  std::shared_ptr<impl> impl_;
};

}  // namespace saga::runtime
