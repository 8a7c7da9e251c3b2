// saga/transport/participant.hpp — the participant helper: dedupe by command id through an inbox, run the handler
// in the inbox's transaction, send the (stored) reply, and only then mark the command handled.
#pragma once

#include "saga/storage/inbox.hpp"
#include "saga/transport/log.hpp"
#include "saga/transport/transport.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace saga::transport {

// Handler answers. Success carries the reply payload (JSON).
[[nodiscard]] storage::stored_reply success(std::string payload = "{}");
// A business failure: not retried; the orchestrator compensates. The reply and the handler's writes are stored.
[[nodiscard]] storage::stored_reply failure(std::string reason, std::string payload = "{}");
// A transient failure: nothing is stored (writes roll back); the orchestrator retries the step later.
[[nodiscard]] storage::stored_reply retryable(std::string reason);

// How a participant behaves.
struct participant_options {
  // The service whose commands it receives (topic "<prefix>.<service>.commands" on Kafka).
  std::string service;
  // A command whose handler throws more than this many times in a row goes to the dead-letter place. A transaction
  // the database rolled back (a serialization failure or deadlock: storage::store_error::retryable()) is run again
  // without counting, up to participant::max_conflict_retries times per delivery.
  std::uint32_t max_handler_failures = 3;
  // Wait before re-running a handler that threw (doubles each time); blocks one worker thread meanwhile.
  std::chrono::milliseconds retry_backoff{20};
  // How often a reply whose delivery failed (retryable) is sent again before the command is left unhandled (it is
  // then redelivered after a restart or rebalance and answered from the inbox). A reply the transport refuses for
  // good (not retryable) is not sent again: its command is dead-lettered with the reason, so that the partition
  // moves on; the reply stays in the inbox.
  std::uint32_t max_reply_attempts = 10;
  // A handler whose reply payload and reason together are larger is rolled back (nothing stored) and its command
  // dead-lettered with the sizes in the reason: a reply must fit a Kafka record (kafka_config::max_message_bytes)
  // with its headers (the reason is one of them).
  std::size_t max_reply_bytes = 900'000;
  // Commands handled together: start() queues the delivered commands, and each of `workers` threads takes up to
  // this many and handles them through inbox::handle_batch (with postgres_inbox: one transaction and one commit for
  // all of them). 1 handles each command in its own transaction. A command whose handler throws or answers
  // retryable is handled on its own (with the retries below) and costs the others nothing.
  std::size_t batch_size = 64;
  // Threads handling queued commands (each batch holds one inbox connection while it runs). 0: no queue, no
  // batching; each command is handled on the transport's delivery thread before the next is delivered (what a test
  // driving memory_transport::pump() wants: pump() returns with every reply sent). More than one lets batches run
  // side by side, but handlers that lock shared rows (a hot SKU, say) in different orders then deadlock across
  // batches: PostgreSQL breaks that only after deadlock_timeout (1 s) and the batch is redone one at a time.
  std::size_t workers = 1;
  // Where log lines go (default: stderr, info and above).
  logger log;
  // Test hook: runs after the inbox committed and before the reply is sent (e.g. to crash right there).
  std::function<void(const command_message&, const storage::stored_reply&)> before_reply;
};

// Counters (monotonic).
struct participant_stats {
  std::uint64_t executed = 0;            // handler ran and its result was stored (first deliveries)
  std::uint64_t duplicates = 0;          // repeats answered from the inbox without running anything
  std::uint64_t retryable = 0;           // handler answered retryable (nothing stored)
  std::uint64_t handler_exceptions = 0;  // handler runs that threw
  std::uint64_t dead_lettered = 0;       // commands parked (unknown type, handler kept throwing)
  std::uint64_t replies_sent = 0;        // replies the transport confirmed
  std::uint64_t reply_failures = 0;      // reply sends that failed (each retried up to max_reply_attempts)
};

// A participant service's command loop. Usage: construct, handle(type, fn) for each command type, start().
// The transport and inbox must outlive it, and the transport must be stopped before it is destroyed. Destruction
// stops the worker threads; commands still queued then are left unhandled (redelivered to the next owner).
class participant {
 public:
  // A handler: reads the command, writes through `tx` (committed with the reply), returns the answer.
  // Throwing counts as a transient failure (rolled back, retried, then dead-lettered).
  using handler = std::function<storage::stored_reply(const command_message& command, storage::transaction& tx)>;
  // Rolled-back transactions (see participant_options::max_handler_failures) run again this many times per delivery,
  // waiting retry_backoff, doubled each time up to 1 s, in between; more count as failures.
  static constexpr std::uint32_t max_conflict_retries = 20;

  // Throws std::invalid_argument when options.service is empty.
  participant(transport& t, storage::inbox& inbox, participant_options options);
  participant(const participant&) = delete;
  participant& operator=(const participant&) = delete;
  ~participant();

  // Registers the handler of `command_type`; throws std::invalid_argument for an empty or duplicate type, or
  // std::logic_error after start().
  participant& handle(std::string command_type, handler h);
  // Subscribes to the service's commands. Throws std::logic_error when called twice or with no handler, and
  // whatever the transport throws when it cannot subscribe (transport_error: see retryable()).
  void start();
  // The whole per-command protocol (what start() wires to the transport); `handled` is called once the reply
  // (or dead letter) was accepted by the transport. Never throws.
  void process(command_message command, handled_callback handled) noexcept;
  // Queues a command for the worker threads (what start() wires to the transport). Never throws.
  void enqueue(command_message command, handled_callback handled) noexcept;
  // Counters so far.
  [[nodiscard]] participant_stats stats() const;

 private:
  struct queued {
    command_message command;
    handled_callback handled;
  };
  void work_loop();
  void handle_batch(std::vector<queued>& batch) noexcept;
  // The handler of `command`, or nullptr with `why` (its service is not this one: set to this one, so that its dead
  // letter goes where this service's go; or no handler has its type).
  [[nodiscard]] const handler* handler_for(command_message& command, std::string& why) const;
  storage::stored_reply run_handler(const handler& h, const command_message& command, storage::transaction& tx) const;
  void finish(command_message command, storage::stored_reply reply, bool first, handled_callback handled);
  void send_reply(command_message command, storage::stored_reply reply, handled_callback handled,
                  std::uint32_t attempt);
  void park(const command_message& command, const std::string& reason, handled_callback handled);
  void say(log_level level, const std::string& line) const noexcept;

  transport& transport_;
  storage::inbox& inbox_;
  participant_options options_;
  std::map<std::string, handler> handlers_;
  bool started_ = false;
  std::mutex queue_mutex_;
  std::condition_variable queue_cv_;
  std::deque<queued> queue_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
  std::atomic<std::uint64_t> executed_{0}, duplicates_{0}, retryable_{0}, handler_exceptions_{0}, dead_lettered_{0},
      replies_sent_{0}, reply_failures_{0};
};

}  // namespace saga::transport
