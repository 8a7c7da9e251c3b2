// saga/transport/transport.hpp — how commands reach participants and replies come back (Kafka or memory).
#pragma once

#include "saga/transport/message.hpp"

#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <stdexcept>
#include <vector>

namespace saga::transport {

// Base of transport errors; `retryable()` says whether sending again later can help.
class transport_error : public std::runtime_error {
 public:
  explicit transport_error(const std::string& what, bool retryable = true)
      : std::runtime_error(what), retryable_(retryable) {}
  [[nodiscard]] bool retryable() const noexcept { return retryable_; }

 private:
  bool retryable_;
};

// Called once a message is accepted by the transport for delivery (Kafka: acknowledged by all replicas), or
// with the error that stopped it.
using delivery_callback = std::function<void(std::exception_ptr error)>;
// Call once the message has been handled; only then may the transport consider it consumed (commit offsets).
using handled_callback = std::function<void()>;

using command_handler = std::function<void(command_message, handled_callback)>;
using reply_handler = std::function<void(reply_message, handled_callback)>;

// One partition of a topic this process consumes; `name` is the saga type (reply topics) or service (command topics).
struct topic_partition {
  std::string topic;
  std::int32_t partition = 0;
  std::string name;
  friend bool operator==(const topic_partition&, const topic_partition&) = default;
};
// Told which partitions were just assigned to (or revoked from) this process.
using partitions_callback = std::function<void(const std::vector<topic_partition>&)>;

// A transport. Implementations are thread-safe; handlers may run on the transport's own threads.
class transport {
 public:
  virtual ~transport() = default;
  // Orchestrator side: sends a command to its service.
  virtual void send_command(const command_message& command, delivery_callback done) = 0;
  // Orchestrator side: receives replies for sagas of `saga_type`.
  virtual void on_reply(const std::string& saga_type, reply_handler handler) = 0;
  // Participant side: receives the commands sent to `service`.
  virtual void on_command(const std::string& service, command_handler handler) = 0;
  // Participant side: sends a reply back to `reply_to`.
  virtual void send_reply(const std::string& reply_to, const reply_message& reply, delivery_callback done) = 0;

  // Additive hooks (defaults keep simple transports simple).
  // Parks `command` in the dead-letter place of its service with `reason`; `done` reports whether it was stored.
  // Default: fails with a non-retryable transport_error (this transport has no dead-letter place).
  virtual void dead_letter(const command_message& command, const std::string& reason, delivery_callback done) {
    (void)command;
    (void)reason;
    if (done) done(std::make_exception_ptr(transport_error("this transport has no dead-letter place", false)));
  }
  // Called (on the transport's thread) with the partitions this process now owns, so an orchestrator can recover
  // the sagas of those partitions; set before registering handlers. Default: never called (owns everything).
  virtual void on_partitions_assigned(partitions_callback callback) { (void)callback; }
  // Called after the partitions' in-flight messages were handled and committed, before another process gets them.
  virtual void on_partitions_revoked(partitions_callback callback) { (void)callback; }
  // The partition of the reply topic of `saga_type` that carries `saga`'s replies; nullopt when the transport does
  // not partition (everything is owned by this process) or the partition count is not known yet (retry later).
  [[nodiscard]] virtual std::optional<std::int32_t> reply_partition(const std::string& saga_type, const saga_id& saga) {
    (void)saga_type;
    (void)saga;
    return std::nullopt;
  }
  // Whether replies are spread over partitions that different processes own (on_partitions_assigned tells which
  // are this process's); false: this process owns every saga.
  [[nodiscard]] virtual bool partitions_replies() { return false; }
  // How many partitions the reply topic of `saga_type` has, which reply_partition maps sagas over; nullopt when the
  // transport does not partition or the count is not known yet (retry later). A transport that partitions re-reads
  // the counts of all its subscribed topics whenever its assignment changes, before it tells of it, so a count
  // changed on the cluster is seen there.
  [[nodiscard]] virtual std::optional<std::int32_t> reply_partitions(const std::string& saga_type) {
    (void)saga_type;
    return std::nullopt;
  }
  // Stops receiving: finishes and commits in-flight messages, flushes sends. Idempotent; never throws.
  virtual void stop() noexcept {}
  // Whether stop() has begun: a handler waiting out an outage gives its message up (unhandled, so redelivered).
  [[nodiscard]] virtual bool stopping() const noexcept { return false; }
};

}  // namespace saga::transport
