#include "pg_detail.hpp"

#include <algorithm>

#include <array>
#include <cctype>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <unordered_map>

namespace saga::storage::detail {

namespace {
// The first line of a libpq message (the rest repeats the query or adds libpq noise).
std::string first_line(std::string_view text) {
  auto end = text.find('\n');
  return std::string(text.substr(0, end));
}
std::string short_query(std::string_view query) {
  constexpr std::size_t max = 160;
  std::string q(query.substr(0, max));
  for (auto& c : q)
    if (c == '\n' || c == '\t') c = ' ';
  if (query.size() > max) q += "...";
  return q;
}
// The connection is gone or unusable (the server is read-only: a failover left it on a standby, and a new connection
// may reach the primary): store_unavailable, and the connection is retired.
bool is_connection_state(const std::string& state) {
  return state.rfind("08", 0) == 0 || state == "57P01" || state == "57P02" || state == "57P03" || state == "25006";
}
// The server lacks a resource for now (a full disk, out of memory, too many connections, an I/O error): an outage to
// wait out like a lost connection, not an error of the statement.
bool is_resource_state(const std::string& state) { return state.rfind("53", 0) == 0 || state == "58030"; }
// The statement lost to another session or to a limit (a serialization failure, a deadlock, a lock_timeout, a
// statement_timeout or a cancel): the same transaction may succeed when run again.
bool is_retryable_state(const std::string& state) {
  return state == "40001" || state == "40P01" || state == "55P03" || state == "57014";
}
}  // namespace

namespace {
struct text_hash {
  using is_transparent = void;  // find() by string_view: no copy of the text per statement
  std::size_t operator()(std::string_view text) const noexcept { return std::hash<std::string_view>{}(text); }
};
struct statement_names {
  std::mutex mutex;
  // statement text -> name; "" = never prepare
  std::unordered_map<std::string, std::string, text_hash, std::equal_to<>> names;
};
statement_names& registry() {
  static statement_names r;
  return r;
}
constexpr std::size_t most_statement_names = 512;

// Statements PostgreSQL can prepare: its PREPARE takes SELECT, INSERT, UPDATE, DELETE, MERGE and VALUES (WITH
// starts one of them). DDL, SET, LOCK and the like run unprepared.
bool preparable(std::string_view sql) {
  std::size_t i = 0;
  while (i < sql.size() && (std::isspace(static_cast<unsigned char>(sql[i])) || sql[i] == '(')) ++i;
  std::size_t end = i;
  while (end < sql.size() && std::isalpha(static_cast<unsigned char>(sql[end]))) ++end;
  std::string word(sql.substr(i, end - i));
  for (auto& c : word) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return word == "select" || word == "insert" || word == "update" || word == "delete" || word == "with" ||
         word == "values";
}
}  // namespace

std::string statement_name(std::string_view sql) {
  auto& r = registry();
  std::lock_guard lock(r.mutex);
  if (auto it = r.names.find(sql); it != r.names.end()) return it->second;
  if (r.names.size() >= most_statement_names || !preparable(sql)) return {};
  std::string name = "saga_stmt_" + std::to_string(r.names.size());
  r.names.emplace(std::string(sql), name);
  return name;
}

namespace internal {
void stale_statement(const std::string& sql) noexcept {
  try {
    auto& r = registry();
    std::lock_guard lock(r.mutex);
    r.names.insert_or_assign(sql, std::string());  // "": the text keeps its slot and is never prepared again
  } catch (...) {
  }
}
bool is_stale_plan(const pqxx::sql_error& e) noexcept {
  return e.sqlstate() == "0A000" && std::string_view(e.what()).find("cached plan") != std::string_view::npos;
}
}  // namespace internal

std::string with_connection_defaults(const std::string& url) {
  static constexpr std::array<std::pair<std::string_view, std::string_view>, 5> defaults{
      {{"connect_timeout", "10"},
       {"keepalives_idle", "30"},
       {"keepalives_interval", "10"},
       {"keepalives_count", "3"},
       {"tcp_user_timeout", "60000"}}};
  const bool uri = url.rfind("postgresql://", 0) == 0 || url.rfind("postgres://", 0) == 0;
  // Whether the text sets `key` (a key followed by '=', spaces allowed in the key=value form).
  const auto sets = [&](std::string_view key) {
    for (auto at = url.find(key); at != std::string::npos; at = url.find(key, at + 1)) {
      const bool starts =
          at == 0 || url[at - 1] == '?' || url[at - 1] == '&' || std::isspace(static_cast<unsigned char>(url[at - 1]));
      auto next = at + key.size();
      while (!uri && next < url.size() && std::isspace(static_cast<unsigned char>(url[next]))) ++next;
      if (starts && next < url.size() && url[next] == '=') return true;
    }
    return false;
  };
  std::string out = url;
  for (const auto& [key, value] : defaults) {
    if (sets(key) || (key == "connect_timeout" && std::getenv("PGCONNECT_TIMEOUT"))) continue;
    if (uri)
      out += out.find('?') == std::string::npos ? '?' : '&';
    else if (!out.empty())
      out += ' ';
    out.append(key).append("=").append(value);
  }
  return out;
}

std::unique_ptr<pqxx::connection> connect(const std::string& url, std::string_view doing) {
  try {
    return std::make_unique<pqxx::connection>(with_connection_defaults(url));
  } catch (const std::exception& e) {
    throw store_unavailable(std::string(doing) + ": cannot connect to PostgreSQL: " + first_line(e.what()));
  }
}

std::unique_ptr<pqxx::connection> connect_planning_each_time(const std::string& url, std::string_view doing) {
  auto conn = connect(url, doing);
  try {
    conn->set_variable("plan_cache_mode", "force_custom_plan");
  } catch (...) {
    rethrow_translated(std::string(doing) + ": setting plan_cache_mode");
  }
  return conn;
}

void rethrow_translated(std::string_view doing) {
  const std::string where(doing);
  try {
    throw;
  } catch (const store_error&) {
    throw;
  } catch (const pqxx::in_doubt_error& e) {
    throw store_unavailable(where + ": connection lost during COMMIT, outcome unknown: " + first_line(e.what()));
  } catch (const pqxx::broken_connection& e) {
    throw store_unavailable(where + ": connection to PostgreSQL lost: " + first_line(e.what()));
  } catch (const pqxx::statement_completion_unknown& e) {
    throw store_unavailable(where + ": connection lost, statement outcome unknown: " + first_line(e.what()));
  } catch (const pqxx::transaction_rollback& e) {
    throw store_error(where + ": the server rolled the transaction back (serialization failure or deadlock), retry: " +
                          first_line(e.what()),
                      true);
  } catch (const pqxx::sql_error& e) {
    const std::string state = e.sqlstate();
    const std::string text = where + ": SQL state " + (state.empty() ? std::string("?") : state) + ": " +
                             first_line(e.what()) + " [in: " + short_query(e.query()) + "]";
    if (is_connection_state(state) || is_resource_state(state)) throw store_unavailable(text);
    throw store_error(text, is_retryable_state(state));
  } catch (const pqxx::failure& e) {
    throw store_error(where + ": " + first_line(e.what()));
  } catch (const pqxx::usage_error& e) {
    throw store_error(where + ": libpqxx usage error: " + first_line(e.what()));
  } catch (const pqxx::conversion_error& e) {
    throw store_error(where + ": unexpected column value: " + first_line(e.what()));
  }
}

bool connection_lost(const pqxx::connection* conn) noexcept {
  // Only a plain SQL error (or an exception of ours other than store_unavailable) leaves the connection known-good;
  // anything else from libpqxx (lost connection, in-doubt commit, a half-registered transaction after a failed BEGIN)
  // retires it.
  try {
    throw;
  } catch (const store_unavailable&) {
    return true;  // translated already (transaction::exec): a lost or read-only connection, or a lack of resources
  } catch (const pqxx::sql_error& e) {
    if (is_connection_state(e.sqlstate())) return true;
  } catch (const pqxx::statement_completion_unknown&) {
    return true;
  } catch (const pqxx::transaction_rollback&) {
    // rolled back by the server; the connection is fine
  } catch (const pqxx::failure&) {
    return true;
  } catch (const pqxx::usage_error&) {
    return true;
  } catch (...) {
  }
  try {
    return conn == nullptr || !conn->is_open();
  } catch (...) {
    return true;
  }
}

void pg_array::add(std::string_view value) {
  separate();
  text_.push_back('"');
  // Copy runs without quotes or backslashes in one go; escape the rest.
  while (!value.empty()) {
    const auto special = value.find_first_of("\"\\");
    text_.append(value.substr(0, special));
    if (special == std::string_view::npos) break;
    text_.push_back('\\');
    text_.push_back(value[special]);
    value.remove_prefix(special + 1);
  }
  text_.push_back('"');
}

void pg_array::add_plain(std::string_view token) {
  const auto plain = [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '_';
  };
  // NULL (any case) unquoted would be the null element.
  if (token.empty() || token.size() == 4 || !std::all_of(token.begin(), token.end(), plain)) return add(token);
  separate();
  text_.append(token);
}

void pg_array::add(std::int64_t value) {
  separate();
  text_ += std::to_string(value);
}

void pg_array::add_null() {
  separate();
  text_ += "NULL";
}

const char* status_text(saga_status status) {
  if (status == saga_status::not_started) throw store_error("a saga's status after an append cannot be not_started");
  return to_string(status);
}

saga_status parse_status(std::string_view text) {
  for (auto s : {saga_status::running, saga_status::compensating, saga_status::completed, saga_status::compensated,
                 saga_status::stuck})
    if (text == to_string(s)) return s;
  throw store_error("saga_instances.status holds an unknown status '" + std::string(text) + "'");
}

saga_id parse_saga_id(std::string_view text) {
  auto id = saga_id::parse(text);
  if (!id) throw store_error("not a saga id: '" + std::string(text) + "'");
  return *id;
}

std::vector<transaction::row> work_transaction::exec(std::string_view sql,
                                                     const std::vector<std::optional<std::string>>& params) {
  try {
    const pqxx::result result = exec_cached(tx_, std::string(sql), pqxx::prepare::make_dynamic_params(params));
    std::vector<row> rows;
    rows.reserve(result.size());
    for (const auto& r : result) {
      row out;
      out.reserve(r.size());
      for (const auto& f : r) {
        if (f.is_null())
          out.emplace_back(std::nullopt);
        else
          out.emplace_back(std::string(f.c_str(), f.size()));
      }
      rows.push_back(std::move(out));
    }
    return rows;
  } catch (...) {
    rethrow_translated("transaction::exec");
  }
}

}  // namespace saga::storage::detail
