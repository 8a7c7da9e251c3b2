#include "saga/storage/postgres_event_store.hpp"

#include "pg_detail.hpp"

#include "saga/json.hpp"
#include "saga/storage/hash_chain.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <limits>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

namespace saga::storage {

namespace {

using steady = std::chrono::steady_clock;

// Statements of the writer connection (prepared once per connection).
constexpr const char* heads_sql =
    "SELECT s.id::text, s.last_seq, s.last_hash FROM unnest($1::uuid[]) AS k(id)"
    " JOIN saga_instances s ON s.id = k.id";
// One statement per batch: start new sagas, move existing heads only where they still are at the expected seq,
// and insert the events of exactly those sagas, in request order (positions follow seq within a saga). After the
// saga rows are written and before it takes a position, the statement takes the position lock ($26), held until its
// commit is durable: batches of several writer connections (and of other processes) commit in position order, so
// read_all never skips a position that commits later; row locks are always taken before it, so no deadlock.
constexpr const char* write_sql =
    "WITH new_sagas AS ("
    " INSERT INTO saga_instances (id, type, definition_version, status, last_seq, last_hash, partition, started_at,"
    " updated_at, idempotency_key)"
    " SELECT u.id, u.type, u.def, u.status, u.last_seq, u.last_hash, u.part, to_timestamp(u.started / 1000.0::float8),"
    " to_timestamp(u.updated / 1000.0::float8), u.key"
    " FROM unnest($1::uuid[], $2::text[], $3::integer[], $4::text[], $5::bigint[], $6::text[], $7::integer[],"
    " $8::bigint[], $9::bigint[], $10::text[])"
    " AS u(id, type, def, status, last_seq, last_hash, part, started, updated, key)"
    " ON CONFLICT DO NOTHING RETURNING id),"
    " moved AS ("
    " UPDATE saga_instances s SET last_seq = u.last_seq, last_hash = u.last_hash, status = u.status,"
    " updated_at = to_timestamp(u.at / 1000.0::float8)"
    " FROM unnest($11::uuid[], $12::bigint[], $13::text[], $14::bigint[], $15::text[], $16::text[], $17::bigint[])"
    " AS u(id, expected, prev, last_seq, last_hash, status, at)"
    " WHERE s.id = u.id AND s.last_seq = u.expected AND s.last_hash = u.prev RETURNING s.id),"
    " written AS ("
    " INSERT INTO saga_events (saga_id, seq, type, schema_version, payload, metadata, prev_hash, hash)"
    " SELECT e.saga_id, e.seq, e.type, e.ver, e.payload, e.metadata, e.prev, e.hash"
    " FROM ROWS FROM (unnest($18::uuid[]), unnest($19::bigint[]), unnest($20::text[]), unnest($21::integer[]),"
    " jsonb_array_elements($22::jsonb), jsonb_array_elements($23::jsonb), unnest($24::text[]), unnest($25::text[]))"
    " WITH ORDINALITY AS e(saga_id, seq, type, ver, payload, metadata, prev, hash, ord)"
    " WHERE e.saga_id IN (SELECT id FROM new_sagas UNION ALL SELECT id FROM moved)"
    " AND (SELECT pg_advisory_xact_lock($26) FROM (SELECT count(*) FROM new_sagas) n, (SELECT count(*) FROM moved) m)"
    " IS NOT NULL"
    " ORDER BY e.ord"
    " RETURNING saga_id, position)"
    " SELECT saga_id::text, max(position) FROM written GROUP BY saga_id";
constexpr const char* read_back_sql =
    "SELECT e.saga_id::text, e.seq, e.hash, e.position FROM saga_events e"
    " JOIN unnest($1::uuid[], $2::bigint[]) AS k(saga_id, seq) ON e.saga_id = k.saga_id AND e.seq = k.seq";

constexpr const char* event_columns =
    "SELECT saga_id::text, seq, position, type, schema_version, payload::text, metadata::text,"
    " (extract(epoch FROM recorded_at) * 1000)::bigint, prev_hash, hash FROM saga_events ";
constexpr const char* summary_columns =
    "SELECT id::text, type, definition_version, status, last_seq, partition,"
    " (extract(epoch FROM started_at) * 1000)::bigint, (extract(epoch FROM updated_at) * 1000)::bigint,"
    " coalesce(idempotency_key, ''), last_hash FROM saga_instances ";

std::int64_t ms(time_point t) { return static_cast<std::int64_t>(t.time_since_epoch().count()); }

recorded_event event_from(const pqxx::row& r) {
  recorded_event e;
  e.saga = detail::parse_saga_id(r[0].c_str());
  e.seq = r[1].as<std::uint64_t>();
  e.position = r[2].as<std::uint64_t>();
  e.type = r[3].as<std::string>();
  e.schema_version = r[4].as<std::uint32_t>();
  e.payload = canonical_json(r[5].c_str());
  e.metadata = canonical_json(r[6].c_str());
  e.recorded_at = time_point(std::chrono::milliseconds(r[7].as<std::int64_t>()));
  e.prev_hash = r[8].as<std::string>();
  e.hash = r[9].as<std::string>();
  return e;
}

saga_summary summary_from(const pqxx::row& r) {
  saga_summary s;
  s.id = detail::parse_saga_id(r[0].c_str());
  s.type = r[1].as<std::string>();
  s.definition_version = r[2].as<std::uint32_t>();
  s.status = detail::parse_status(r[3].c_str());
  s.last_seq = r[4].as<std::uint64_t>();
  s.partition = r[5].as<std::int32_t>();
  s.started_at = time_point(std::chrono::milliseconds(r[6].as<std::int64_t>()));
  s.updated_at = time_point(std::chrono::milliseconds(r[7].as<std::int64_t>()));
  s.idempotency_key = r[8].as<std::string>();
  s.last_hash = r[9].as<std::string>();
  return s;
}

struct pending {
  append_request request;
  append_callback done;
  std::vector<recorded_event> sealed;  // encoded on the caller's thread; chained onto the real head by the writer
};

struct completion {
  append_callback done;
  std::exception_ptr error;
  append_result result;
};

// One append of a batch while the batch is being written.
struct slot {
  pending* item = nullptr;
  std::vector<recorded_event>* sealed = nullptr;  // the item's records, linked onto the head; null until accepted
  std::exception_ptr error;                       // set once the append is refused
  append_result result;
  bool is_new = false;
  [[nodiscard]] bool accepted() const noexcept { return !error && sealed != nullptr; }
};

// Thrown out of write_batch when the connection broke before the batch statement went out: nothing was committed.
struct connection_broken {
  std::exception_ptr cause;
};
// Thrown out of write_batch when the connection broke while the batch statement ran: the outcome must be read back.
struct commit_in_doubt {
  std::exception_ptr cause;
};

// A saga's last seq and hash.
struct head {
  std::uint64_t seq = 0;
  std::string hash;
};

// A batch stops waiting for more appends when none arrived for this long.
constexpr std::chrono::microseconds arrival_pause{100};

// Heads remembered by the writer (what it committed last per saga); cleared when it grows past this.
constexpr std::size_t max_cached_heads = 1 << 20;

std::exception_ptr unavailable(const std::string& what) { return std::make_exception_ptr(store_unavailable(what)); }

// The key of the transaction-level advisory lock that orders positions: ('saga' 'evts' as ASCII).
constexpr std::int64_t position_lock_key = 0x7361676165767473;

// One writer thread's connection (that thread only).
struct writer_connection {
  std::unique_ptr<pqxx::connection> conn;
  steady::time_point next_connect{};
  std::chrono::milliseconds backoff{0};
  std::string last_error;  // why the last connection attempt failed (the server's first line)
  // The server process serving `conn` and when it started (a pid alone may be reused): see resolve_in_doubt.
  int backend_pid = 0;
  std::string backend_start;

