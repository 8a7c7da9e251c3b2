// Internal helpers of saga::postgres: libpqxx stays in this folder's .cpp files and never reaches a public header.
#pragma once

#include "saga/storage/event_store.hpp"
#include "saga/storage/inbox.hpp"

#include <pqxx/pqxx>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace saga::storage::detail {

// Opens a connection to `url` with_connection_defaults; throws store_unavailable when the server cannot be reached.
[[nodiscard]] std::unique_ptr<pqxx::connection> connect(const std::string& url, std::string_view doing);

// `url` (a postgresql:// URI or key=value pairs) with bounds on waiting for a server that does not answer, for each
// one the text does not set: connect_timeout=10 (unless PGCONNECT_TIMEOUT is set), keepalives_idle=30,
// keepalives_interval=10, keepalives_count=3 and tcp_user_timeout=60000 (ms). Without them libpq waits as long as
// the operating system lets it for a host that vanished without a reset (a failover, a network partition): about
// two minutes for a connection, about fifteen for a statement on an open one.
[[nodiscard]] std::string with_connection_defaults(const std::string& url);

// connect() for a connection whose statements go through exec_cached (the inbox's and a postgres_session's): with
// plan_cache_mode = force_custom_plan, so a statement is parsed once but planned on each execution for the tables as
// they are then. PostgreSQL's default may settle on a generic plan made while a table was small (a sequential scan)
// and keep it while the table grows: the inbox's `command_id = ANY($1)` lookup then read the whole saga_inbox for
// every batch. Throws store_unavailable when the server cannot be reached.
[[nodiscard]] std::unique_ptr<pqxx::connection> connect_planning_each_time(const std::string& url,
                                                                           std::string_view doing);

// Rethrows the exception being handled as a storage error: pqxx::in_doubt_error and lost connections become
// store_unavailable, serialization failures and deadlocks retryable store_error, other SQL errors store_error with
// the SQL state and statement. Other exceptions (store_error, the caller's own) propagate unchanged.
// Call only inside a catch block.
[[noreturn]] void rethrow_translated(std::string_view doing);

// True when the exception being handled leaves the connection unusable or unknown (drop it, reconnect later).
// Call only inside a catch block.
[[nodiscard]] bool connection_lost(const pqxx::connection* conn) noexcept;

// Builds the text of a PostgreSQL array literal ('{"a","b",NULL}'), for unnest()-based multi-row statements.
class pg_array {
 public:
  pg_array() { text_.push_back('{'); }
  void add(std::string_view value);
  // Adds `token` unquoted when it needs no quotes (uuids, hex hashes, plain words: less for the server to parse),
  // else quoted like add().
  void add_plain(std::string_view token);
  void add(std::int64_t value);
  void add_null();
  [[nodiscard]] std::string str() const { return text_ + "}"; }
  [[nodiscard]] bool empty() const noexcept { return text_.size() == 1; }

 private:
  void separate() {
    if (text_.size() > 1) text_.push_back(',');
  }
  std::string text_;
};

// Builds the text of a JSON array from JSON texts ('[{"a":1},2]'), for a jsonb parameter whose elements a statement
// takes with jsonb_array_elements(): one parse for the whole batch, and no escaping, unlike a jsonb[] literal.
class json_array {
 public:
  json_array() { text_.push_back('['); }
  void add(std::string_view json) {
    if (text_.size() > 1) text_.push_back(',');
    text_.append(json);
  }
  [[nodiscard]] std::string str() const { return text_ + "]"; }

 private:
  std::string text_;
};

// `status` as stored in saga_instances.status; throws store_error for not_started.
[[nodiscard]] const char* status_text(saga_status status);
// Parses saga_instances.status; throws store_error naming the text when unknown.
[[nodiscard]] saga_status parse_status(std::string_view text);
// Parses a uuid column's text; throws store_error when it is not one.
[[nodiscard]] saga_id parse_saga_id(std::string_view text);

// The name under which every connection of this process prepares `sql` (on its first use there), or "" when
// `sql` is run unprepared: not a SELECT/INSERT/UPDATE/DELETE/WITH/VALUES statement, one whose prepared form failed
// with a plan that no longer fits the schema (see exec_cached), or once 512 distinct texts have names (a caller that
// builds statement texts with literals in them would otherwise prepare without bound).
[[nodiscard]] std::string statement_name(std::string_view sql);

// Runs `sql` on `tx` as a statement prepared once per connection (parsed once, not on every call; planned on every
// call on a connection from connect_planning_each_time), or unprepared when statement_name gives no name. A prepared
// statement whose result columns changed under it (a table altered meanwhile: SQL state 0A000) is never prepared again
// in this process, and the error is translated as retryable, so a retry runs it unprepared.
template <typename... Args>
pqxx::result exec_cached(pqxx::transaction_base& tx, const std::string& sql, Args&&... args);

// The handler's window into a pqxx transaction: parameterized statements (prepared, see exec_cached), rows as
// text, errors translated.
class work_transaction final : public transaction {
 public:
  explicit work_transaction(pqxx::transaction_base& tx) : tx_(tx) {}
  std::vector<row> exec(std::string_view sql, const std::vector<std::optional<std::string>>& params) override;

 private:
  pqxx::transaction_base& tx_;
};

namespace internal {
// Marks `sql` as never to be prepared again (its prepared form failed with a plan that no longer fits).
void stale_statement(const std::string& sql) noexcept;
[[nodiscard]] bool is_stale_plan(const pqxx::sql_error& e) noexcept;
}  // namespace internal

template <typename... Args>
pqxx::result exec_cached(pqxx::transaction_base& tx, const std::string& sql, Args&&... args) {
  const std::string name = statement_name(sql);
  if (name.empty()) return tx.exec_params(sql, std::forward<Args>(args)...);
  try {
    tx.conn().prepare(name, sql);
    return tx.exec_prepared(name, std::forward<Args>(args)...);
  } catch (const pqxx::sql_error& e) {
    if (!internal::is_stale_plan(e)) throw;
    internal::stale_statement(sql);
    const std::string what = e.what();
    throw store_error(
        "a prepared statement's plan no longer fits its tables (altered meanwhile); it runs unprepared "
        "from now on, retry: " +
            what.substr(0, what.find('\n')) + " [in: " + sql.substr(0, 160) + "]",
        true);
  }
}

}  // namespace saga::storage::detail
