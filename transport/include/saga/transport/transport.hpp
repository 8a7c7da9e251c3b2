// saga/transport/transport.hpp — how commands reach participants and replies come back (Kafka or memory).
#pragma once

#include "saga/transport/message.hpp"

#include <exception>
#include <functional>
#include <stdexcept>

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
};

}  // namespace saga::transport