  void drop() noexcept {
    try {
      conn.reset();
    } catch (...) {
    }
  }
};

}  // namespace

struct postgres_event_store::impl {
  std::string url;
  postgres_event_store_options options;

  // Appends waiting for the writer.
  std::mutex mutex;
  std::condition_variable queue_cv;
  std::deque<pending> queue;
  // How many appends a writer waits for: an even share of the appends the writers' latest batches held, so batches
  // of several writers overlap instead of one writer taking everything while the others idle.
  std::size_t target = 1;
  std::vector<std::size_t> latest_batch;  // per writer
  std::size_t busy = 0;                   // writers writing a batch
  bool stopping = false;
  std::unordered_set<saga_id> in_flight;  // sagas with an append in a batch being written

  // Finished appends waiting for their callbacks.
  std::mutex done_mutex;
  std::condition_variable done_cv;
  std::vector<completion> done_queue;
  bool done_stopping = false;

  // Reader pool.
  std::mutex pool_mutex;
  std::condition_variable pool_cv;
  std::vector<std::unique_ptr<pqxx::connection>> idle;
  std::size_t open = 0;

  // Heads committed by this store's writers.
  std::mutex head_mutex;
  std::unordered_map<saga_id, head> head_cache;

  std::atomic<std::uint64_t> batches{0}, appends{0}, events{0}, conflicts{0}, in_doubt{0};

  std::vector<std::thread> writer_threads;
  std::thread completion_thread;

  void writer_loop(writer_connection& w, std::size_t index);
  void completion_loop();
  void run_batch(writer_connection& w, std::vector<pending>& batch, std::vector<completion>& out);
  bool write_batch(writer_connection& w, std::vector<slot>& slots);  // true when a statement was committed
  void resolve_in_doubt(std::vector<slot>& slots, int backend_pid, const std::string& backend_start);
  bool ensure_writer(writer_connection& w, bool ignore_backoff);
  void deliver(std::vector<completion>&& out);
  bool wait_or_stop(std::chrono::milliseconds d);

