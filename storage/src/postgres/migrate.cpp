#include "saga/storage/migrate.hpp"
#include "saga/storage/hash_chain.hpp"

#include "pg_detail.hpp"

#include <algorithm>
#include <chrono>
#include <map>
#include <thread>

namespace saga::storage {

namespace {

// Key of the session-level advisory lock every migrating process takes ("saga-mig").
constexpr std::int64_t migrate_lock_key = 0x736167612d6d6967;

// Who holds the migration lock, for the error when it stays taken: pid, application, state, since when.
std::string lock_holder(pqxx::connection& conn) {
  pqxx::nontransaction tx(conn);
  // A bigint advisory key is stored as classid (high 32 bits), objid (low 32 bits), objsubid 1.
  const auto rows = tx.exec_params(
      "SELECT l.pid, coalesce(a.application_name, ''), coalesce(a.state, ''),"
      " coalesce(to_char(a.xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), ''),"
      " coalesce(left(a.query, 200), '')"
      " FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
      " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
      " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
      " AND l.classid::bigint = ($1::bigint >> 32) AND l.objid::bigint = ($1::bigint & 4294967295)",
      migrate_lock_key);
  if (rows.empty()) return "a session that has let it go since";
  const auto r = rows[0];
  std::string who = "the session with pid " + r[0].as<std::string>();
  if (!r[1].as<std::string>().empty()) who += " ('" + r[1].as<std::string>() + "')";
  if (!r[2].as<std::string>().empty()) who += ", " + r[2].as<std::string>();
  if (!r[3].as<std::string>().empty()) who += ", in a transaction since " + r[3].as<std::string>();
  if (!r[4].as<std::string>().empty()) who += ", last statement: " + r[4].as<std::string>();
  return who;
}

// Holds pg_advisory_lock for its lifetime; closing the connection releases it too. Waits at most `wait` for it.
class advisory_lock {
 public:
  advisory_lock(pqxx::connection& conn, std::chrono::milliseconds wait) : conn_(conn) {
    const auto deadline = std::chrono::steady_clock::now() + wait;
    for (std::chrono::milliseconds pause{5};; pause = std::min(pause * 2, std::chrono::milliseconds(500))) {
      {
        pqxx::nontransaction tx(conn_);
        if (tx.exec_params1("SELECT pg_try_advisory_lock($1)", migrate_lock_key)[0].as<bool>()) return;
      }
      const auto now = std::chrono::steady_clock::now();
      if (now >= deadline)
        throw store_error("migrate: another session has held the migration lock for longer than " +
                              std::to_string(wait.count()) + " ms: " + holder_or_why_not() +
                              " (a migration waiting for a table lock, or a process hung while migrating?)",
                          true);
      std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(pause, deadline - now));
    }
  }
  // lock_holder, or why it could not be told: the lock's error is the one to report.
  std::string holder_or_why_not() {
    try {
      return lock_holder(conn_);
    } catch (const std::exception& e) {
      return "its holder could not be read (" + std::string(e.what()) + ")";
    }
  }
  ~advisory_lock() {
    try {
      pqxx::nontransaction tx(conn_);
      tx.exec_params("SELECT pg_advisory_unlock($1)", migrate_lock_key);
    } catch (...) {  // the lock goes away with the connection anyway
    }
  }
  advisory_lock(const advisory_lock&) = delete;
  advisory_lock& operator=(const advisory_lock&) = delete;

 private:
  pqxx::connection& conn_;
};

struct applied_row {
  std::string name;
  std::string checksum;
};

}  // namespace

std::string migration_checksum(const migration& m) { return sha256_hex(m.sql); }

migrate_result migrate(const std::string& url) { return migrate(url, bundled_migrations()); }

migrate_result migrate(const std::string& url, std::span<const migration> migrations, const migrate_options& options) {
  std::vector<const migration*> ordered;
  for (const auto& m : migrations) ordered.push_back(&m);
  std::sort(ordered.begin(), ordered.end(), [](auto* a, auto* b) { return a->version < b->version; });
  for (std::size_t i = 1; i < ordered.size(); ++i)
    if (ordered[i]->version == ordered[i - 1]->version)
      throw migration_error("migrations " + ordered[i - 1]->name + " and " + ordered[i]->name + " share version " +
                            std::to_string(ordered[i]->version));

  migrate_result result;
  auto conn = detail::connect(url, "migrate");
  std::string current = "migrate";
  try {
    {  // named in pg_stat_activity (and in the lock-wait error of another migrate), unless the URL names it
      pqxx::nontransaction tx(*conn);
      tx.exec(
          "SELECT set_config('application_name', 'saga migrate', false)"
          " WHERE current_setting('application_name') = ''");
    }
    advisory_lock lock(*conn, options.lock_wait);
    {
      pqxx::work tx(*conn);
      tx.exec(
          "CREATE TABLE IF NOT EXISTS saga_migrations ("
          " version integer PRIMARY KEY,"
          " name text NOT NULL,"
          " checksum text NOT NULL,"  // hex SHA-256 of the file's bytes
          " applied_at timestamptz NOT NULL DEFAULT now())");
      tx.commit();
    }
    std::map<std::uint32_t, applied_row> applied;
    {
      pqxx::nontransaction tx(*conn);
      for (const auto& row : tx.exec("SELECT version, name, checksum FROM saga_migrations ORDER BY version"))
        applied.emplace(row[0].as<std::uint32_t>(), applied_row{row[1].as<std::string>(), row[2].as<std::string>()});
    }
    const std::uint32_t highest = ordered.empty() ? 0 : ordered.back()->version;
    for (const auto& [version, row] : applied) {
      auto it = std::find_if(ordered.begin(), ordered.end(), [v = version](auto* m) { return m->version == v; });
      if (it == ordered.end() && version > highest) {
        // A newer release applied it (a rolling upgrade, or a rollback of this process): its migrations keep
        // the schema usable by the release before, so this build runs, and says so.
        result.newer.push_back(row.name);
        continue;
      }
      if (it == ordered.end())
        throw migration_error("migration " + row.name + " (version " + std::to_string(version) +
                              ") is recorded as applied but its file is missing from this build");
      const std::string checksum = migration_checksum(**it);
      if ((*it)->name != row.name || checksum != row.checksum)
        throw migration_error("migration " + (*it)->name + " was changed after it was applied as " + row.name +
                              " (recorded checksum " + row.checksum + ", file now has " + checksum + ")");
    }
    const std::uint32_t last_applied = applied.empty() ? 0 : applied.rbegin()->first;
    for (const auto* m : ordered)
      if (!applied.count(m->version) && m->version < last_applied)
        throw migration_error("migration " + m->name + " is not applied, but a later one (" +
                              applied.at(last_applied).name +
                              ") is: applying it now would run the migrations out of order; renumber it after " +
                              applied.at(last_applied).name + " or apply it by hand");
    for (const auto* m : ordered) {
      if (applied.count(m->version)) continue;
      current = "migrate: applying " + m->name;
      if (!result.applied.empty()) {
        current += " (this call applied before it:";
        for (const auto& name : result.applied) current += " " + name;
        current += ")";
      }
      pqxx::work tx(*conn);
      tx.exec(m->sql);
      tx.exec_params("INSERT INTO saga_migrations (version, name, checksum) VALUES ($1, $2, $3)", m->version, m->name,
                     migration_checksum(*m));
      tx.commit();
      result.applied.push_back(m->name);
    }
  } catch (...) {
    detail::rethrow_translated(current);
  }
  return result;
}

}  // namespace saga::storage
