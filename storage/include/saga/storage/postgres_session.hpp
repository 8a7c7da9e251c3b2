// saga/storage/postgres_session.hpp — one PostgreSQL connection running parameterized SQL in transactions
// (tools, tests, benchmarks and participants' own tables; the event store manages its own connections).
#pragma once

#include "saga/storage/inbox.hpp"

#include <functional>
#include <memory>
#include <string>

namespace saga::storage {

class postgres_session {
 public:
  // Connects to `url` (a libpq URI or key=value string); throws store_unavailable when the server cannot be reached.
  explicit postgres_session(const std::string& url);
  // Closes the connection (a transaction still open on it rolls back). Never throws.
  ~postgres_session();
  postgres_session(const postgres_session&) = delete;
  postgres_session& operator=(const postgres_session&) = delete;
  // Takes over the connection; the moved-from session may only be destroyed or assigned to.
  postgres_session(postgres_session&&) noexcept;
  // Closes this session's connection and takes over the other's. Never throws.
  postgres_session& operator=(postgres_session&&) noexcept;

  // Runs `body(tx)` in one transaction and commits it; on any exception the transaction rolls back and the exception
  // propagates. Throws store_unavailable when the connection is lost (the session reconnects on the next call; retry
  // helps unless the commit itself was cut off), store_error with the SQL state for a failed statement.
  void run(const std::function<void(transaction& tx)>& body);
  // Runs one statement in its own transaction and returns its rows as text (see transaction::exec); throws like run.
  std::vector<transaction::row> exec(std::string_view sql, const std::vector<std::optional<std::string>>& params = {});

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace saga::storage
