// saga/transport/kafka_transport.hpp — the Kafka transport (librdkafka underneath; no Kafka types leak out).
#pragma once

#include "saga/transport/envelope.hpp"
#include "saga/transport/log.hpp"
#include "saga/transport/transport.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

namespace saga::transport {

// How a kafka_transport connects and behaves. Defaults suit the embedded broker and a LAN cluster alike.
struct kafka_config {
  // "host:port,host:port"; from_env() takes SAGA_KAFKA_BROKERS.
  std::string bootstrap_servers;
  // Topic names are "<prefix>.<service>.commands" and "<prefix>.<saga type>.replies" unless overridden below.
  std::string topic_prefix = "saga";
  // client.id of both clients (shows in broker logs and metrics).
  std::string client_id = "saga";
  // Consumer group of this process's role (e.g. "orders-orchestrator", "inventory"); needed to receive anything.
  std::string group_id;
  // ce_source of what this process sends.
  std::string source = "/saga";
  // linger.ms: how long the producer waits to fill a batch. 0 sends a message as soon as the producer has no request
  // in flight to that broker; with `max_in_flight_requests = 1` what queues up meanwhile goes out as one batch when
  // the answer comes (batching by load, Nagle-style). Any wait (even 0.3 ms) costs a saga ~2 ms per send on the
  // embedded broker: the order saga end to end took p50 35 ms at one in flight with 1, 17 ms with 0 (quiet machine).
  int linger_ms = 0;
  // max.in.flight.requests.per.connection of the (idempotent) producer, 1-5. 1 makes the batches that `linger_ms = 0`
  // forms under load large: at 200 in flight the order saga ran about a fifth more sagas/s than with linger 1 and 5
  // in flight, and linger 0 with 5 in flight (many small requests) ran as slowly as linger 1. Raise it on a cluster
  // with long round trips. Above 5 the producer refuses to start (it is idempotent).
  int max_in_flight_requests = 1;
  // fetch.wait.max.ms: how long a broker may hold a fetch when no data is there. The embedded (mock) broker always
  // holds it this long, so it bounds the one-way latency there (1 ms → ~3 ms round trip; librdkafka's 500 ms default
  // → ~1 s). A real cluster answers as soon as data arrives: use 100–500 ms there to save idle requests.
  int fetch_wait_max_ms = 1;
  // queue.buffering.max.messages: the producer's bound. When full, sends block up to `enqueue_timeout`, then fail
  // with a retryable transport_error (back-pressure reaches the caller; nothing is dropped silently).
  int max_queued_messages = 100000;
  // The largest record (key + value + headers) this transport sends; a larger one fails at once, not retryable,
  // naming both sizes. librdkafka's message.max.bytes and the broker's max.message.bytes must allow it too.
  std::size_t max_message_bytes = 1'000'000;
  std::chrono::milliseconds enqueue_timeout{5000};
  // Received messages not yet handled, per process; beyond it the poll thread waits for handled() calls.
  std::size_t max_unhandled = 10000;
  // How often handled offsets are committed (asynchronously; synchronously on revoke and stop).
  std::chrono::milliseconds commit_interval{50};
  // How long a revoke waits for in-flight messages to be handled before giving their partitions up, and again for
  // its offset commit. stop() as a whole takes at most this long (plus 100 ms for the producer's flush): its revoke,
  // the consumer's close and the flush share one deadline.
  std::chrono::milliseconds revoke_timeout{30000};
  // Which partitions this process consumes. nullopt (the default): the consumer group `group_id` shares them out and
  // moves a dead member's partitions to the others after its session timeout. Set: static ownership without joining
  // the group; this process consumes partition p of every topic it registers a handler for where p % members == member
  // (the partition count read when the topic is registered), from the offsets committed under `group_id`. A restarted
  // process owns its partitions again at once (no session timeout to wait out, no rebalance), but nothing moves them
  // while it is down: a supervisor must restart it. Give each process its own member: two with the same one both
  // consume the same partitions (the saga runtime stays correct, its appends checked by optimistic concurrency and its
  // commands applied once by the inbox, but the work is done twice). Do not mix static members and group members under
  // one group_id (the broker refuses the static members' commits while the group has members).
  struct static_partitions {
    int member = 0;
    int members = 1;
  };
  std::optional<static_partitions> static_assignment;
  // Extra librdkafka properties (SASL, TLS, …) for both clients; keys "producer.X" / "consumer.X" go to one only.
  // Applied last, so they override everything above.
  std::map<std::string, std::string> properties;
  // Topic naming overrides (empty = the defaults above).
  std::function<std::string(const std::string& service)> command_topic;
  std::function<std::string(const std::string& saga_type)> reply_topic;
  // Dead-letter topic = original topic + this suffix.
  std::string dead_letter_suffix = ".dlq";
  // Where log lines go (default: stderr, info and above).
  logger log;

