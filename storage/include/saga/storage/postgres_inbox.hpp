// saga/storage/postgres_inbox.hpp — the participant inbox in PostgreSQL: a command's effects and its reply commit
// in one transaction of the participant's own database.
#pragma once

#include "saga/storage/inbox.hpp"

#include <cstddef>
#include <memory>
#include <string>

namespace saga::storage {

struct postgres_inbox_options {
  std::size_t connections = 4;  // pooled connections; this many commands can be processed at once
};

// Needs the saga_inbox table (run migrate(url) first). Thread-safe. Concurrent deliveries of one command id are
// serialized by a transaction-level advisory lock on the id, so the handler never runs twice for it.
class postgres_inbox final : public inbox {
 public:
  // Keeps `url` for lazily opened connections; never connects here, never fails.
  explicit postgres_inbox(std::string url, postgres_inbox_options options = {});
  // Closes the pooled connections. Never throws.
  ~postgres_inbox() override;
  postgres_inbox(const postgres_inbox&) = delete;
  postgres_inbox& operator=(const postgres_inbox&) = delete;

  // See inbox::process. The reply's payload is stored (and returned, also on the first delivery) as canonical JSON.
  // Throws store_unavailable when the connection is lost (retry helps: nothing or everything was committed),
  // store_error for a failed statement, json_error for a payload that is not JSON, and whatever `work` throws.
  stored_reply process(const std::string& command_id, const std::function<stored_reply(transaction&)>& work,
                       bool* first_delivery = nullptr) override;
  // The stored reply of a command id, if any; throws store_unavailable / store_error like process.
  [[nodiscard]] std::optional<stored_reply> find(const std::string& command_id) override;
  // See inbox::handle_batch: one transaction for the whole batch (advisory locks on every command id in one order,
  // one read of the stored replies, the handlers in order, one multi-row insert of the new replies, one commit).
  // When a handler throws or answers retryable, or the transaction fails, everything is rolled back and the batch
  // is handled one command at a time instead, so one command's trouble never costs another its effect.
  [[nodiscard]] std::vector<command_result> handle_batch(const std::vector<command_work>& commands) override;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace saga::storage
