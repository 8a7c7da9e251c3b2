// The migrations runner against a real server: idempotent, safe to run concurrently, refuses tampering.
#include "postgres_support.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <thread>

namespace saga {
namespace {

using namespace pg_test;

class postgres_migrate : public postgres_test {
 protected:
  [[nodiscard]] bool migrate_on_setup() const override { return false; }
  std::vector<storage::migration> bundled() const {
    return {storage::bundled_migrations().begin(), storage::bundled_migrations().end()};
  }
  std::size_t count(const std::string& sql) {
    storage::postgres_session session(url_);
    return std::stoul(*session.exec(sql).at(0).at(0));
  }
};

TEST_F(postgres_migrate, bundled_migrations_are_embedded_in_order) {
  const auto& all = storage::bundled_migrations();
  ASSERT_GE(all.size(), 2u);
  for (std::size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(all[i].version, i + 1) << all[i].name;
    EXPECT_FALSE(all[i].sql.empty()) << all[i].name;
  }
  EXPECT_EQ(all[0].name.substr(0, 5), "0001_");
}

TEST_F(postgres_migrate, first_run_applies_everything_and_a_second_run_is_a_no_op) {
  const auto first = storage::migrate(url_);
  ASSERT_EQ(first.applied.size(), storage::bundled_migrations().size());
  for (std::size_t i = 0; i < first.applied.size(); ++i)
    EXPECT_EQ(first.applied[i], storage::bundled_migrations()[i].name);
  EXPECT_TRUE(storage::migrate(url_).applied.empty());
  EXPECT_EQ(count("SELECT count(*) FROM saga_migrations"), storage::bundled_migrations().size());
  storage::postgres_session session(url_);
  const auto rows = session.exec("SELECT name, checksum FROM saga_migrations WHERE version = 1");
  EXPECT_EQ(*rows.at(0).at(1), storage::migration_checksum(storage::bundled_migrations()[0]));
  // The tables exist and are usable.
  EXPECT_EQ(count("SELECT count(*) FROM saga_events"), 0u);
  EXPECT_EQ(count("SELECT count(*) FROM saga_instances"), 0u);
  EXPECT_EQ(count("SELECT count(*) FROM saga_inbox"), 0u);
}

TEST_F(postgres_migrate, a_new_migration_is_applied_on_top) {
  auto list = bundled();
  (void)storage::migrate(url_, list);
  list.push_back({99, "0099_extra.sql", "CREATE TABLE extra_table (id integer PRIMARY KEY);"});
  const auto result = storage::migrate(url_, list);
  ASSERT_EQ(result.applied, std::vector<std::string>{"0099_extra.sql"});
  EXPECT_EQ(count("SELECT count(*) FROM extra_table"), 0u);
}

TEST_F(postgres_migrate, two_threads_migrating_at_once_both_succeed) {
  std::vector<std::string> applied[4];
  std::string errors[4];
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      try {
        applied[i] = storage::migrate(url_).applied;
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    });
  for (auto& t : threads) t.join();
  std::size_t total = 0;
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(errors[i], "");
    total += applied[i].size();
  }
  EXPECT_EQ(total, storage::bundled_migrations().size()) << "each migration applied exactly once";
  EXPECT_EQ(count("SELECT count(*) FROM saga_migrations"), storage::bundled_migrations().size());
}

TEST_F(postgres_migrate, two_processes_migrating_at_once_both_succeed) {
  constexpr int processes = 3;
  std::vector<pid_t> children;
  for (int i = 0; i < processes; ++i) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0) << "fork failed";
    if (pid == 0) {
      int code = 0;
      try {
        (void)storage::migrate(url_);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "child migrate failed: %s\n", e.what());
        code = 1;
      }
      ::_exit(code);
    }
    children.push_back(pid);
  }
  for (auto pid : children) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "a migrating process failed (see stderr)";
  }
  EXPECT_EQ(count("SELECT count(*) FROM saga_migrations"), storage::bundled_migrations().size());
  EXPECT_TRUE(storage::migrate(url_).applied.empty());
}

// A session holding the migration lock (a migration stuck behind a table lock, a hung process) made every later
// migrate, and so every service start, wait for good without a word.
TEST_F(postgres_migrate, a_lock_held_past_lock_wait_is_a_retryable_error_naming_its_holder) {
  const std::string key = "8314040054174280039";  // the key migrate.cpp uses
  {
    storage::postgres_session holder(url_);
    const std::string pid = *holder.exec("SELECT pg_backend_pid()").at(0).at(0);
    (void)holder.exec("SELECT pg_advisory_lock(" + key + ")");
    try {
      (void)storage::migrate(url_, bundled(), {std::chrono::milliseconds(300)});
      ADD_FAILURE() << "migrate went on while another session held the lock";
    } catch (const storage::store_error& e) {
      EXPECT_TRUE(e.retryable());
      const std::string what = e.what();
      EXPECT_NE(what.find("held the migration lock for longer than 300 ms"), std::string::npos) << what;
      EXPECT_NE(what.find("pid " + pid), std::string::npos) << what;
      EXPECT_NE(what.find("last statement: "), std::string::npos) << what;
    }
    EXPECT_EQ(count("SELECT count(*) FROM pg_tables WHERE tablename = 'saga_migrations'"
                    " AND schemaname = current_schema()"),
              0u);  // nothing done
    // Let go while another migrate waits within its lock_wait: that one goes on.
    std::thread release([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      (void)holder.exec("SELECT pg_advisory_unlock(" + key + ")");
    });
    std::vector<std::string> applied;
    EXPECT_NO_THROW(applied = storage::migrate(url_, bundled(), {std::chrono::seconds(30)}).applied);
    release.join();
    EXPECT_EQ(applied.size(), storage::bundled_migrations().size());
  }
}

