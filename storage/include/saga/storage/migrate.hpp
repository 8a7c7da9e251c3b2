// saga/storage/migrate.hpp — applies the numbered SQL migrations (embedded at build time) to a PostgreSQL database.
#pragma once

#include "saga/storage/event_store.hpp"

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace saga::storage {

// One numbered schema change: `version` comes from the file name's number, `name` is the file name.
struct migration {
  std::uint32_t version = 0;
  std::string name;  // e.g. "0001_event_log.sql"
  std::string sql;   // the file's bytes, run as one transaction
};

// A migration that cannot be applied or no longer matches what was applied (names the file); retry does not help.
class migration_error : public store_error {
 public:
  using store_error::store_error;
};

// What one migrate call did.
struct migrate_result {
  std::vector<std::string> applied;  // names applied by this call, in order (empty = the schema was up to date)
  std::vector<std::string> newer;  // applied by a newer release: versions above this build's highest, left as they are
};

// How migrate waits for the migration lock another process holds.
struct migrate_options {
  // Longest wait for the lock; then migrate throws a retryable store_error naming the session that holds it (a
  // migration stuck behind a table lock, or a process hung while holding it) instead of waiting for good.
  std::chrono::milliseconds lock_wait = std::chrono::minutes(5);
};

// The migrations compiled into this library (migrations/*.sql), ordered by version. Never fails.
[[nodiscard]] const std::vector<migration>& bundled_migrations();

// Applies the bundled migrations not yet applied, in order, one transaction each, under a PostgreSQL advisory lock
// (concurrent callers wait and then find nothing to do). Versions above this build's highest that a newer release
// applied are left alone and listed in `newer` (a rolling upgrade runs both releases on one schema). Throws
// migration_error when an applied migration's file changed (checksum) or is missing below the build's highest, or
// when one not applied comes before one that is (out of order); store_unavailable when the server cannot be reached
// (retry helps); store_error when a migration's SQL fails (naming it, and those this call applied before it), or
// (retryable) when the lock was not free within options.lock_wait (naming the session holding it).
migrate_result migrate(const std::string& url);
// Same with an explicit migration list (tools and tests); versions must be unique.
migrate_result migrate(const std::string& url, std::span<const migration> migrations,
                       const migrate_options& options = {});

// Lowercase hex SHA-256 of a migration's bytes, as recorded in saga_migrations.checksum.
[[nodiscard]] std::string migration_checksum(const migration& m);

}  // namespace saga::storage
