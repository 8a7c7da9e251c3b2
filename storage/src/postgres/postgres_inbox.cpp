#include "saga/storage/postgres_inbox.hpp"

#include "pg_detail.hpp"

#include "saga/json.hpp"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <unordered_map>

namespace saga::storage {

namespace {

// Class id of the transaction-level advisory locks that serialize deliveries of one command id ("inbx").
constexpr int inbox_lock_class = 0x696e6278;

const char* outcome_text(triggers::outcome o) {
  switch (o) {
    case triggers::outcome::success: return "success";
    case triggers::outcome::failure: return "failure";
    case triggers::outcome::retryable_failure: break;
  }
  throw store_error("a retryable failure is never stored in the inbox");
}

// A stored reply from the columns result, payload::text, reason starting at column `first`.
stored_reply reply_from(const pqxx::row& row, pqxx::row::size_type first = 0) {
  stored_reply reply;
  const std::string result = row[first].as<std::string>();
  if (result == "success")
    reply.result = triggers::outcome::success;
  else if (result == "failure")
    reply.result = triggers::outcome::failure;
  else
    throw store_error("saga_inbox.result holds an unknown outcome '" + result + "'");
  reply.payload = row[first + 1].is_null() ? std::string() : canonical_json(row[first + 1].c_str());
  reply.reason = row[first + 2].as<std::string>();
  return reply;
}

}  // namespace

struct postgres_inbox::impl {
  std::string url;
  postgres_inbox_options options;
  std::mutex mutex;
  std::condition_variable cv;
  std::vector<std::unique_ptr<pqxx::connection>> idle;
  std::size_t open = 0;

  // A pooled connection, returned on destruction unless it broke.
  class lease {
   public:
    explicit lease(impl& owner) : owner_(owner) {
      std::unique_lock lock(owner_.mutex);
      owner_.cv.wait(lock, [&] { return !owner_.idle.empty() || owner_.open < owner_.options.connections; });
      if (!owner_.idle.empty()) {
        conn_ = std::move(owner_.idle.back());
        owner_.idle.pop_back();
        return;
      }
      ++owner_.open;
      lock.unlock();
      try {
        conn_ = detail::connect_planning_each_time(owner_.url, "postgres_inbox");
      } catch (...) {
        release_slot();
        throw;
      }
    }
    ~lease() {
      if (conn_ && conn_->is_open()) {
        std::lock_guard lock(owner_.mutex);
        owner_.idle.push_back(std::move(conn_));
        owner_.cv.notify_one();
      } else {
        conn_.reset();
        release_slot();
      }
    }
    lease(const lease&) = delete;
    lease& operator=(const lease&) = delete;
    pqxx::connection& conn() { return *conn_; }
    void drop() { conn_.reset(); }
    [[nodiscard]] const pqxx::connection* get() const { return conn_.get(); }