// A migration that runs long holds the lock: another migrate that gives up names it, and what it runs.
TEST_F(postgres_migrate, a_migrate_that_gives_up_names_the_migration_holding_the_lock) {
  auto slow = bundled();
  slow.push_back({99, "0099_slow.sql", "SELECT pg_sleep(3)"});
  std::string first_error;
  std::thread first([&] {
    try {
      (void)storage::migrate(url_, slow);
    } catch (const std::exception& e) {
      first_error = e.what();
    }
  });
  // Wait until the slow migration runs (it holds the lock then).
  for (int i = 0; i < 200 && count("SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(3)'") == 0;
       ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  try {
    (void)storage::migrate(url_, slow, {std::chrono::milliseconds(200)});
    ADD_FAILURE() << "the second migrate went on while the first held the lock";
  } catch (const storage::store_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("('saga migrate'), active"), std::string::npos) << what;
    EXPECT_NE(what.find("last statement: SELECT pg_sleep(3)"), std::string::npos) << what;
  }
  first.join();
  EXPECT_EQ(first_error, "");
  EXPECT_TRUE(storage::migrate(url_, slow).applied.empty());
}

TEST_F(postgres_migrate, a_tampered_migration_is_refused_with_its_name) {
  auto list = bundled();
  (void)storage::migrate(url_, list);
  list[0].sql += "\n-- edited after release\n";
  try {
    (void)storage::migrate(url_, list);
    FAIL() << "a changed applied migration must be refused";
  } catch (const storage::migration_error& e) {
    EXPECT_NE(std::string(e.what()).find(list[0].name), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("changed"), std::string::npos) << e.what();
    EXPECT_FALSE(e.retryable());
  }
}

TEST_F(postgres_migrate, an_applied_migration_missing_from_the_build_is_refused_with_its_name) {
  auto list = bundled();
  list.push_back({7, "0007_gone.sql", "SELECT 1;"});
  list.push_back({8, "0008_kept.sql", "SELECT 1;"});
  (void)storage::migrate(url_, list);
  list.erase(list.end() - 2);  // 0007 is gone, 0008 (after it) is still in the build
  try {
    (void)storage::migrate(url_, list);
    FAIL() << "a missing applied migration must be refused";
  } catch (const storage::migration_error& e) {
    EXPECT_NE(std::string(e.what()).find("0007_gone.sql"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
  }
}

// A newer release applied 0007 and 0008 (a rolling upgrade, or this process rolled back): the older build runs, and
// says so. It was refused ("missing from this build"), so an older process that restarted could not start.
TEST_F(postgres_migrate, migrations_a_newer_release_applied_are_left_alone_and_reported) {
  auto list = bundled();
  const auto older = list;
  list.push_back({7, "0007_newer.sql", "SELECT 1;"});
  list.push_back({8, "0008_newer.sql", "SELECT 1;"});
  (void)storage::migrate(url_, list);
  const auto r = storage::migrate(url_, older);
  EXPECT_TRUE(r.applied.empty());
  EXPECT_EQ(r.newer, (std::vector<std::string>{"0007_newer.sql", "0008_newer.sql"}));
}

// A migration numbered below one already applied (a branch merged late) would run out of order: refused, naming
// both. Before, it was applied after the later one without a word.
TEST_F(postgres_migrate, a_migration_below_one_already_applied_is_refused_as_out_of_order) {
  auto list = bundled();
  list.push_back({9, "0009_applied.sql", "SELECT 1;"});
  (void)storage::migrate(url_, list);
  list.push_back({8, "0008_late.sql", "CREATE TABLE late_one (id integer);"});
  try {
    (void)storage::migrate(url_, list);
    FAIL() << "an out-of-order migration must be refused";
  } catch (const storage::migration_error& e) {
    EXPECT_NE(std::string(e.what()).find("0008_late.sql is not applied, but a later one (0009_applied.sql) is"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(count("SELECT count(*) FROM pg_tables WHERE tablename = 'late_one' AND schemaname = current_schema()"), 0u);
}

TEST_F(postgres_migrate, a_failing_migration_rolls_back_and_names_itself) {
  auto list = bundled();
  list.push_back({40, "0040_fine.sql", "SELECT 1;"});
  list.push_back({50, "0050_broken.sql", "CREATE TABLE half_done (id integer); SELECT no_such_column FROM half_done;"});
  try {
    (void)storage::migrate(url_, list);
    FAIL() << "a broken migration must fail";
  } catch (const storage::store_error& e) {
    EXPECT_NE(std::string(e.what()).find("0050_broken.sql"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("42703"), std::string::npos) << e.what();
    // What the same call committed before it is named: it stays applied.
    EXPECT_NE(std::string(e.what()).find("this call applied before it:"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("0040_fine.sql"), std::string::npos) << e.what();
  }
  EXPECT_EQ(count("SELECT count(*) FROM pg_tables WHERE tablename = 'half_done' AND schemaname = current_schema()"),
            0u);
  EXPECT_EQ(count("SELECT count(*) FROM saga_migrations"), storage::bundled_migrations().size() + 1);
}

}  // namespace
}  // namespace saga