  template <class F>
  auto with_reader(std::string_view doing, F&& f);
};

// ---------------------------------------------------------------------------------------------------------------
// Writer

bool postgres_event_store::impl::ensure_writer(writer_connection& w, bool ignore_backoff) {
  if (w.conn && w.conn->is_open()) return true;
  w.drop();
  if (!ignore_backoff && steady::now() < w.next_connect) return false;
  try {
    auto conn = detail::connect(url, "postgres_event_store writer");
    // The writer's statements look sagas up by id. Without this, a saga_instances table that is small or not yet
    // analyzed is scanned whole for every batch (a hash join), which costs most of a batch's time as it grows.
    conn->set_variable("enable_seqscan", "off");
    conn->set_variable("plan_cache_mode", "force_generic_plan");
    conn->prepare("saga_heads", heads_sql);
    conn->prepare("saga_write", write_sql);
    {
      pqxx::nontransaction tx(*conn);
      const auto me = tx.exec("SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()");
      w.backend_pid = me.empty() ? 0 : me[0][0].as<int>();
      w.backend_start = me.empty() ? std::string() : me[0][1].as<std::string>();
    }
    w.conn = std::move(conn);
    w.backoff = std::chrono::milliseconds(0);
    w.last_error.clear();
    return true;
  } catch (const std::exception& e) {
    w.last_error = e.what();  // detail::connect's: what it was doing and the server's first line
    w.backoff = std::clamp(w.backoff * 2, options.reconnect_backoff_min, options.reconnect_backoff_max);
    w.next_connect = steady::now() + w.backoff;
    return false;
  } catch (...) {
    w.last_error = "unknown error";
    w.backoff = std::clamp(w.backoff * 2, options.reconnect_backoff_min, options.reconnect_backoff_max);
    w.next_connect = steady::now() + w.backoff;
    return false;
  }
}

bool postgres_event_store::impl::wait_or_stop(std::chrono::milliseconds d) {
  std::unique_lock lock(mutex);
  return !queue_cv.wait_for(lock, d, [&] { return stopping; });
}

void postgres_event_store::impl::writer_loop(writer_connection& w, std::size_t index) {
  std::vector<pending> batch;
  std::vector<completion> out;
  // An append whose saga is not in a batch being written (one append per saga in flight: a later one for the same
  // saga waits until the earlier commits, so its expected_seq is checked against what that batch committed).
  const auto ready = [&] {
    return std::any_of(queue.begin(), queue.end(),
                       [&](const pending& p) { return !in_flight.contains(p.request.saga); });
  };
  for (;;) {
    {
      std::unique_lock lock(mutex);
      queue_cv.wait(lock, [&] { return stopping || ready(); });
      if (stopping) break;
      // Wait for the target while appends keep coming: up to max_batch_wait, but not past a pause in arrivals.
      const std::size_t want = std::min(target, options.max_batch_size);
      const auto deadline = steady::now() + options.max_batch_wait;
      for (std::size_t seen = queue.size(); seen < want && !stopping;) {
        if (queue_cv.wait_until(lock, std::min(deadline, steady::now() + arrival_pause),
                                [&] { return stopping || queue.size() >= want; }))
          break;
        if (steady::now() >= deadline || queue.size() == seen) break;
        seen = queue.size();
      }
      // While another writer is idle take only the target and leave it the rest, so the two batches overlap.
      const std::size_t cap = busy + 1 < latest_batch.size() ? want : options.max_batch_size;
      std::unordered_set<saga_id> sagas;
      std::deque<pending> rest;
      for (auto& p : queue) {
        if (batch.size() < cap && !in_flight.contains(p.request.saga) && sagas.insert(p.request.saga).second)
          batch.push_back(std::move(p));
        else
          rest.push_back(std::move(p));
      }
      queue.swap(rest);
      in_flight.insert(sagas.begin(), sagas.end());
      if (!batch.empty()) ++busy;
      if (!queue.empty()) queue_cv.notify_one();
    }
    if (!batch.empty()) run_batch(w, batch, out);
    {
      std::lock_guard lock(mutex);
      if (!batch.empty()) {
        latest_batch[index] = batch.size();
        std::size_t held = 0;
        for (auto n : latest_batch) held += n;
        target = std::max<std::size_t>(1, (held + latest_batch.size() - 1) / latest_batch.size());
      }
      for (const auto& p : batch) in_flight.erase(p.request.saga);
      if (!batch.empty()) --busy;
    }
    if (!batch.empty()) queue_cv.notify_all();  // appends of these sagas may be waiting
    batch.clear();
    deliver(std::move(out));
    out.clear();
  }
  // Shutting down: the appends still queued never reached the database.
  std::deque<pending> left;
  {
    std::lock_guard lock(mutex);
    left.swap(queue);
  }
  for (auto& p : left)
    out.push_back({std::move(p.done), unavailable("postgres_event_store is shutting down; append not written"), {}});
  deliver(std::move(out));
  w.drop();
}

void postgres_event_store::impl::run_batch(writer_connection& w, std::vector<pending>& batch,
                                           std::vector<completion>& out) {
  std::vector<slot> slots(batch.size());
  for (std::size_t i = 0; i < batch.size(); ++i) slots[i].item = &batch[i];
  auto fail_open = [&](const std::exception_ptr& error) {
    for (auto& s : slots)
      if (!s.error) s.error = error;
  };

  bool reconnected = false;
  int retries = 0;
  for (;;) {
    for (auto& s : slots) s = slot{s.item, {}, nullptr, {}, false};
    if (!ensure_writer(w, false)) {
      fail_open(unavailable("postgres_event_store: PostgreSQL unavailable; reconnecting with backoff" +
                            (w.last_error.empty() ? std::string() : " (last attempt: " + w.last_error + ")")));
      break;
    }
    try {
      if (write_batch(w, slots)) batches.fetch_add(1, std::memory_order_relaxed);
      break;
    } catch (const connection_broken& e) {
      // Nothing was committed. The connection may just have gone stale (server restarted): retry once at once.
      w.drop();
      if (!reconnected) {
        reconnected = true;
        if (ensure_writer(w, true)) continue;
      }
      try {
        std::rethrow_exception(e.cause);
      } catch (...) {
        try {
          detail::rethrow_translated("postgres_event_store append");
        } catch (...) {
          fail_open(std::current_exception());
        }
      }
      break;
    } catch (const commit_in_doubt&) {
      w.drop();
      resolve_in_doubt(slots, w.backend_pid, w.backend_start);
      break;
    } catch (...) {
      std::exception_ptr error;
      bool retryable = false;
      try {
        detail::rethrow_translated("postgres_event_store append");
      } catch (const store_error& e) {
        retryable = e.retryable();
        error = std::current_exception();
      } catch (...) {
        error = std::current_exception();
      }
      if (retryable && ++retries <= 3) continue;  // serialization failure or deadlock: rolled back, try again
      const auto accepted = std::count_if(slots.begin(), slots.end(), [](const slot& s) { return s.accepted(); });
      if (accepted > 1) {
        // One request broke the statement: write each alone so only that one fails.
        for (auto& s : slots) {
          std::vector<pending> one;
          one.push_back(std::move(*s.item));
          std::vector<completion> single;
          run_batch(w, one, single);
          for (auto& c : single) out.push_back(std::move(c));
        }
        return;
      }
      fail_open(error);
      break;
    }
  }
  for (auto& s : slots) {
    if (s.error) {
      out.push_back({std::move(s.item->done), s.error, {}});
    } else {
      appends.fetch_add(1, std::memory_order_relaxed);
      events.fetch_add(s.sealed->size(), std::memory_order_relaxed);
      out.push_back({std::move(s.item->done), nullptr, s.result});
    }
  }
}

bool postgres_event_store::impl::write_batch(writer_connection& w, std::vector<slot>& slots) {
  pqxx::connection& conn = *w.conn;
  bool sent = false;  // the batch statement went out: from here on a lost connection leaves the outcome unknown
  try {
    // Sorted by saga id, so concurrent writers (other processes) take row locks in one order.
    std::vector<slot*> order;
    for (auto& s : slots) order.push_back(&s);
    std::sort(order.begin(), order.end(),
              [](const slot* a, const slot* b) { return a->item->request.saga < b->item->request.saga; });

    // 1. Each saga's head (last seq and hash): from what this store committed, else read without a lock (the
    //    conditional write below re-checks it, so a stale head only turns into a conflict).
    std::unordered_map<saga_id, head> heads;
    detail::pg_array unknown;
    {
      std::lock_guard lock(head_mutex);
      for (auto* s : order) {
        const auto& req = s->item->request;
        if (req.expected_seq == 0) continue;
        auto it = head_cache.find(req.saga);
        if (it != head_cache.end() && it->second.seq == req.expected_seq)
          heads.emplace(req.saga, it->second);
        else
          unknown.add(req.saga.to_string());
      }
    }
    if (!unknown.empty()) {
      pqxx::nontransaction tx(conn);
      for (const auto& r : tx.exec_prepared("saga_heads", unknown.str()))
        heads[detail::parse_saga_id(r[0].c_str())] = head{r[1].as<std::uint64_t>(), r[2].as<std::string>()};
    }

    // 2. Check each expected seq against its head and link the encoded events onto the chain.
    detail::pg_array n_id, n_type, n_def, n_status, n_seq, n_hash, n_part, n_started, n_updated, n_key;
    detail::pg_array u_id, u_expected, u_prev, u_seq, u_hash, u_status, u_at;
    detail::pg_array e_id, e_seq, e_type, e_ver, e_prev, e_hash;
    detail::json_array e_payload, e_meta;  // one JSON document each: PostgreSQL parses it once, nothing escaped
    bool any = false;
    for (auto* s : order) {
      const auto& req = s->item->request;
      std::string prev;
      if (req.expected_seq > 0) {
        auto it = heads.find(req.saga);
        const std::uint64_t actual = it == heads.end() ? 0 : it->second.seq;
        if (actual != req.expected_seq) {
          conflicts.fetch_add(1, std::memory_order_relaxed);
          {
            std::lock_guard lock(head_mutex);
            head_cache.erase(req.saga);
          }
          s->error = std::make_exception_ptr(concurrency_conflict(req.saga, req.expected_seq, actual));
          continue;
        }
        prev = it->second.hash;
      }
      const std::string id = req.saga.to_string();
      try {
        const char* status = detail::status_text(req.status_after);
        s->sealed = &s->item->sealed;  // re-linked in place: a retried batch links them again from its head
        std::string link = prev;
        for (auto& r : *s->sealed) {
          if (r.prev_hash != link) {
            r.prev_hash = link;
            r.hash = chain_hash(r.prev_hash, r.type, r.seq, r.payload, r.metadata);
          }
          link = r.hash;
        }
        if (req.expected_seq == 0) {
          const auto& started = std::get<events::saga_started>(req.events.front().body);
          s->is_new = true;
          n_id.add_plain(id);
          n_type.add(req.saga_type);
          n_def.add(static_cast<std::int64_t>(started.definition_version));
          n_status.add_plain(status);
          n_seq.add(static_cast<std::int64_t>(s->sealed->back().seq));
          n_hash.add_plain(s->sealed->back().hash);
          n_part.add(static_cast<std::int64_t>(req.partition));
          n_started.add(ms(req.events.front().at));
          n_updated.add(ms(req.events.back().at));
          if (started.idempotency_key.empty())
            n_key.add_null();
          else
            n_key.add(started.idempotency_key);
        } else {
          u_id.add_plain(id);
          u_expected.add(static_cast<std::int64_t>(req.expected_seq));
          u_prev.add_plain(prev);
          u_seq.add(static_cast<std::int64_t>(s->sealed->back().seq));
          u_hash.add_plain(s->sealed->back().hash);
          u_status.add_plain(status);
          u_at.add(ms(req.events.back().at));
        }
      } catch (...) {
        s->error = std::current_exception();
        s->sealed = nullptr;
        continue;
      }
      any = true;
      for (const auto& r : *s->sealed) {
        e_id.add_plain(id);
        e_seq.add(static_cast<std::int64_t>(r.seq));
        e_type.add(r.type);
        e_ver.add(static_cast<std::int64_t>(r.schema_version));
        e_payload.add(r.payload);
        e_meta.add(r.metadata);
        e_prev.add_plain(r.prev_hash);
        e_hash.add_plain(r.hash);
      }
    }
    if (!any) return false;

    // 3. The whole batch in one statement, run on its own: one transaction, one round trip, one WAL flush. A saga
    //    whose head moved meanwhile (or whose start hit an existing saga or key) is left out by the statement.
    sent = true;
    pqxx::result written;
    {
      pqxx::nontransaction tx(conn);
      written = tx.exec_prepared("saga_write", n_id.str(), n_type.str(), n_def.str(), n_status.str(), n_seq.str(),
                                 n_hash.str(), n_part.str(), n_started.str(), n_updated.str(), n_key.str(), u_id.str(),
                                 u_expected.str(), u_prev.str(), u_seq.str(), u_hash.str(), u_status.str(), u_at.str(),
                                 e_id.str(), e_seq.str(), e_type.str(), e_ver.str(), e_payload.str(), e_meta.str(),
                                 e_prev.str(), e_hash.str(), position_lock_key);
    }
    std::unordered_map<saga_id, std::uint64_t> last_position;
    for (const auto& r : written) last_position.emplace(detail::parse_saga_id(r[0].c_str()), r[1].as<std::uint64_t>());
    std::vector<slot*> refused;
    std::unique_lock heads_lock(head_mutex);
    if (head_cache.size() > max_cached_heads) head_cache.clear();
    for (auto* s : order) {
      if (!s->accepted()) continue;
      const auto& req = s->item->request;
      auto it = last_position.find(req.saga);
      if (it != last_position.end()) {
        s->result = append_result{s->sealed->back().seq, it->second};
        head_cache[req.saga] = head{s->sealed->back().seq, s->sealed->back().hash};
        continue;
      }
      head_cache.erase(req.saga);
      s->sealed = nullptr;
      s->error = unavailable("postgres_event_store: append to saga " + req.saga.to_string() + " was not written");
      refused.push_back(s);
    }
    heads_lock.unlock();

    // 4. Say why the left-out appends were refused (rare: another writer got there first). The batch has committed:
    //    a failure here must not reach the caller's handler, which would take the written appends for unwritten
    //    ones (retry, or write them again one by one and report conflicts); the refused keep their "not written".
    if (!refused.empty()) {
      try {
        pqxx::nontransaction tx(conn);
        for (auto* s : refused) {
          const auto& req = s->item->request;
          const auto existing =
              tx.exec_params("SELECT last_seq FROM saga_instances WHERE id = $1::uuid", req.saga.to_string());
          if (!existing.empty() || !s->is_new) {
            conflicts.fetch_add(1, std::memory_order_relaxed);
            const std::uint64_t actual = existing.empty() ? 0 : existing[0][0].as<std::uint64_t>();
            s->error = std::make_exception_ptr(concurrency_conflict(req.saga, req.expected_seq, actual));
            continue;
          }
          const auto& key = std::get<events::saga_started>(req.events.front().body).idempotency_key;
          const auto owner = tx.exec_params(
              "SELECT id::text FROM saga_instances WHERE type = $1 AND idempotency_key = $2", req.saga_type, key);
          if (!owner.empty())
            s->error = std::make_exception_ptr(
                duplicate_idempotency_key(req.saga_type, key, detail::parse_saga_id(owner[0][0].c_str())));
          else
            s->error = std::make_exception_ptr(store_error(
                "saga " + req.saga.to_string() + " could not be started (a concurrent start rolled back)", true));
        }
      } catch (...) {
        // The connection, if it broke, is replaced before the next batch (ensure_writer).
      }
    }
    return true;
  } catch (...) {
    if (detail::connection_lost(&conn)) {
      if (sent) throw commit_in_doubt{std::current_exception()};
      throw connection_broken{std::current_exception()};
    }
    throw;
  }
}

void postgres_event_store::impl::resolve_in_doubt(std::vector<slot>& slots, int backend_pid,
                                                  const std::string& backend_start) {
  in_doubt.fetch_add(1, std::memory_order_relaxed);
  detail::pg_array ids, seqs;
  bool any = false;
  for (auto& s : slots) {
    if (!s.accepted()) continue;
    any = true;
    ids.add(s.item->request.saga.to_string());
    seqs.add(static_cast<std::int64_t>(s.sealed->back().seq));
  }
  if (!any) return;
  const auto deadline = steady::now() + options.in_doubt_timeout;
  auto wait = options.reconnect_backoff_min;
  for (;;) {
    try {
      auto conn = detail::connect(url, "postgres_event_store: reading back an in-doubt commit");
      // The old server process may still be running the batch: PostgreSQL notices a lost client only when it next
      // talks to it, so a batch waiting for a lock (or for its COMMIT to be durable) goes on and may commit after a
      // read-back that found nothing. It is ended, and the read-back waits until it is gone: what it reads is final.
      if (backend_pid != 0) {
        const auto alive = [&](std::string_view sql) {
          pqxx::nontransaction q(*conn);
          return !q.exec_params(std::string(sql), backend_pid, backend_start).empty();
        };
        try {
          (void)alive(
              "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1 AND backend_start = "
              "$2::timestamptz");
        } catch (const pqxx::broken_connection&) {
          throw;
        } catch (const std::exception&) {  // not allowed to end it (another role): wait for it to end
        }
        while (alive("SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND backend_start = $2::timestamptz")) {
          if (steady::now() >= deadline || !wait_or_stop(std::chrono::milliseconds(10)))
            throw std::runtime_error("the server process of the lost connection is still running");
        }
      }
      pqxx::nontransaction tx(*conn);
      struct found {
        std::uint64_t seq;
        std::string hash;
        std::uint64_t position;
      };
      std::unordered_map<saga_id, found> rows;
      for (const auto& r : tx.exec_params(read_back_sql, ids.str(), seqs.str()))
        rows.emplace(detail::parse_saga_id(r[0].c_str()),
                     found{r[1].as<std::uint64_t>(), r[2].as<std::string>(), r[3].as<std::uint64_t>()});
      for (auto& s : slots) {
        if (!s.accepted()) continue;
        const auto& req = s.item->request;
        auto it = rows.find(req.saga);
        if (it == rows.end()) {
          s.error = unavailable("postgres_event_store: connection lost during COMMIT; read back: saga " +
                                req.saga.to_string() + " was not committed, retrying is safe");
        } else if (it->second.hash != s.sealed->back().hash) {
          conflicts.fetch_add(1, std::memory_order_relaxed);
          s.error = std::make_exception_ptr(concurrency_conflict(req.saga, req.expected_seq, it->second.seq));
        } else {
          s.result = append_result{it->second.seq, it->second.position};  // committed after all
        }
      }
      return;
    } catch (...) {
      if (steady::now() >= deadline || !wait_or_stop(wait)) break;
      wait = std::min(wait * 2, options.reconnect_backoff_max);
    }
  }
  for (auto& s : slots)
    if (s.accepted())
      s.error = unavailable(
          "postgres_event_store: connection lost during COMMIT and the outcome could not be read "
          "back; reload saga " +
          s.item->request.saga.to_string() + " before retrying");
}

void postgres_event_store::impl::deliver(std::vector<completion>&& out) {
  if (out.empty()) return;
  std::lock_guard lock(done_mutex);
  if (done_queue.empty()) {
    done_queue.swap(out);
  } else {
    for (auto& c : out) done_queue.push_back(std::move(c));
  }
  done_cv.notify_one();
}

void postgres_event_store::impl::completion_loop() {
  std::vector<completion> work;
  for (;;) {
    {
      std::unique_lock lock(done_mutex);
      done_cv.wait(lock, [&] { return done_stopping || !done_queue.empty(); });
      if (done_queue.empty()) return;
      work.swap(done_queue);
    }
    for (auto& c : work) {
      try {
        c.done(c.error, c.result);
      } catch (...) {  // a throwing callback must not take the store down
      }
    }
    work.clear();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Readers

template <class F>
auto postgres_event_store::impl::with_reader(std::string_view doing, F&& f) {
  for (int attempt = 0;; ++attempt) {
    std::unique_ptr<pqxx::connection> conn;
    {
      std::unique_lock lock(pool_mutex);
      pool_cv.wait(lock, [&] { return !idle.empty() || open < options.read_connections; });
      if (!idle.empty()) {
        conn = std::move(idle.back());
        idle.pop_back();
      } else {
        ++open;
      }
    }
    auto release = [&](bool keep) {
      std::lock_guard lock(pool_mutex);
      if (keep)
        idle.push_back(std::move(conn));
      else {
        conn.reset();
        --open;
      }
      pool_cv.notify_one();
    };
    try {
      if (!conn) conn = detail::connect(url, doing);
      auto result = [&] {
        pqxx::nontransaction tx(*conn);
        return f(tx);
      }();  // the transaction is gone before the connection goes back to the pool
      release(true);
      return result;
    } catch (...) {
      const bool lost = detail::connection_lost(conn.get());
      release(!lost);
      // A pooled connection may have gone stale (server restarted): one fresh attempt.
      if (lost && attempt == 0) continue;
      detail::rethrow_translated(doing);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------

postgres_event_store::postgres_event_store(std::string url, postgres_event_store_options options)
    : impl_(std::make_unique<impl>()) {
  impl_->url = std::move(url);
  impl_->options = options;
  if (impl_->options.max_batch_size == 0) impl_->options.max_batch_size = 1;
  if (impl_->options.read_connections == 0) impl_->options.read_connections = 1;
  if (impl_->options.load_many_chunk == 0) impl_->options.load_many_chunk = 1;
  if (impl_->options.reconnect_backoff_min.count() <= 0)
    impl_->options.reconnect_backoff_min = std::chrono::milliseconds(1);
  if (impl_->options.reconnect_backoff_max < impl_->options.reconnect_backoff_min)
    impl_->options.reconnect_backoff_max = impl_->options.reconnect_backoff_min;
  if (impl_->options.writer_connections == 0) impl_->options.writer_connections = 1;
  // Every writer connects here, so a wrong URL fails the constructor rather than the first appends.
  std::vector<writer_connection> writers(impl_->options.writer_connections);
  for (auto& w : writers)
    if (!impl_->ensure_writer(w, true)) throw store_unavailable(w.last_error);
  impl_->completion_thread = std::thread([this] { impl_->completion_loop(); });
  impl_->latest_batch.assign(writers.size(), 0);
  for (std::size_t i = 0; i < writers.size(); ++i)
    impl_->writer_threads.emplace_back([this, i, w = std::move(writers[i])]() mutable { impl_->writer_loop(w, i); });
}

postgres_event_store::~postgres_event_store() {
  try {
    {
      std::lock_guard lock(impl_->mutex);
      impl_->stopping = true;
    }
    impl_->queue_cv.notify_all();
    for (auto& t : impl_->writer_threads)
      if (t.joinable()) t.join();
    {
      std::lock_guard lock(impl_->done_mutex);
      impl_->done_stopping = true;
    }
    impl_->done_cv.notify_all();
    if (impl_->completion_thread.joinable()) impl_->completion_thread.join();
  } catch (...) {  // join cannot fail for a joinable thread of ours; never throw from a destructor
  }
}

void postgres_event_store::async_append(append_request request, append_callback done) {
  std::unique_lock lock(impl_->mutex);
  if (impl_->stopping) {
    lock.unlock();
    impl_->deliver({completion{std::move(done), unavailable("postgres_event_store is shutting down"), {}}});
    return;
  }
  lock.unlock();
  // Encode and hash on the caller's thread, chained from the head this store committed last (the writer re-links
  // the chain only when the head it finds differs, e.g. after another process appended).
  std::vector<recorded_event> sealed;
  try {
    if (request.saga.is_nil()) throw store_error("append to the nil saga id");
    (void)detail::status_text(request.status_after);
    std::string prev;
    if (request.expected_seq > 0) {
      std::lock_guard heads_lock(impl_->head_mutex);
      auto it = impl_->head_cache.find(request.saga);
      if (it != impl_->head_cache.end() && it->second.seq == request.expected_seq) prev = it->second.hash;
    }
    sealed = seal(request, std::move(prev));
    const auto refuse = [&](const std::string& what, const std::string& why) {
      throw store_error("postgres_event_store: append to saga " + request.saga.to_string() + " refused: " + what +
                        " contains " + why);
    };
    if (auto why = unstorable_text(request.saga_type, false); !why.empty()) refuse("the saga type", why);
    for (const auto& e : sealed) {
      const std::string which = "event " + std::to_string(e.seq) + " (" + e.type + ")";
      if (auto why = unstorable_text(e.payload, true); !why.empty()) refuse("the payload of " + which, why);
      if (auto why = unstorable_text(e.metadata, true); !why.empty()) refuse("the metadata of " + which, why);
    }
  } catch (...) {
    impl_->deliver({completion{std::move(done), std::current_exception(), {}}});
    return;
  }
  lock.lock();
  if (impl_->stopping) {
    lock.unlock();
    impl_->deliver({completion{std::move(done), unavailable("postgres_event_store is shutting down"), {}}});
    return;
  }
  // Wake a writer for the first append it can take (an idle writer sleeps while every queued append's saga is in a
  // batch being written) and when a batch's worth has queued.
  const bool ready = !impl_->in_flight.contains(request.saga);
  const bool first_ready = ready && std::none_of(impl_->queue.begin(), impl_->queue.end(), [&](const pending& p) {
                             return !impl_->in_flight.contains(p.request.saga);
                           });
  impl_->queue.push_back(pending{std::move(request), std::move(done), std::move(sealed)});
  const std::size_t size = impl_->queue.size();
  const std::size_t want = std::min(impl_->target, impl_->options.max_batch_size);
  lock.unlock();
  if (first_ready || size >= want) impl_->queue_cv.notify_one();
}

std::vector<recorded_event> postgres_event_store::load(const saga_id& saga) {
  return impl_->with_reader("postgres_event_store load", [&](pqxx::transaction_base& tx) {
    std::vector<recorded_event> out;
    for (const auto& r :
         tx.exec_params(std::string(event_columns) + "WHERE saga_id = $1::uuid ORDER BY seq", saga.to_string()))
      out.push_back(event_from(r));
    return out;
  });
}

std::vector<saga_log> postgres_event_store::load_many(std::span<const saga_id> sagas) {
  // Each id is read once: one asked for twice in two chunks had its events added twice (a log of 1,2,3,1,2,3).
  std::vector<saga_id> distinct;
  distinct.reserve(sagas.size());
  {
    std::unordered_set<saga_id> seen;
    for (const auto& id : sagas)
      if (seen.insert(id).second) distinct.push_back(id);
  }
  std::unordered_map<saga_id, std::vector<recorded_event>> found;
  for (std::size_t from = 0; from < distinct.size(); from += impl_->options.load_many_chunk) {
    const auto chunk = std::span<const saga_id>(distinct).subspan(
        from, std::min(impl_->options.load_many_chunk, distinct.size() - from));
    detail::pg_array ids;
    for (const auto& id : chunk) ids.add(id.to_string());
    auto rows = impl_->with_reader("postgres_event_store load_many", [&](pqxx::transaction_base& tx) {
      std::vector<recorded_event> out;
      for (const auto& r : tx.exec_params(
               std::string(event_columns) + "WHERE saga_id = ANY($1::uuid[]) ORDER BY saga_id, seq", ids.str()))
        out.push_back(event_from(r));
      return out;
    });
    for (auto& e : rows) {
      const saga_id id = e.saga;
      found[id].push_back(std::move(e));
    }
  }
  std::vector<saga_log> out;
  out.reserve(sagas.size());
  std::unordered_map<saga_id, std::size_t> given;  // where each id's log went (an id asked for twice gets a copy)
  for (const auto& id : sagas) {
    if (auto g = given.find(id); g != given.end()) {
      auto copy = out[g->second].second;
      out.emplace_back(id, std::move(copy));
      continue;
    }
    given.emplace(id, out.size());
    auto it = found.find(id);
    out.emplace_back(id, it == found.end() ? std::vector<recorded_event>{} : std::move(it->second));
  }
  return out;
}

std::vector<recorded_event> postgres_event_store::read_all(std::uint64_t from_position, std::size_t limit) {
  const auto max = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max());
  const auto lim = static_cast<std::int64_t>(std::min(limit, max));
  const auto from = static_cast<std::int64_t>(std::min<std::uint64_t>(from_position, max));
  return impl_->with_reader("postgres_event_store read_all", [&](pqxx::transaction_base& tx) {
    std::vector<recorded_event> out;
    for (const auto& r :
         tx.exec_params(std::string(event_columns) + "WHERE position >= $1 ORDER BY position LIMIT $2", from, lim))
      out.push_back(event_from(r));
    return out;
  });
}

std::vector<saga_summary> postgres_event_store::list_unfinished(const partition_filter& filter) {
  detail::pg_array parts;
  for (auto p : filter.partitions) parts.add(static_cast<std::int64_t>(p));
  const bool all = filter.partitions.empty();
  return impl_->with_reader("postgres_event_store list_unfinished", [&](pqxx::transaction_base& tx) {
    std::vector<saga_summary> out;
    for (const auto& r : tx.exec_params(std::string(summary_columns) +
                                            "WHERE status IN ('running', 'compensating', 'stuck')"
                                            " AND ($1 OR partition = ANY($2::integer[]))"
                                            " AND ($3::text = '' OR type = $3::text) ORDER BY started_at, id",
                                        all, parts.str(), filter.type))
      out.push_back(summary_from(r));
    return out;
  });
}

std::optional<saga_summary> postgres_event_store::find(const saga_id& saga) {
  return impl_->with_reader("postgres_event_store find", [&](pqxx::transaction_base& tx) {
    std::optional<saga_summary> out;
    const auto rows = tx.exec_params(std::string(summary_columns) + "WHERE id = $1::uuid", saga.to_string());
    if (!rows.empty()) out = summary_from(rows[0]);
    return out;
  });
}

std::optional<saga_id> postgres_event_store::find_by_idempotency_key(const std::string& type, const std::string& key) {
  return impl_->with_reader("postgres_event_store find_by_idempotency_key", [&](pqxx::transaction_base& tx) {
    std::optional<saga_id> out;
    const auto rows =
        tx.exec_params("SELECT id::text FROM saga_instances WHERE type = $1 AND idempotency_key = $2", type, key);
    if (!rows.empty()) out = detail::parse_saga_id(rows[0][0].c_str());
    return out;
  });
}

std::vector<saga_summary> postgres_event_store::list(const saga_query& query) {
  const auto max = static_cast<std::size_t>(std::numeric_limits<std::int64_t>::max());
  const auto limit = static_cast<std::int64_t>(std::min(query.limit, max));
  const std::string status = query.status ? detail::status_text(*query.status) : "";
  const std::int64_t from = query.started_from ? ms(*query.started_from) : 0;
  const std::int64_t to = query.started_to ? ms(*query.started_to) : 0;
  return impl_->with_reader("postgres_event_store list", [&](pqxx::transaction_base& tx) {
    std::vector<saga_summary> out;
    for (const auto& r : tx.exec_params(
             std::string(summary_columns) + "WHERE ($1 = '' OR type = $1) AND ($2 = '' OR status = $2)"
                                            " AND (NOT $3 OR started_at >= to_timestamp($4 / 1000.0))"
                                            " AND (NOT $5 OR started_at <= to_timestamp($6 / 1000.0))"
                                            " ORDER BY started_at, id LIMIT $7",
             query.type, status, query.started_from.has_value(), from, query.started_to.has_value(), to, limit))
      out.push_back(summary_from(r));
    return out;
  });
}

std::vector<std::pair<saga_status, std::uint64_t>> postgres_event_store::count_by_status(const std::string& type) {
  return impl_->with_reader("postgres_event_store count_by_status", [&](pqxx::transaction_base& tx) {
    std::vector<std::pair<saga_status, std::uint64_t>> out;
    for (const auto& r : tx.exec_params(
             "SELECT status, count(*) FROM saga_instances WHERE ($1 = '' OR type = $1) GROUP BY status", type))
      out.emplace_back(detail::parse_status(r[0].c_str()), r[1].as<std::uint64_t>());
    std::sort(out.begin(), out.end());
    return out;
  });
}

std::int32_t postgres_event_store::reply_partition_count(const std::string& type, std::int32_t current) {
  check_partition_count(type, current);
  if (auto why = unstorable_text(type, false); !why.empty())
    throw store_error("postgres_event_store reply_partition_count: the saga type contains " + why);
  // One upsert that always returns the row it locked: ON CONFLICT reads the latest committed version (another
  // process may have changed it after this statement's snapshot), and keeps its count while any saga of the type is
  // unfinished.
  return impl_->with_reader("postgres_event_store reply_partition_count", [&](pqxx::transaction_base& tx) {
    const auto rows = tx.exec_params1(
        "WITH held AS (SELECT EXISTS (SELECT 1 FROM saga_instances"
        " WHERE type = $1 AND status IN ('running', 'compensating', 'stuck')) AS unfinished) "
        "INSERT INTO saga_reply_partition_counts AS c (type, partitions) VALUES ($1, $2) "
        "ON CONFLICT (type) DO UPDATE SET"
        " partitions = CASE WHEN (SELECT unfinished FROM held) THEN c.partitions ELSE EXCLUDED.partitions END,"
        " recorded_at = CASE WHEN c.partitions = EXCLUDED.partitions OR (SELECT unfinished FROM held)"
        " THEN c.recorded_at ELSE now() END "
        "RETURNING partitions",
        type, current);
    return rows[0].as<std::int32_t>();
  });
}

std::vector<partition_placement> postgres_event_store::partition_placements(const std::string& type) {
  return impl_->with_reader("postgres_event_store partition_placements", [&](pqxx::transaction_base& tx) {
    std::vector<partition_placement> out;
    for (const auto& r : tx.exec_params(
             "WITH u AS (SELECT type, count(*) AS unfinished, max(partition) AS highest FROM saga_instances"
             " WHERE status IN ('running', 'compensating', 'stuck') AND ($1 = '' OR type = $1) GROUP BY type) "
             "SELECT coalesce(c.type, u.type), c.partitions, (extract(epoch FROM c.recorded_at) * 1000)::bigint,"
             " coalesce(u.unfinished, 0), u.highest "
             "FROM (SELECT * FROM saga_reply_partition_counts WHERE $1 = '' OR type = $1) c"
             " FULL JOIN u ON u.type = c.type ORDER BY 1",
             type)) {
      partition_placement p;
      p.type = r[0].as<std::string>();
      if (!r[1].is_null()) {
        p.recorded = r[1].as<std::int32_t>();
        p.recorded_at = time_point(std::chrono::milliseconds(r[2].as<std::int64_t>()));
      }
      p.unfinished = r[3].as<std::uint64_t>();
      if (!r[4].is_null()) p.highest_partition = r[4].as<std::int32_t>();
      out.push_back(std::move(p));
    }
    return out;
  });
}

postgres_event_store_stats postgres_event_store::stats() const {
  return {impl_->batches.load(), impl_->appends.load(), impl_->events.load(), impl_->conflicts.load(),
          impl_->in_doubt.load()};
}

}  // namespace saga::storage