   private:
    void release_slot() {
      std::lock_guard lock(owner_.mutex);
      --owner_.open;
      owner_.cv.notify_one();
    }
    impl& owner_;
    std::unique_ptr<pqxx::connection> conn_;
  };
};

postgres_inbox::postgres_inbox(std::string url, postgres_inbox_options options) : impl_(std::make_unique<impl>()) {
  impl_->url = std::move(url);
  impl_->options = options;
  if (impl_->options.connections == 0) impl_->options.connections = 1;
}

postgres_inbox::~postgres_inbox() = default;

stored_reply postgres_inbox::process(const std::string& command_id,
                                     const std::function<stored_reply(transaction&)>& work, bool* first_delivery) {
  impl::lease lease(*impl_);
  try {
    pqxx::work tx(lease.conn());
    // Waits while another delivery of this command id is inside its transaction.
    detail::exec_cached(tx, "SELECT pg_advisory_xact_lock($1, hashtext($2))", inbox_lock_class, command_id);
    // A new statement, so a reply committed by that other delivery is visible now.
    const auto stored = detail::exec_cached(
        tx, "SELECT result, payload::text, reason FROM saga_inbox WHERE command_id = $1", command_id);
    if (!stored.empty()) {
      if (first_delivery) *first_delivery = false;
      auto reply = reply_from(stored[0]);
      tx.commit();
      return reply;
    }
    if (first_delivery) *first_delivery = true;
    detail::work_transaction handler_tx(tx);
    stored_reply reply = work(handler_tx);  // an exception aborts tx (and the handler's writes) on the way out
    if (reply.result == triggers::outcome::retryable_failure) {
      tx.abort();
      return reply;
    }
    std::optional<std::string> payload;
    if (!reply.payload.empty()) {
      reply.payload = canonical_json(reply.payload);
      payload = reply.payload;
    }
    detail::exec_cached(tx,
                        "INSERT INTO saga_inbox (command_id, result, payload, reason) VALUES ($1, $2, $3::jsonb, $4)",
                        command_id, outcome_text(reply.result), payload, reply.reason);
    tx.commit();
    return reply;
  } catch (...) {
    if (detail::connection_lost(lease.get())) lease.drop();
    detail::rethrow_translated("postgres_inbox: command " + command_id);
  }
}

namespace {
// Thrown inside a batch transaction when a handler answers retryable: the batch is rolled back and handled one
// command at a time.
struct batch_declined {};
}  // namespace

std::vector<inbox::command_result> postgres_inbox::handle_batch(const std::vector<command_work>& commands) {
  if (commands.size() <= 1) return inbox::handle_batch(commands);
  std::vector<command_result> results(commands.size());
  try {
    impl::lease lease(*impl_);
    try {
      pqxx::work tx(lease.conn());
      // Every id the batch may read or write: its commands and the forward commands its compensations fence.
      std::vector<std::string> ids;
      for (const auto& c : commands) {
        ids.push_back(c.command_id);
        if (!c.compensates.empty()) ids.push_back(c.compensates);
      }
      std::sort(ids.begin(), ids.end());
      ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
      detail::pg_array id_array;
      for (const auto& id : ids) id_array.add(id);
      // The same locks as process() takes one by one, taken in one (hash) order so two batches cannot deadlock.
      detail::exec_cached(tx,
                          "SELECT pg_advisory_xact_lock($1, h) FROM"
                          " (SELECT DISTINCT hashtext(x) AS h FROM unnest($2::text[]) AS x ORDER BY 1) AS locks",
                          inbox_lock_class, id_array.str());
      std::unordered_map<std::string, stored_reply> decided;
      for (const auto& r : detail::exec_cached(
               tx,
               "SELECT command_id, result, payload::text, reason FROM saga_inbox WHERE command_id = ANY($1::text[])",
               id_array.str())) {
        decided.emplace(r[0].as<std::string>(), reply_from(r, 1));
      }
      detail::pg_array new_id, new_result, new_payload, new_reason;
      auto store = [&](const std::string& id, const stored_reply& reply) {
        decided.emplace(id, reply);
        new_id.add(id);
        new_result.add(outcome_text(reply.result));
        if (reply.payload.empty())
          new_payload.add_null();
        else
          new_payload.add(reply.payload);
        new_reason.add(reply.reason);
      };
      detail::work_transaction handler_tx(tx);
      for (std::size_t i = 0; i < commands.size(); ++i) {
        const auto& c = commands[i];
        auto& result = results[i];
        if (auto it = decided.find(c.command_id); it != decided.end()) {  // a repeat (maybe within this batch)
          result.reply = it->second;
          continue;
        }
        result.ran = true;
        if (!c.compensates.empty()) {  // handle_command's fence, inside this transaction
          auto fwd = decided.find(c.compensates);
          if (fwd == decided.end()) {
            store(c.compensates, stored_reply{triggers::outcome::failure, "{}", "compensated before it ran"});
            fwd = decided.find(c.compensates);
          }
          if (fwd->second.result != triggers::outcome::success) {
            result.reply = stored_reply{triggers::outcome::success, R"({"nothing_to_undo":true})", ""};
            store(c.command_id, result.reply);
            continue;
          }
        }
        stored_reply reply = c.work(handler_tx);  // an exception aborts the batch on the way out
        if (reply.result == triggers::outcome::retryable_failure) throw batch_declined{};
        if (!reply.payload.empty()) reply.payload = canonical_json(reply.payload);
        result.reply = reply;
        store(c.command_id, reply);
      }
      if (!new_id.empty())
        detail::exec_cached(tx,
                            "INSERT INTO saga_inbox (command_id, result, payload, reason)"
                            " SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[])",
                            new_id.str(), new_result.str(), new_payload.str(), new_reason.str());
      tx.commit();
      return results;
    } catch (...) {
      if (detail::connection_lost(lease.get())) lease.drop();
      throw;
    }
  } catch (...) {
    // Nothing of the batch was committed (or, with the connection lost during COMMIT, maybe everything: the
    // one-at-a-time path then finds the stored replies and runs nothing twice).
  }
  return inbox::handle_batch(commands);
}

std::optional<stored_reply> postgres_inbox::find(const std::string& command_id) {
  impl::lease lease(*impl_);
  try {
    pqxx::nontransaction tx(lease.conn());
    const auto stored = detail::exec_cached(
        tx, "SELECT result, payload::text, reason FROM saga_inbox WHERE command_id = $1", command_id);
    if (stored.empty()) return std::nullopt;
    return reply_from(stored[0]);
  } catch (...) {
    if (detail::connection_lost(lease.get())) lease.drop();
    detail::rethrow_translated("postgres_inbox: find " + command_id);
  }
}

}  // namespace saga::storage
