// saga/transport/memory_transport.hpp — an in-process transport for tests: queues you can inspect and pump.
#pragma once

#include "saga/transport/transport.hpp"

#include <deque>
#include <map>
#include <mutex>
#include <vector>

namespace saga::transport {

// Messages wait in queues until pump() delivers them to the registered handlers (on the calling thread).
// Commands for a service without a handler stay queued, so a test can take and answer them by hand.
class memory_transport final : public transport {
 public:
  void send_command(const command_message& command, delivery_callback done) override;
  void on_reply(const std::string& saga_type, reply_handler handler) override;
  void on_command(const std::string& service, command_handler handler) override;
  void send_reply(const std::string& reply_to, const reply_message& reply, delivery_callback done) override;
  // Records `command` with `reason` in dead_letters() (never fails).
  void dead_letter(const command_message& command, const std::string& reason, delivery_callback done) override;

  // Delivers queued messages to handlers until none is deliverable; returns how many were delivered.
  std::size_t pump();
  // Removes and returns the queued commands of services that have no handler (all services when empty).
  [[nodiscard]] std::vector<command_message> take_commands(const std::string& service = {});
  // Commands sent so far, in order (a log for assertions; never cleared by take/pump).
  [[nodiscard]] std::vector<command_message> sent_commands() const;
  // Makes the next send_command/send_reply fail with a transport_error (fault injection), retryable unless told
  // otherwise (a record the cluster refuses for good, such as one too large). The flag of the last call applies to
  // every injected failure still to come.
  void fail_next_send(std::size_t count = 1, bool retryable = true);
  // Commands parked by dead_letter(), with their reasons, in order.
  [[nodiscard]] std::vector<std::pair<command_message, std::string>> dead_letters() const;

  // Partition simulation (off by default: this process owns every saga). With `count` > 0, reply_partition()
  // places each saga on one of `count` partitions, and assign()/revoke() call the registered callbacks as a
  // consumer-group rebalance would (on the calling thread).
  void set_reply_partitions(std::int32_t count);
  void on_partitions_assigned(partitions_callback callback) override;
  void on_partitions_revoked(partitions_callback callback) override;
  [[nodiscard]] std::optional<std::int32_t> reply_partition(const std::string& saga_type, const saga_id& saga) override;
  [[nodiscard]] bool partitions_replies() override;  // once set_reply_partitions gave a count > 0
  [[nodiscard]] std::optional<std::int32_t> reply_partitions(const std::string& saga_type) override;
  void assign(const std::vector<topic_partition>& partitions);
  void revoke(const std::vector<topic_partition>& partitions);

 private:
  mutable std::mutex mutex_;
  std::deque<command_message> commands_;
  std::deque<std::pair<std::string, reply_message>> replies_;
  std::map<std::string, command_handler> command_handlers_;
  std::map<std::string, reply_handler> reply_handlers_;
  std::vector<command_message> log_;
  std::vector<std::pair<command_message, std::string>> dead_letters_;
  std::size_t failures_ = 0;
  bool failures_retryable_ = true;
  std::int32_t partitions_ = 0;
  partitions_callback assigned_, revoked_;
};

}  // namespace saga::transport