  // A config for the cluster named by SAGA_KAFKA_BROKERS; throws transport_error(non-retryable) when it is unset.
  [[nodiscard]] static kafka_config from_env(std::string group_id = {});
  // librdkafka properties from a file of key=value lines ('#' or '!' starts a comment line; blanks around keys and
  // values are dropped), as Kafka's own tools read them. from_env() reads the file SAGA_KAFKA_CONFIG names, if set,
  // into `properties`: SASL and TLS settings (and their secrets) stay out of the environment and the command line.
  // Throws transport_error naming the file (and the line, never its text) when it cannot be read or a line is not
  // key=value or sets a key twice.
  [[nodiscard]] static std::map<std::string, std::string> read_properties(const std::string& path);
};

// A raw record as received (for dead-letter readers, tools and tests).
struct raw_record {
  std::string topic;
  std::int32_t partition = 0;
  std::int64_t offset = 0;
  std::string key;
  header_list headers;
  std::string value;
};
using raw_handler = std::function<void(raw_record, handled_callback)>;

// Counters of one transport (monotonic; read any time).
struct kafka_stats {
  std::uint64_t sent = 0;               // records accepted into the producer queue
  std::uint64_t delivered = 0;          // records acknowledged by the cluster
  std::uint64_t delivery_failures = 0;  // records the cluster did not take (reported to their callbacks)
  std::uint64_t queue_full = 0;         // sends that found the queue full (waited or failed)
  std::uint64_t received = 0;           // records handed to handlers
  std::uint64_t dead_lettered = 0;      // records parked in a dead-letter topic by this transport (decode errors)
  std::uint64_t commits = 0;            // offset commits issued
};

// Kafka implementation of `transport`. Every record is keyed by saga id (one saga stays in one partition, in
// order); the producer is idempotent with acks=all. One consumer (group `group_id`) receives every topic this
// process registered a handler for, on one poll thread; handlers run on that thread and may call `handled` from
// any thread; offsets are committed only up to the first message not yet handled. Records that cannot be decoded
// go to "<topic><dead_letter_suffix>" with the reason in header saga_dlq_reason, and the consumer moves on.
class kafka_transport final : public transport {
 public:
  // Creates the producer (the consumer is created on the first registration). Throws transport_error
  // (non-retryable) for an invalid config.
  explicit kafka_transport(kafka_config config);
  // Stops (see stop()).
  ~kafka_transport() override;
  kafka_transport(const kafka_transport&) = delete;
  kafka_transport& operator=(const kafka_transport&) = delete;

  // Sends to the command topic of command.service. `done` runs on the producer thread once the cluster
  // acknowledged it or with the error (transport_error: retryable() says whether resending can help).
  // Blocks up to enqueue_timeout while the producer queue is full, then fails `done` with a retryable error.
  void send_command(const command_message& command, delivery_callback done) override;
  // Subscribes to the reply topic of `saga_type`. Throws transport_error when group_id is empty.
  void on_reply(const std::string& saga_type, reply_handler handler) override;
  // Subscribes to the command topic of `service`. Throws transport_error when group_id is empty.
  void on_command(const std::string& service, command_handler handler) override;
  // Sends `reply` to topic `reply_to` (as given by the command); `done` as for send_command.
  void send_reply(const std::string& reply_to, const reply_message& reply, delivery_callback done) override;
  // Sends `command` with header saga_dlq_reason to its command topic + dead_letter_suffix; `done` as above.
  void dead_letter(const command_message& command, const std::string& reason, delivery_callback done) override;
  // Sets the assignment callbacks (call before registering handlers). With static_assignment the assigned callback
  // runs on the registering thread, before on_reply/on_command/on_raw returns, for the topic's partitions.
  void on_partitions_assigned(partitions_callback callback) override;
  void on_partitions_revoked(partitions_callback callback) override;
  // The reply-topic partition of `saga` (murmur2 of the key, as Java clients compute it); nullopt until the topic's
  // partition count is known (after the first metadata answer; retry later).
  [[nodiscard]] std::optional<std::int32_t> reply_partition(const std::string& saga_type, const saga_id& saga) override;
  // Always: the consumer group (or static_assignment) shares the reply partitions between processes.
  [[nodiscard]] bool partitions_replies() override { return true; }
  // The reply topic's partition count: from the cluster's metadata, read at the first ask and, for every subscribed
  // topic, again at each assignment of the group (static_assignment: once, when the topic is registered).
  [[nodiscard]] std::optional<std::int32_t> reply_partitions(const std::string& saga_type) override;
  // Leaves the group (revoke: in-flight handled + committed; with static_assignment the same revoke without a group)
  // and flushes the producer, all within revoke_timeout (plus 100 ms for the flush, and, when sends are under way
  // then, until they are queued: at most enqueue_timeout): with the cluster gone it returns then, and the
  // partitions' next owner receives what was not committed again. Sends still go out while the revoke
  // drains (a handler answering then gets its reply out and its message committed); once the consumer is closed
  // they fail at once, not retryable. Called again, or from another thread while it runs, it waits for the first
  // call to be done. Called on one of the transport's own threads (in a handler, or a rebalance or delivery
  // callback, and so also the destructor there), it cannot wait for that thread: it begins the stop (stopping() is
  // true, no handler is called after the current one) and returns; a thread of the transport's own finishes it.
  void stop() noexcept override;
  // Whether stop() has begun.
  [[nodiscard]] bool stopping() const noexcept override;

  // Sends a raw record (tools and tests: arbitrary bytes); `done` as for send_command.
  void send_raw(const std::string& topic, const std::string& key, const header_list& headers, const std::string& value,
                delivery_callback done);
  // Subscribes to `topic` receiving raw records (e.g. a dead-letter topic). Throws as on_command.
  void on_raw(const std::string& topic, raw_handler handler);
  // Waits until every record sent so far was acknowledged or failed; false on timeout (retry or give up).
  [[nodiscard]] bool flush(std::chrono::milliseconds timeout);
  // The topic names this transport uses.
  [[nodiscard]] std::string command_topic(const std::string& service) const;
  [[nodiscard]] std::string reply_topic(const std::string& saga_type) const;
  [[nodiscard]] std::string dead_letter_topic(const std::string& topic) const;
  // Counters so far.
  [[nodiscard]] kafka_stats stats() const;
  // The config in use.
  [[nodiscard]] const kafka_config& config() const noexcept { return config_; }

  struct impl;

 private:
  kafka_config config_;
  std::shared_ptr<impl> impl_;
};

}  // namespace saga::transport
