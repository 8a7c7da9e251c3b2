#include "saga/runtime/orchestrator.hpp"

#include "saga/effects.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <semaphore>
#include <set>
#include <span>
#include <thread>
#include <unordered_map>
#include <utility>

namespace saga::runtime {

namespace asio = boost::asio;
using steady = std::chrono::steady_clock;

struct entry;

namespace {
using done_fn = std::function<void(const decision&, std::exception_ptr)>;

// A saga's log read in bulk by recovery, valid only for the entry it was read for and only while that entry's
// state has not changed since (see entry::state_changes).
struct preloaded_log {
  std::weak_ptr<entry> read_for;
  std::uint64_t state_changes = 0;
  std::vector<storage::recorded_event> events;
  std::optional<saga_state> state;  // already folded (read ahead at run()); then `events` is empty
};

// A saga's state folded by the read-ahead at run(), with the seq of the last event it folded.
struct prefetched_state {
  std::uint64_t last_seq = 0;
  saga_state state;
};

// One trigger waiting for its saga, or a request to rebuild the saga and resume it.
struct job {
  bool recover = false;
  trigger what;
  std::string type;  // the saga type: a start's (which uses it) or a reply's; either sets entry::type
  done_fn done;
  bool reloaded = false;                 // already decided once more on a state fresh from the store
  std::shared_ptr<preloaded_log> log{};  // recovery: the log read before the job was queued (else load it)
  bool new_saga = false;  // start() of an id it drew just now: no log to read (a collision fails the append)
  bool awaited = false;   // a caller blocks on `done` (start, cancel, act): at shutdown it gets shut_down
  // A reply or timer: the entry's generation when it was queued. Void when the saga was dropped since (its
  // partition went to another process, or this process lost it the concurrency check): the owner advances it.
  std::optional<std::uint64_t> generation{};
  // A start whose append failed with a retryable error: it may have committed all the same (a connection lost
  // during COMMIT). Its retry finds the saga started under the id it drew: that is this start, durable.
  bool start_in_doubt = false;
  // Any other trigger whose append failed so: the decision it appended, and the entry's generation then. When the log
  // read for its retry ends in exactly that decision's state, the append committed: the trigger is not decided
  // again, and what it did (a saga it ended, say) is done and counted here, unless the saga was dropped meanwhile
  // (see load()). load() keeps it only then.
  struct in_doubt_append {
    decision d;
    std::uint64_t generation = 0;
  };
  std::unique_ptr<in_doubt_append> in_doubt{};
  bool orphan = false;  // recovery asked for by the orphan sweep: nothing to do when the saga is held here
  // A timer: when it came due. It is decided at no earlier time, even when the wall clock stepped back after it
  // fired (decide ignores a deadline not yet due, and the timer would not fire again).
  time_point due{};
};

double ms_since(steady::time_point t0) { return std::chrono::duration<double, std::milli>(steady::now() - t0).count(); }
}  // namespace

// The actor of one saga: its cached state and its queue, touched only on its strand.
struct entry {
  entry(asio::io_context& io, saga_id i) : strand(asio::make_strand(io)), id(i) {}
  asio::strand<asio::io_context::executor_type> strand;
  saga_id id;
  std::optional<saga_state> state;
  // Bumped whenever `state` is set or cleared and whenever an append of this saga completes (on the strand; read by
  // recovery before it reads logs in bulk): a log read after the count was taken, and used while the count is
  // unchanged, is no older than what this process wrote to or knew of the saga.
  std::atomic<std::uint64_t> state_changes{0};
  std::deque<job> queue;
  bool busy = false;
  bool reloaded_after_error = false;
  // Set by retry_later: the seq and generation of the state it cleared. A read for the retry that finds the log at
  // that seq, in that generation, finds nothing new (the append that failed did not commit, and nobody else
  // appended): the retry resends nothing, as the job would have resent nothing had its append succeeded.
  std::optional<std::pair<std::uint64_t, std::uint64_t>> held_before_retry;
  // Awaiting callers (guarded by promise_mutex: created from any thread).
  std::mutex promise_mutex;
  std::shared_ptr<std::promise<saga_outcome>> promise;
  std::shared_future<saga_outcome> future;
  bool fulfilled = false;
  bool asked = false;    // outcome() handed out the future: a start that fails does not let the promise go
  bool counted = false;  // holds one of the in-flight slots of this process
  steady::time_point started{};
  // Bumped when the saga is dropped (its partition went to another process): timers armed before are void.
  std::uint64_t generation = 0;
  // The generation in which recovery's effects were performed for the state held here (by a recovery job, or by an
  // append that completed after the saga was dropped and its partition came back). A later recovery job of the same
  // generation that finds nothing newer in the log resends nothing: this process has advanced the saga since.
  std::optional<std::uint64_t> recovered_in;
  // The saga's type, once known here: from the first start or reply queued for it, or a state of it cleared (for a
  // retry, a reload, a drop). revoke() and fence() match an entry without a state by it.
  std::string type;
  bool watched = false;  // in impl::watched (guarded by impl::watch_mutex)
  // poll_watched said that this saga's log cannot be folded here (it says so once).
  std::atomic<bool> watch_unreadable_said{false};
};

// Clears e's cached state (the next job reads the log), keeping its type (entry::type).
void clear_state(entry& e) {
  if (e.state && !e.state->type.empty()) e.type = e.state->type;  // empty: a start's, before it was appended
  e.state.reset();
  ++e.state_changes;
}

struct orchestrator::impl : std::enable_shared_from_this<orchestrator::impl> {
  impl(storage::event_store& s, transport::transport& b, orchestrator_options o)
      : store(s), bus(b), options(std::move(o)), slots(static_cast<std::ptrdiff_t>(options.max_in_flight)) {
    if (!options.clock) options.clock = std::make_shared<system_clock>();
    if (!options.reply_to) options.reply_to = [](const std::string& type) { return type; };
    if (!options.entropy) {
      auto gen = std::make_shared<std::mt19937_64>(std::random_device{}());
      auto m = std::make_shared<std::mutex>();
      options.entropy = [gen, m] {
        std::lock_guard lock(*m);
        return (*gen)();
      };
    }
    if (options.threads == 0) options.threads = 1;
    // A longer sweep interval would overflow the clock's arithmetic (a negative one means never, like 0).
    options.orphan_sweep = std::clamp(options.orphan_sweep, duration::zero(), duration(std::chrono::hours(24 * 365)));
  }

  storage::event_store& store;
  transport::transport& bus;
  orchestrator_options options;
  runtime::metrics stats;
  std::counting_semaphore<> slots;

  std::map<std::string, std::map<std::uint32_t, definition>> definitions;  // type -> version -> definition
  asio::io_context io;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::vector<std::thread> threads;
  std::atomic<bool> accepting{false};
  std::atomic<int> appends_in_flight{0};
  std::atomic<bool> stopped{false};
  std::atomic<bool> draining{false};  // shut down: queued jobs are let go, nothing more is decided or appended
  // Set by shutdown() once nothing runs the io_context any more: a store callback then handles its append's result
  // on its own thread, one at a time under late_mutex (which shutdown's last drain holds too).
  std::mutex late_mutex;
  bool drained = false;
  // Store retries waiting for their backoff (shutdown cancels them, so that their jobs are let go too).
  std::mutex retry_mutex;
  std::set<std::shared_ptr<asio::steady_timer>> retry_timers;

  mutable std::mutex entries_mutex;
  std::unordered_map<saga_id, std::shared_ptr<entry>> entries;

  // The read-ahead of recovery (a transport that partitions): at run(), while the consumer group is still handing
  // out partitions, every unfinished saga's log is read and folded; the first recovery takes the states that are
  // still current (same last seq as the listing it makes after the assignment), then the rest is dropped. One that
  // has not finished by then is abandoned.
  std::mutex prefetch_mutex;
  bool prefetch_abandoned = false;  // recovery came first: the read-ahead's result is not wanted any more
  std::unordered_map<saga_id, prefetched_state> prefetched;
  std::thread prefetch_thread;

  // The orphan sweep (see orchestrator_options::orphan_sweep): the clock marks it due, and a thread of its own lists
  // the unfinished sagas of the owned partitions (a store read that may wait, kept off the io threads and the clock).
  std::mutex sweep_mutex;
  std::condition_variable sweep_cv;
  bool sweep_due = false;
  bool sweep_stop = false;
  std::thread sweep_thread;

  // Awaited sagas another process advances (see orchestrator_options::elsewhere_poll), read from the store by one
  // timer while any is left.
  std::mutex watch_mutex;
  std::deque<std::shared_ptr<entry>> watched;
  std::shared_ptr<asio::steady_timer> watch_timer;  // set while armed

  // Reply partitions this process was assigned, by saga type (used only on a transport that partitions).
  std::mutex owned_mutex;
  std::map<std::string, std::set<std::int32_t>> owned;

  // Whether this process owns the reply partition of saga `id` of `type`; always on a transport that does not
  // partition. A process that lost it is a zombie for that saga: the new owner recovered it from the log.
  bool owns(const std::string& type, const saga_id& id) {
    const auto partition = bus.reply_partition(type, id);
    if (!partition) return true;
    std::lock_guard lock(owned_mutex);
    auto it = owned.find(type);
    return it != owned.end() && it->second.count(*partition) > 0;
  }

  // Reply partition counts found to match the store's record, and the types refused because they did not (with why),
  // by saga type (used only on a transport that partitions).
  std::mutex placement_mutex;
  std::map<std::string, std::int32_t> placed_over;
  std::map<std::string, std::string> fenced;
  std::atomic<bool> any_fenced{false};  // whether `fenced` has an entry (read on every reply without the lock)

  // Why sagas of `type` cannot run here: its reply topic's `count` of partitions differs from the one its unfinished
  // sagas were placed over (recorded in the store; asked only when `count` is not the one checked last). Empty when
  // it matches. Throws what the store throws.
  std::string misplaced(const std::string& type, std::int32_t count) {
    {
      std::lock_guard lock(placement_mutex);
      if (auto it = placed_over.find(type); it != placed_over.end() && it->second == count) return {};
    }
    const std::int32_t recorded = store.reply_partition_count(type, count);
    if (recorded == count) {
      std::lock_guard lock(placement_mutex);
      placed_over[type] = count;
      return {};
    }
    return "saga type '" + type + "': its reply topic has " + std::to_string(count) +
           " partitions, but its unfinished sagas were placed over " + std::to_string(recorded) +
           " (the store's saga_reply_partition_counts); Kafka maps a saga's key to a partition by the count, so their "
           "stored partitions no longer name the process that owns them. Give the reply topic " +
           std::to_string(recorded) +
           " partitions again (recreate it: replies lost with it come again when the commands are re-sent on "
           "timeout, answered from the participants' inboxes), or finish those sagas before changing the count";
  }

  // The reason sagas of `type` are refused here, if they are, after checking the transport's current partition
  // count once more when it differs from the one checked last (the transport re-reads it when the group changes;
  // a process owning none of the reply topic's partitions hears of that only here, at its next start). Fences the
  // type when the count changed under unfinished sagas, or when the store cannot tell whether it did.
  std::optional<std::string> recheck(const std::string& type) {
    if (auto why = fenced_why(type)) return why;
    const auto count = bus.reply_partitions(type);
    if (!count) return std::nullopt;
    std::string why;
    try {
      why = misplaced(type, *count);
    } catch (const std::exception& x) {
      why = "saga type '" + type + "': its reply topic now has " + std::to_string(*count) +
            " partitions, and the store could not say whether unfinished sagas of the type were placed over another "
            "count (" +
            x.what() + "); restart the process to check again";
    }
    if (why.empty()) return std::nullopt;
    fence(type, why);
    return fenced_why(type);
  }

  // The reason sagas of `type` are refused here, if they are.
  std::optional<std::string> fenced_why(const std::string& type) {
    if (!any_fenced.load(std::memory_order_acquire)) return std::nullopt;
    std::lock_guard lock(placement_mutex);
    if (auto it = fenced.find(type); it != fenced.end()) return it->second;
    return std::nullopt;
  }

  // Refuses sagas of `type` from now on (misplaced): forgets its partitions and drops its cached sagas, whose timers
  // are void with them. Their replies are dropped as they come (consumed, so that they hold up no other type):
  // whoever recovers a saga with the recorded count resends its pending commands, and the participants answer those
  // from their inboxes.
  void fence(const std::string& type, const std::string& why) {
    {
      std::lock_guard lock(placement_mutex);
      if (!fenced.emplace(type, why).second) return;
      any_fenced.store(true, std::memory_order_release);
    }
    ++stats.partition_count_mismatches;
    log(why);
    {
      std::lock_guard lock(owned_mutex);
      owned.erase(type);
      stats.reply_partitions_owned = count_owned();
    }
    std::vector<std::shared_ptr<entry>> all;
    {
      std::lock_guard lock(entries_mutex);
      for (const auto& [id, e] : entries) all.push_back(e);
    }
    for (auto& e : all)
      on_strand(e, [type](impl& self, const std::shared_ptr<entry>& x) {
        if ((x->state ? x->state->type : x->type) == type)  // also one waiting out a store retry
          self.drop(x, "the partition count of its type's reply topic changed under it");
      });
  }

  // A new saga's id. On a transport that partitions, drawn again until its reply partition is one this process owns,
  // when it owns any of the type's: the saga's replies then come here, so this process advances it and completes its
  // handle. Placed on another process's partition it would be advanced there, and the handle here (and the in-flight
  // slot it holds) would wait until that partition came to this process. A process that owns none of them (it only
  // starts sagas, or its first assignment has not come yet) places the saga on whichever partition its id gives.
  // Returns the id and whether this process owns its partition.
  std::pair<saga_id, bool> new_id(const std::string& type) {
    const auto draw = [this] {
      const std::uint64_t hi = options.entropy();
      return saga_id::from_words(hi, options.entropy());
    };
    saga_id id = draw();
    if (!bus.partitions_replies()) return {id, true};
    {
      std::lock_guard lock(owned_mutex);
      auto it = owned.find(type);
      if (it == owned.end() || it->second.empty()) return {id, false};
    }
    // A draw lands on an owned partition with odds of at least 1 / count: after 64 * count draws, all missed with
    // odds below e^-64 (an injected entropy that repeats itself keeps its id).
    const auto count = static_cast<std::size_t>(std::max<std::int32_t>(1, bus.reply_partitions(type).value_or(1)));
    for (std::size_t tries = 64 * count; tries > 0; --tries, id = draw())
      if (owns(type, id)) return {id, true};
    return {id, false};
  }

  // Reads the end of an awaited saga that another process advances from the store (see elsewhere_poll).
  void watch(const std::shared_ptr<entry>& e) {
    std::lock_guard lock(watch_mutex);
    if (std::exchange(e->watched, true)) return;
    watched.push_back(e);
    arm_watch();
  }

  // watch_mutex held.
  void arm_watch() {
    if (watch_timer || watched.empty() || stopped) return;
    watch_timer = std::make_shared<asio::steady_timer>(io, options.elsewhere_poll);
    watch_timer->async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
      if (ec) return;  // cancelled by shutdown
      if (auto self = weak.lock()) self->poll_watched();
    });
  }

  // On an io thread: reads the logs of the longest-watched sagas (up to elsewhere_poll_batch; the rest wait for
  // the next rounds); those that ended are settled on their strands. One that nobody awaits any more is let go; one
  // that has not ended is read again later (a saga held here again ends here too, and is then let go).
  void poll_watched() {
    std::vector<std::shared_ptr<entry>> batch;
    {
      std::lock_guard lock(watch_mutex);
      while (!watched.empty() && batch.size() < std::max<std::size_t>(1, options.elsewhere_poll_batch)) {
        batch.push_back(std::move(watched.front()));
        watched.pop_front();
        batch.back()->watched = false;
      }
    }
    std::vector<saga_id> ids;
    for (const auto& e : batch) ids.push_back(e->id);
    std::vector<storage::saga_log> logs;
    try {
      logs = store.load_many(ids);
    } catch (const std::exception& x) {
      log(std::string("reading the sagas other processes advance failed (read again later): ") + x.what());
    }
    std::vector<std::shared_ptr<entry>> again;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      auto& e = batch[i];
      if (!someone_awaits(*e)) continue;  // nobody awaits it any more
      if (i >= logs.size()) {
        again.push_back(std::move(e));
        continue;
      }
      saga_state st;
      try {
        st = storage::fold_recorded(e->id, logs[i].second);
      } catch (const std::exception& x) {
        // Another process wrote an event this build cannot read (a newer release during a rolling upgrade) or the
        // log is damaged: said once, and read again later. Thrown on this io thread, it ended the process.
        if (!e->watch_unreadable_said.exchange(true))
          log("saga " + e->id.to_string() + ", which another process advances, cannot be folded here (read again" +
              " every elsewhere_poll until it ends): " + x.what());
        again.push_back(std::move(e));
        continue;
      }
      if (!is_terminal(st.status) && st.status != saga_status::stuck) {
        again.push_back(std::move(e));
        continue;
      }
      on_strand(e, [st = std::move(st)](impl& self, const std::shared_ptr<entry>& x) {
        if (x->state && self.owns(x->state->type, x->id)) return;  // held here again: its own end settles it
        self.settle_if_ended(x, st);
        if (x->state)  // what this process cached when it started the saga: stale, and its timers with it
          self.drop(x, "another process ended it");
        else
          self.forget_if_idle(x, false);
      });
    }
    std::lock_guard lock(watch_mutex);
    watch_timer.reset();
    for (auto& e : again)
      if (!std::exchange(e->watched, true)) watched.push_back(std::move(e));
    arm_watch();
  }

  // On e's strand: erases an entry that holds nothing (no state, no work, and, unless `unknown_saga`, nobody
  // awaiting it), so that one made only to answer outcome() does not stay in memory for good.
  void forget_if_idle(const std::shared_ptr<entry>& e, bool unknown_saga) {
    if (e->state || e->busy || !e->queue.empty()) return;
    // Asked under the map's lock, which outcome() holds while it finds the entry and makes its promise: else a
    // caller could await an entry erased just after it was found, which the saga's end never reaches.
    std::lock_guard lock(entries_mutex);
    if (!unknown_saga && someone_awaits(*e)) return;
    if (auto it = entries.find(e->id); it != entries.end() && it->second == e) entries.erase(it);
  }

  // Partitions in `owned` (owned_mutex held).
  std::uint64_t count_owned() const {
    std::uint64_t n = 0;
    for (const auto& [type, partitions] : owned) n += partitions.size();
    return n;
  }

  // On e's strand: forgets the cached state and voids its timers, so this process neither re-sends nor times out
  // a saga another process now advances. An entry someone awaits stays (without state) so that its outcome can
  // still be delivered if the saga comes back to this process.
  void drop(const std::shared_ptr<entry>& e, const std::string& why) {
    ++stats.sagas_dropped;
    ++e->generation;
    clear_state(*e);
    e->reloaded_after_error = false;
    e->held_before_retry.reset();
    log("dropped saga " + e->id.to_string() + ": " + why);
    if (someone_awaits(*e))
      watch(e);  // its end comes from the store, unless the saga comes back here first
    else
      forget_if_idle(e, false);
  }

  // Whether a caller awaits the saga's outcome (or its start holds an in-flight slot).
  static bool someone_awaits(entry& e) {
    std::lock_guard lock(e.promise_mutex);
    return e.counted || (e.promise && !e.fulfilled);
  }

  // The transport took `revoked` away: drop the cached sagas of those partitions (and their timers).
  void revoke(const std::vector<transport::topic_partition>& revoked) {
    std::map<std::string, std::set<std::int32_t>> gone;
    {
      std::lock_guard lock(owned_mutex);
      for (const auto& tp : revoked) {
        if (!latest(tp.name)) continue;
        owned[tp.name].erase(tp.partition);
        gone[tp.name].insert(tp.partition);
      }
      stats.reply_partitions_owned = count_owned();
    }
    if (gone.empty()) return;
    std::vector<std::shared_ptr<entry>> all;
    {
      std::lock_guard lock(entries_mutex);
      for (const auto& [id, e] : entries) all.push_back(e);
    }
    for (auto& e : all)
      on_strand(e, [gone](impl& self, const std::shared_ptr<entry>& x) {
        // An entry without a state (waiting out a store retry, say) is matched by its type (entry::type); one whose
        // type is not known here (a recovery that has not read the saga yet), by every type revoked.
        const std::string& held = x->state ? x->state->type : x->type;
        for (const auto& [type, partitions] : gone) {
          if (!held.empty() && held != type) continue;
          const auto p = self.bus.reply_partition(type, x->id);
          if (p && partitions.count(*p)) return self.drop(x, "its reply partition was revoked");
        }
      });
  }

  void log(const std::string& line) const {
    if (options.log) options.log(line);
  }

  const definition* latest(const std::string& type) const {
    auto it = definitions.find(type);
    return it == definitions.end() || it->second.empty() ? nullptr : &it->second.rbegin()->second;
  }
  const definition* exact(const std::string& type, std::uint32_t version) const {
    auto it = definitions.find(type);
    if (it == definitions.end()) return nullptr;
    auto v = it->second.find(version);
    return v == it->second.end() ? nullptr : &v->second;
  }

  bool is_current(const std::shared_ptr<entry>& e) {
    std::lock_guard lock(entries_mutex);
    auto it = entries.find(e->id);
    return it != entries.end() && it->second == e;
  }

  std::shared_ptr<entry> get(const saga_id& id) {
    std::lock_guard lock(entries_mutex);
    return get_locked(id);
  }
  std::shared_ptr<entry> get_locked(const saga_id& id) {
    auto& e = entries[id];
    if (!e) e = std::make_shared<entry>(io, id);
    return e;
  }

  // The saga's entry and the future of its outcome, made under the map's lock (see forget_if_idle).
  std::pair<std::shared_ptr<entry>, std::shared_future<saga_outcome>> awaited(const saga_id& id) {
    std::lock_guard lock(entries_mutex);
    auto e = get_locked(id);
    return {e, future_of(e)};
  }

  // What a store callback holds: its members go in reverse order, so the entry (whose strand belongs to the
  // io_context) goes before the orchestrator that owns the io_context.
  struct holder {
    std::shared_ptr<impl> self;
    std::shared_ptr<entry> e;
  };

  // Runs f(*this, e) on the saga's strand. Queued work holds the orchestrator weakly: what is still queued when it
  // is destroyed goes with its io_context instead of keeping the two alive (a cycle through the io_context).
  template <class F>
  void on_strand(const std::shared_ptr<entry>& e, F f) {
    asio::post(e->strand, [weak = weak_from_this(), e, f = std::move(f)]() mutable {
      if (auto self = weak.lock()) f(*self, e);
    });
  }

  void submit(const saga_id& id, job j) {
    on_strand(get(id), [j = std::move(j)](impl& self, const std::shared_ptr<entry>& e) mutable {
      // The entry was let go (finished, or idle without a state) after get() found it: the saga's entry now takes
      // the job. Run on the old one, a saga held there would be in no map: its timers would be void (see
      // submit_timer), and a second entry could advance it at the same time.
      if (!self.is_current(e)) return self.submit(e->id, std::move(j));
      if (!j.awaited && !j.recover) j.generation = e->generation;  // a reply
      if (e->type.empty()) e->type = j.type;                       // a start's or a reply's: known before any state is
      e->queue.push_back(std::move(j));
      self.pump(e);
    });
  }

  // Timers are armed by this process for sagas it holds; a saga no longer held finished (or is stuck), where
  // timers change nothing, so the timer is dropped without reading the store.
  // A timer of an entry that was dropped (or replaced) since it was armed is void as well.
  void submit_timer(const std::weak_ptr<entry>& armed_by, std::uint64_t generation, const triggers::timer& t,
                    time_point due) {
    auto e = armed_by.lock();
    if (!e) return;
    if (!is_current(e)) return;
    on_strand(e, [generation, t, due](impl& self, const std::shared_ptr<entry>& x) {
      if (x->generation != generation) return;
      job j{false, t, {}, {}};
      j.generation = generation;
      j.due = due;
      x->queue.push_back(std::move(j));
      self.pump(x);
    });
  }

  // Runs queued jobs one at a time; an append in flight holds the queue until it is durable. Once shut down, lets
  // them go instead: a caller that waits is told, a reply is left unhandled (redelivered to the partition's next
  // owner), and recovery or a timer is redone from the log by whoever recovers the saga.
  void pump(const std::shared_ptr<entry>& e) {
    while (!e->busy && !e->queue.empty()) {
      job j = std::move(e->queue.front());
      e->queue.pop_front();
      if (j.generation && *j.generation != e->generation) {
        // Queued before the saga was dropped (behind an append in flight, or waiting out a store outage): neither
        // decided nor appended here, so that this process does not advance (or arm timers for) a saga another
        // process owns. A reply stays with its partition's new owner, which receives it again.
        if (std::holds_alternative<triggers::reply>(j.what)) ++stats.replies_ignored;
        if (j.done) {
          decision gone;
          gone.ignored = "saga " + e->id.to_string() + " was dropped here after this trigger was queued";
          j.done(gone, nullptr);
        }
        continue;
      }
      if (!draining) {
        process(e, std::move(j));
      } else if (j.awaited && j.done) {
        j.done(decision{}, std::make_exception_ptr(shut_down(
                               "orchestrator shut down before it processed this trigger for saga " + e->id.to_string() +
                               ": it is not known to be durable (an append that failed may have committed; a start "
                               "repeated with the same idempotency key finds the saga then)")));
      }
    }
    // Finished, parked, or never started (a reply for an unknown saga): nothing to keep in memory.
    if (!e->busy && e->queue.empty() && e->state &&
        (is_terminal(e->state->status) || e->state->status == saga_status::stuck ||
         e->state->status == saga_status::not_started)) {
      std::lock_guard lock(entries_mutex);
      if (auto it = entries.find(e->id); it != entries.end() && it->second == e && e->queue.empty() && !e->busy)
        entries.erase(it);
    } else if (!e->busy && e->queue.empty() && !e->state) {
      // Dropped while a job held it (its partition revoked during an append or a store retry), or left without a
      // state by a job: kept only for a caller who awaits it. Before, it stayed in memory until its next trigger.
      forget_if_idle(e, false);
    }
  }

  // Returns false when the job was parked for a retry; `fresh` says whether the state came from the store now.
  // A cached state is this process's newest view of a saga it owns. Recovery is the exception: a saga this process
  // started (or advanced) while another process owned its reply partition may have moved on there, so a recovery
  // job takes the newer of the cached state and the log. Its log read in bulk is used only when nothing changed the
  // entry since that read (else the cached state, which this process changed since, is newer); without one it
  // loads the saga.
  bool load(const std::shared_ptr<entry>& e, job& j, bool& fresh) {
    fresh = false;
    auto preloaded = std::move(j.log);
    if (e->state && !j.recover) {
      j.in_doubt.reset();  // not read back: decided again
      return true;
    }
    if (std::exchange(j.new_saga, false) && !e->state) {
      // Nothing to read: the id was drawn by start() from orchestrator_options::entropy. Were it taken after all,
      // the append (which expects no saga) fails with a conflict and the start is refused (see appended()).
      e->state = storage::fold_recorded(e->id, {});
      ++e->state_changes;
      return true;
    }
    try {
      const auto read_for = preloaded ? preloaded->read_for.lock() : nullptr;
      const bool current = read_for && read_for == e && preloaded->state_changes == read_for->state_changes.load();
      if (e->state && preloaded && !current) return true;
      std::optional<saga_state> loaded;
      if (current)
        loaded = preloaded->state ? std::move(*preloaded->state) : storage::fold_recorded(e->id, preloaded->events);
      else
        loaded = storage::fold_recorded(e->id, store.load(e->id));
      if (!e->state || loaded->seq > e->state->seq) {
        if (current) {
          ++stats.recovery_preloaded;
          if (preloaded->state) ++stats.recovery_prefetched;
        }
        e->state = std::move(*loaded);
        ++e->state_changes;
        fresh = true;
        settle_if_ended(e);
      }
    } catch (const storage::store_error& x) {
      if (!x.retryable()) throw;
      retry_later(e, std::move(j));
      return false;
    }
    if (j.in_doubt && fresh && *e->state == j.in_doubt->d.after) {
      // Its append committed: what the append would have done is done now, and process() answers the job with the
      // decision. The saga may have been dropped meanwhile (its partition revoked): then its owner's recovery, which
      // reads the log after this commit, acts on it (this process's own, queued behind this job, if the partition
      // came back: acting here too sent everything twice), and nothing is cached here.
      e->reloaded_after_error = false;
      e->held_before_retry.reset();
      if (e->generation == j.in_doubt->generation) {
        perform(e, effects_of_decision(*e->state, j.in_doubt->d.events));
      } else {
        clear_state(*e);
      }
      return true;
    }
    j.in_doubt.reset();
    if (e->reloaded_after_error) {
      // The append that failed may have committed after all (or another writer moved the saga on): resend
      // what is pending and re-arm its timers; every resend carries the same command id. A recovery job does that
      // itself (after its orphan check): doing it here too sent everything twice. When the log is where it was
      // before the failure, nothing is resent: before, each refused retry (every refused_append_backoff while a
      // disk stays full) resent every command in flight and armed their deadlines once more.
      e->reloaded_after_error = false;
      const auto before = std::exchange(e->held_before_retry, std::nullopt);
      const bool unchanged = before && before->first == e->state->seq && before->second == e->generation;
      if (!j.recover && !unchanged) perform(e, with_grace(recovery_effects(*e->state)), /*recovered=*/true);
    }
    return true;
  }

  // Whether a saga the sweep found is orphaned: unfinished and not stuck, and every timer it has was due an
  // orphan_sweep ago. A process that holds it (one that started it without owning its partition, say) fires its
  // timers when they come due, and the event that appends changes the saga: one still ahead, or just passed, may
  // be that process's to fire. `fx` is recovery_effects(st).
  bool orphaned(const saga_state& st, const std::vector<effect>& fx) const {
    if (st.status == saga_status::not_started || is_terminal(st.status) || st.status == saga_status::stuck)
      return false;
    const time_point settled = options.clock->now() - options.orphan_sweep;
    for (const auto& f : fx)
      if (const auto* t = std::get_if<effects::arm_timer>(&f); t && t->due > settled) return false;
    return true;
  }

  // Recovery resends what is in flight; each resend gets a fresh wait before its deadline fires.
  std::vector<effect> with_grace(std::vector<effect> fx) const {
    const time_point earliest = options.clock->now() + options.recovery_grace;
    for (auto& f : fx)
      if (auto* t = std::get_if<effects::arm_timer>(&f); t && t->timer.kind == triggers::timer_kind::deadline)
        t->due = std::max(t->due, earliest);
    return fx;
  }

  // Puts a job that waited for a store retry back at the head of its saga's queue and runs the queue.
  void resume(const std::shared_ptr<entry>& e, job j) {
    e->busy = false;
    e->queue.push_front(std::move(j));
    pump(e);
  }

  // The store refused the append of `j`'s decision with an error it does not call retryable: nothing of it is
  // durable. A caller awaiting it (start, cancel, an operator's action) gets the error. A reply or timer is logged and
  // decided again later: before, it was let go without a word, the reply's offset committed, and a refused deadline
  // left the saga with no timer armed, never to move again (its handle never completing).
  void refused(const std::shared_ptr<entry>& e, job j, std::exception_ptr err, const std::string& what) {
    ++stats.appends_refused;
    if (j.awaited || !j.generation) {
      log("append of saga " + e->id.to_string() + " refused: " + what);
      if (j.done) j.done(decision{}, err);
      return;
    }
    log("append of saga " + e->id.to_string() + " refused (" + kind_of(j) + " is decided again in " +
        std::to_string(options.refused_append_backoff.count()) + " ms): " + what);
    retry_later(e, std::move(j), options.refused_append_backoff);
  }

  // What a job is, for the log: "its reply", "its deadline", "its retry" (or its cancel, its operator's action).
  static std::string kind_of(const job& j) {
    const auto* timer = std::get_if<triggers::timer>(&j.what);
    if (std::holds_alternative<triggers::start>(j.what)) return "its start";
    if (std::holds_alternative<triggers::cancel>(j.what)) return "its cancel";
    if (std::holds_alternative<triggers::operator_action>(j.what)) return "its operator's action";
    return !timer ? "its reply" : timer->kind == triggers::timer_kind::retry ? "its retry" : "its deadline";
  }

  // A job that waits out an unavailable store: counted in append_retries (a refusal is counted as one, not as both).
  void retry_later(const std::shared_ptr<entry>& e, job j) {
    if (!draining) ++stats.append_retries;
    retry_later(e, std::move(j), options.store_retry_backoff);
  }
  void retry_later(const std::shared_ptr<entry>& e, job j, duration backoff) {
    // Shut down: let the job go now (see pump) rather than arm a timer nothing would run.
    if (draining) return resume(e, std::move(j));
    e->busy = true;
    if (e->state) e->held_before_retry.emplace(e->state->seq, e->generation);  // else the state it cleared before
    clear_state(*e);
    e->reloaded_after_error = true;
    auto timer = std::make_shared<asio::steady_timer>(io, backoff);
    {
      std::lock_guard lock(retry_mutex);
      retry_timers.insert(timer);
    }
    // Cancelled by shutdown: the job is then let go (see pump).
    timer->async_wait([weak = weak_from_this(), e, timer, j = std::move(j)](const boost::system::error_code&) mutable {
      auto self = weak.lock();
      if (!self) return;
      {
        std::lock_guard lock(self->retry_mutex);
        self->retry_timers.erase(timer);
      }
      self->on_strand(
          e, [j = std::move(j)](impl& s, const std::shared_ptr<entry>& x) mutable { s.resume(x, std::move(j)); });
    });
  }

  void process(const std::shared_ptr<entry>& e, job j) {
    try {
      if (j.orphan && e->state) {  // held here: this process advances it and has its timers armed
        if (j.done) j.done(decision{}, nullptr);
        return;
      }
      bool fresh = false;
      if (!load(e, j, fresh)) return;
      if (auto in_doubt = std::move(j.in_doubt)) {  // committed (see load())
        ++stats.appends;
        stats.events_appended += in_doubt->d.events.size();
        log("append of saga " + e->id.to_string() + " committed although the store could not tell: " + kind_of(j) +
            " is not decided again");
        return finish_job(j, in_doubt->d);
      }
      if (j.recover) {
        if (!owns(e->state->type, e->id)) {  // its partition was revoked while the recovery waited
          drop(e, "its reply partition was revoked before it was recovered");
          if (j.done) j.done(decision{}, nullptr);
          return;
        }
        auto fx = recovery_effects(*e->state);
        if (j.orphan && !orphaned(*e->state, fx)) {
          if (!is_terminal(e->state->status) && e->state->status != saga_status::stuck) {
            clear_state(*e);  // read for this check only: still not held here
            forget_if_idle(e, false);
          }
          if (j.done) j.done(decision{}, nullptr);
          return;
        }
        ++stats.sagas_recovered;
        if (!fresh && e->recovered_in == e->generation) {  // recovered in this generation already, held since
          if (j.done) j.done(decision{}, nullptr);
          return;
        }
        if (j.orphan) {
          ++stats.sagas_swept;
          log("recovered saga " + e->id.to_string() + " (" + to_string(e->state->status) + " at seq " +
              std::to_string(e->state->seq) +
              "), which this process owns but did not hold: its last change was made elsewhere");
        }
        perform(e, with_grace(std::move(fx)), /*recovered=*/true);
        e->recovered_in = e->generation;
        if (j.done) j.done(decision{}, nullptr);
        return;
      }
      const bool starting = std::holds_alternative<triggers::start>(j.what);
      const definition* def = starting ? latest(j.type) : exact(e->state->type, e->state->definition_version);
      if (!def) {
        decision d;
        if (e->state->status == saga_status::not_started && !starting)
          d.ignored = "trigger for unknown saga " + e->id.to_string();
        else
          d.rejected = "no definition registered for saga type '" + (starting ? j.type : e->state->type) + "' v" +
                       std::to_string(e->state->definition_version);
        return finish_job(j, d);
      }
      decision d =
          decide(*def, *e->state, j.what, decide_context{std::max(options.clock->now(), j.due), options.entropy()});
      if (starting && j.start_in_doubt && !d.rejected.empty() && e->state->status != saga_status::not_started &&
          e->state->type == j.type && e->state->idempotency_key == std::get<triggers::start>(j.what).idempotency_key) {
        // The first attempt's append committed after all (its id was drawn for this start): the start is durable,
        // and load() has resent its first commands. Refusing it would tell the caller a running saga was not
        // started (and a retry without an idempotency key would start a second one).
        decision durable;
        durable.ignored = "the start of saga " + e->id.to_string() + " committed on its first attempt";
        return finish_job(j, durable);
      }
      if (d.events.empty() && !d.ignored.empty() && !fresh && !j.reloaded &&
          std::holds_alternative<triggers::reply>(j.what)) {
        // A reply the cached state does not know: an operator tool may have appended and sent commands
        // meanwhile, so decide once more on the log.
        clear_state(*e);
        j.reloaded = true;
        return process(e, std::move(j));
      }
      if (d.events.empty()) return finish_job(j, d);
      if (auto why = fenced_why(def->type())) {
        // The type is refused here (see fence()): the append would place the saga by a count the store did not
        // record, and its effects would run for a type this process refuses. A fence voids the replies and timers
        // queued before it by their generation, and recoveries by ownership; a start, cancel or operator's action
        // carries neither (and a cancel or an action names no type that call() could check). Its caller is told;
        // the state read for it is let go.
        clear_state(*e);
        if (std::holds_alternative<triggers::reply>(j.what)) ++stats.replies_ignored;
        log("saga " + e->id.to_string() + ": " + kind_of(j) + " is refused: " + *why);
        if (j.done) j.done(decision{}, std::make_exception_ptr(partition_count_changed(*why)));
        return;
      }
      storage::append_request request{e->id,    def->type(),    e->state->seq,
                                      d.events, d.after.status, bus.reply_partition(def->type(), e->id).value_or(0),
                                      {}};
      e->busy = true;
      ++appends_in_flight;
      const auto t0 = steady::now();
      auto pending =
          std::make_shared<std::pair<job, decision>>(std::move(j), std::move(d));  // d.after: the state once appended
      // The store's callback holds the orchestrator (whose io_context the entry's strand belongs to) until it ran.
      try {
        store.async_append(
            std::move(request), [held = holder{shared_from_this(), e}, pending, t0, generation = e->generation](
                                    std::exception_ptr err, storage::append_result) {
              auto& self = *held.self;
              std::lock_guard lock(self.late_mutex);
              if (!self.drained) {  // posted under the lock: shutdown's drain runs it if it came before the flag
                return self.on_strand(held.e, [pending, err, t0, generation](impl& s, const std::shared_ptr<entry>& x) {
                  s.appended(x, *pending, err, t0, generation);
                });
              }
              // An append that outlasted shutdown's wait: its caller is told here (the start's id once durable; a
              // failure, or shut_down for a retry), its effects are performed as the drain does.
              self.appended(held.e, *pending, err, t0, generation);
            });
      } catch (...) {
        // A store that throws instead of answering through the callback (against event_store's contract): taken
        // as not appended. The job's caller gets the error and the saga's queue goes on (it was held for good).
        e->busy = false;
        --appends_in_flight;
        auto& failed = pending->first;
        if (failed.done) failed.done(decision{}, std::current_exception());
      }
    } catch (...) {
      // The saga's log could not be read or folded (a store error that retrying does not help, an event evolve
      // refuses). A caller who waits is told; a reply, timer or recovery was dropped without a word: it is logged.
      if (!j.awaited) {
        std::string why = "unknown error";
        try {
          throw;
        } catch (const std::exception& x) {
          why = x.what();
        } catch (...) {
        }
        log("saga " + e->id.to_string() + ": " +
            (j.recover                                         ? std::string("recovery")
             : std::holds_alternative<triggers::reply>(j.what) ? "a reply"
                                                               : "a timer") +
            " could not be processed: " + why);
      }
      if (j.done) j.done(decision{}, std::current_exception());
      if (!e->state) forget_if_idle(e, false);  // an entry made for this job alone: read again by the next trigger
    }
  }

  void finish_job(job& j, const decision& d) {
    if (!d.ignored.empty()) {
      if (std::holds_alternative<triggers::reply>(j.what)) ++stats.replies_ignored;
      log("ignored: " + d.ignored);
    }
    if (!d.rejected.empty()) {
      ++stats.triggers_rejected;
      log("rejected: " + d.rejected);
    }
    if (j.done) j.done(d, nullptr);
  }

  void appended(const std::shared_ptr<entry>& e, std::pair<job, decision>& pending, std::exception_ptr err,
                steady::time_point t0, std::uint64_t generation) {
    auto& [j, d] = pending;
    saga_state& after = d.after;
    e->busy = false;
    --appends_in_flight;
    ++e->state_changes;  // committed or not, a bulk read taken while it was in flight may predate it
    if (err) {
      try {
        std::rethrow_exception(err);
      } catch (const storage::concurrency_conflict& c) {
        ++stats.append_conflicts;
        if (std::holds_alternative<triggers::start>(j.what)) {
          // start() drew an id that is taken (only an injected entropy repeats itself): refuse, as a start on the
          // existing saga's state would be; the next trigger for that saga reads its log.
          clear_state(*e);
          decision taken;
          taken.rejected = "saga id " + e->id.to_string() + " is taken (orchestrator_options::entropy drew it twice)";
          finish_job(j, taken);
          return pump(e);
        }
        if (!owns(after.type, e->id)) {  // a zombie: the owner of its partition advanced it; neither reload nor resend
          drop(e, std::string("another process owns its reply partition and advanced it (") + c.what() + ")");
          decision gone;
          gone.ignored = "saga " + e->id.to_string() + " is owned by another process now";
          finish_job(j, gone);
          return pump(e);
        }
        log(std::string("reloading after ") + c.what());
        clear_state(*e);
        e->reloaded_after_error = true;
        e->held_before_retry.reset();  // another writer moved the saga on
        e->queue.push_front(std::move(j));
      } catch (const storage::store_error& x) {
        if (x.retryable()) {
          log(std::string("append will be retried: ") + x.what());
          if (std::holds_alternative<triggers::start>(j.what))
            j.start_in_doubt = true;
          else
            j.in_doubt = std::make_unique<job::in_doubt_append>(job::in_doubt_append{std::move(d), generation});
          retry_later(e, std::move(j));
        } else {
          refused(e, std::move(j), err, x.what());
        }
      } catch (const std::exception& x) {
        refused(e, std::move(j), err, x.what());
      } catch (...) {
        refused(e, std::move(j), err, "an exception that is not a std::exception");
      }
      return pump(e);
    }
    ++stats.appends;
    stats.events_appended += d.events.size();
    stats.append_latency.observe(ms_since(t0));
    if (e->generation != generation) {
      // Dropped while the append was in flight (its partition was revoked). If the partition is another process's
      // now, the events are in the log for it: caching the state or arming timers here would let this process go
      // on advancing a saga it no longer owns. If it came back to this process (a rebalance that revoked and
      // reassigned it), its recovery may have listed the sagas before this append committed (a saga started just
      // then would be missed and never get its first command): adopt the state and act as recovery does.
      // Either way an end that is now durable is final: whoever awaits the saga gets its outcome.
      if (!e->state && owns(after.type, e->id)) {
        adopt(*e, j, after);
        ++e->state_changes;
        perform(e, with_grace(recovery_effects(*e->state)), /*recovered=*/true);
        e->recovered_in = e->generation;  // the recovery the assignment queued (before or after this) resends nothing
        settle_if_ended(e);
      } else {
        settle_if_ended(e, after);
      }
      finish_job(j, d);
      return pump(e);
    }
    adopt(*e, j, after);
    ++e->state_changes;
    perform(e, effects_of_decision(*e->state, d.events));
    finish_job(j, d);
    pump(e);
  }

  // The effects of a decision's events, once durable.
  std::vector<effect> effects_of_decision(const saga_state& after, const std::vector<event>& events) const {
    auto fx = effects_of(after, events);
    // An operator's action ends a stuck spell, during which replies and deadlines were ignored: what was in flight
    // is resent, and, like a resend after recovery, gets a fresh wait (its recorded deadline may have passed).
    if (std::any_of(events.begin(), events.end(),
                    [](const event& x) { return std::holds_alternative<events::operator_action_recorded>(x.body); }))
      fx = with_grace(std::move(fx));
    return fx;
  }

  // Caches `after` (the decision's state once its events are durable) as the saga's state. The caller of an awaited
  // job (start, cancel, act) is handed the decision, `after` included, so it is copied for them and moved otherwise.
  static void adopt(entry& e, const job& j, saga_state& after) {
    if (j.awaited)
      e.state = after;
    else
      e.state = std::move(after);
  }

  // `recovered`: the effects of a state read back (recovery_effects), whose end, if any, was counted when it happened.
  void perform(const std::shared_ptr<entry>& e, const std::vector<effect>& fx, bool recovered = false) {
    for (const auto& f : fx) {
      if (const auto* send = std::get_if<effects::send_command>(&f)) {
        ++(send->compensation ? stats.compensations_dispatched : stats.steps_dispatched);
        auto message = transport::command_message::from(*send, options.reply_to(send->saga_type), options.clock->now());
        bus.send_command(message, [self = weak_from_this(), command_id = send->command_id](std::exception_ptr err) {
          if (!err) return;
          if (auto s = self.lock()) {
            ++s->stats.send_failures;
            try {
              std::rethrow_exception(err);
            } catch (const std::exception& x) {
              s->log("send of " + command_id + " failed (it is resent when its deadline passes): " + x.what());
            }
          }
        });
      } else if (const auto* timer = std::get_if<effects::arm_timer>(&f)) {
        options.clock->schedule(timer->due, [self = weak_from_this(), armed_by = std::weak_ptr<entry>(e),
                                             generation = e->generation, t = timer->timer, due = timer->due] {
          if (auto s = self.lock(); s && !s->stopped) s->submit_timer(armed_by, generation, t, due);
        });
      } else if (const auto* done = std::get_if<effects::saga_finished>(&f)) {
        finished(e, *done, recovered);
      }
    }
    for (const auto& f : fx)
      if (const auto* r = std::get_if<effects::arm_timer>(&f); r && r->timer.kind == triggers::timer_kind::retry)
        ++stats.retries_scheduled;
  }

  // A saga reached its end (or stuck); `recovered`: found so in its log (a stuck saga recovered, counted when it
  // stuck: before, every recovery and rebalance counted each stuck saga again).
  void finished(const std::shared_ptr<entry>& e, const effects::saga_finished& f, bool recovered = false) {
    if (!recovered) {
      switch (f.status) {
        case saga_status::completed: ++stats.sagas_completed; break;
        case saga_status::compensated: ++stats.sagas_compensated; break;
        case saga_status::stuck: ++stats.sagas_stuck; break;
        default: break;
      }
    }
    fulfil(e, saga_outcome{f.status, f.output, f.reason});
  }

  // A state read from the log that has already ended (or is stuck) answers whoever awaits the saga: its finish
  // effect ran in another process, or in this one while the saga was dropped (its last append completed after its
  // partition was revoked, and the partition came back). Without this the entry, once forgotten, would take an
  // unfulfilled promise with it (a broken promise for the caller holding the saga's outcome).
  void settle_if_ended(const std::shared_ptr<entry>& e) { settle_if_ended(e, *e->state); }
  void settle_if_ended(const std::shared_ptr<entry>& e, const saga_state& st) {
    if (st.status == saga_status::completed) fulfil(e, saga_outcome{st.status, st.data, ""});
    if (st.status == saga_status::compensated) fulfil(e, saga_outcome{st.status, "", st.reason});
    if (st.status == saga_status::stuck) fulfil(e, saga_outcome{st.status, "", st.stuck_reason});
  }

  void fulfil(const std::shared_ptr<entry>& e, saga_outcome outcome) {
    std::lock_guard lock(e->promise_mutex);
    if (e->counted) {
      e->counted = false;
      outcome.elapsed = std::chrono::duration_cast<std::chrono::microseconds>(steady::now() - e->started);
      stats.saga_latency.observe(ms_since(e->started));
      slots.release();
    }
    if (e->fulfilled) return;
    if (!e->promise) {
      e->promise = std::make_shared<std::promise<saga_outcome>>();
      e->future = e->promise->get_future().share();
    }
    e->promise->set_value(outcome);
    e->fulfilled = true;
  }

  // The future of the saga's outcome, handed to a caller of outcome() (start() makes its own: see `asked`).
  std::shared_future<saga_outcome> future_of(const std::shared_ptr<entry>& e) {
    std::lock_guard lock(e->promise_mutex);
    e->asked = true;
    if (!e->promise) {
      e->promise = std::make_shared<std::promise<saga_outcome>>();
      e->future = e->promise->get_future().share();
    }
    return e->future;
  }

  // Submits a trigger and waits until it is decided and (if it changed anything) durable.
  decision call(const saga_id& id, trigger t, const std::string& type = {}, bool new_saga = false) {
    if (!accepting) throw std::logic_error("orchestrator is not running (call run() first, or it was shut down)");
    auto promise = std::make_shared<std::promise<decision>>();
    auto future = promise->get_future();
    job j{false, std::move(t), type, [promise](const decision& d, std::exception_ptr err) {
            if (err)
              promise->set_exception(err);
            else
              promise->set_value(d);
          }};
    j.new_saga = new_saga;
    j.awaited = true;
    {
      // A shutdown that began after the check above may have drained the io_context already: a job posted then would
      // never run, and its caller would wait until the orchestrator is destroyed. Posted under the drain's lock, the
      // job is either run by the drain (and told shut_down) or refused here.
      std::lock_guard lock(late_mutex);
      if (drained) throw std::logic_error("orchestrator is not running (it was shut down)");
      submit(id, std::move(j));
    }
    return future.get();
  }

  // Recovers the unfinished sagas of `filter`. While the store is unavailable (a database restart, say) it tries
  // again with backoff from the io context, until it succeeds or the orchestrator stops: owned sagas are never left
  // unrecovered because the database was down when their partitions arrived.
  void recover(const storage::partition_filter& filter, duration backoff = {}) {
    std::vector<storage::saga_summary> unfinished;
    try {
      for (auto& summary : store.list_unfinished(filter))
        if (latest(summary.type)) unfinished.push_back(std::move(summary));  // else another service's saga type
    } catch (const storage::store_error& x) {
      if (!x.retryable()) throw;
      backoff = std::min(std::max(backoff * 2, options.store_retry_backoff), duration(std::chrono::seconds(5)));
      log("recovery will be retried in " + std::to_string(backoff.count()) + " ms: " + x.what());
      auto timer = std::make_shared<asio::steady_timer>(io, backoff);
      timer->async_wait([weak = weak_from_this(), timer, filter, backoff](const boost::system::error_code& ec) {
        auto self = weak.lock();
        if (ec || !self || !self->accepting) return;
        storage::partition_filter still = filter;  // partitions revoked during the outage are another's now
        if (!filter.partitions.empty()) {
          std::lock_guard lock(self->owned_mutex);
          const auto it = self->owned.find(filter.type);
          if (it == self->owned.end()) return;
          std::erase_if(still.partitions, [&](std::int32_t p) { return it->second.count(p) == 0; });
          if (still.partitions.empty()) return;
        }
        try {
          self->recover(still, backoff);
        } catch (const std::exception& e) {
          self->log(std::string("recovery failed: ") + e.what());
        }
      });
      return;
    }
    submit_recovery(unfinished, take_prefetched(unfinished));
  }

  // Marks the next sweep due after orphan_sweep on the clock.
  void schedule_sweep() {
    options.clock->schedule(options.clock->now() + options.orphan_sweep, [weak = weak_from_this()] {
      auto self = weak.lock();
      if (!self) return;
      {
        std::lock_guard lock(self->sweep_mutex);
        self->sweep_due = true;
      }
      self->sweep_cv.notify_one();
    });
  }

  // sweep_thread: one sweep each time the clock marks it due, until shutdown. Holds the impl while it sweeps, so a
  // log callback that shuts the orchestrator down (and destroys it) does not pull it away mid-sweep.
  static void sweep_loop(const std::weak_ptr<impl>& weak) {
    for (;;) {
      auto self = weak.lock();
      if (!self) return;
      {
        std::unique_lock lock(self->sweep_mutex);  // shutdown() stops this wait before the orchestrator lets go
        self->sweep_cv.wait(lock, [&] { return self->sweep_due || self->sweep_stop; });
        if (self->sweep_stop) return;
        self->sweep_due = false;
      }
      try {
        self->sweep();
      } catch (...) {  // bad_alloc, say: the next sweep tries again
        self->log_quietly("the orphan sweep failed; it runs again at the next interval");
      }
      {
        std::lock_guard lock(self->sweep_mutex);
        if (self->sweep_stop) return;
      }
      self->schedule_sweep();  // outside the lock: a clock may run a callback (which takes it) from schedule()
    }
  }

  // Recovers the unfinished sagas of the owned partitions that no trigger brought here and that nothing changed for
  // an orphan_sweep: each is queued on its strand as a recovery that does nothing when the saga is held here by
  // then, or is not orphaned (see orphaned()). Their logs are read one by one (they are few: most unfinished sagas
  // are held, or change more often).
  void sweep() {
    storage::partition_filter filter;
    if (bus.partitions_replies()) {
      std::set<std::int32_t> all;
      {
        std::lock_guard lock(owned_mutex);
        for (const auto& [type, partitions] : owned) all.insert(partitions.begin(), partitions.end());
      }
      if (all.empty()) return;  // owns nothing (yet): a start-only process, or one waiting for its assignment
      filter.partitions.assign(all.begin(), all.end());
    }
    std::vector<storage::saga_summary> listed;
    try {
      listed = store.list_unfinished(filter);
    } catch (const std::exception& x) {
      log_quietly("the orphan sweep could not list the unfinished sagas (it lists them again in " +
                  std::to_string(options.orphan_sweep.count()) + " ms): " + x.what());
      return;
    }
    const time_point quiet_since = options.clock->now() - options.orphan_sweep;
    for (const auto& summary : listed) {
      if (summary.status == saga_status::stuck || summary.updated_at > quiet_since) continue;
      if (!latest(summary.type) || fenced_why(summary.type) || !owns(summary.type, summary.id)) continue;
      if (!accepting) return;
      job j{true, {}, {}, {}};
      j.orphan = true;
      submit(summary.id, std::move(j));
    }
  }

  // The part of orchestrator::shutdown() after it stopped taking triggers: waits for appends in flight, stops and
  // joins the workers, then lets go of what is still queued. Not on an io thread. Sets shutdown_finished at the end.
  void finish_shutdown() noexcept;
  std::mutex finish_mutex;
  std::condition_variable finish_cv;
  bool shutdown_finished = false;

  // Reads and folds every unfinished saga's log ahead of the first assignment (prefetch_thread).
  void prefetch() {
    std::unordered_map<saga_id, prefetched_state> states;
    try {
      std::vector<saga_id> ids;
      for (const auto& summary : store.list_unfinished({}))
        if (latest(summary.type) && ids.size() < options.recovery_prefetch_limit) ids.push_back(summary.id);
      const std::size_t batch = std::max<std::size_t>(1, options.recovery_load_batch);
      const auto wanted = [&] {
        std::lock_guard lock(prefetch_mutex);
        return accepting && !prefetch_abandoned;
      };
      for (std::size_t from = 0; from < ids.size() && wanted(); from += batch) {
        const std::span<const saga_id> chunk(ids.data() + from, std::min(batch, ids.size() - from));
        for (auto& [id, events] : store.load_many(chunk))
          if (!events.empty()) {
            const std::uint64_t last = events.back().seq;
            states.emplace(id, prefetched_state{last, storage::fold_recorded(id, events)});
          }
      }
    } catch (const std::exception& x) {  // the states folded so far stay good; recovery reads the rest itself
      log_quietly(std::string("recovery read-ahead stopped: ") + x.what());
    } catch (...) {
      log_quietly("recovery read-ahead stopped");
    }
    std::lock_guard lock(prefetch_mutex);
    if (!prefetch_abandoned) {
      stats.recovery_read_ahead = states.size();
      prefetched = std::move(states);
    }
  }

  // The user's log callback, from a thread of our own: what it throws is dropped.
  void log_quietly(const std::string& line) noexcept {
    try {
      log(line);
    } catch (...) {
    }
  }

  // Takes the read-ahead states of `unfinished` that are still current. Never waits: a read-ahead still running is
  // abandoned (this recovery reads what it needs, as it would without one). The rest stays for the other types of
  // the same assignment (it recovers type by type), which drops it after the last (drop_read_ahead): later
  // recoveries, and the retries of a listing that failed, read for themselves.
  std::unordered_map<saga_id, saga_state> take_prefetched(const std::vector<storage::saga_summary>& unfinished) {
    std::unordered_map<saga_id, saga_state> out;
    std::lock_guard lock(prefetch_mutex);
    prefetch_abandoned = true;
    for (const auto& summary : unfinished)
      if (auto it = prefetched.find(summary.id); it != prefetched.end()) {
        if (it->second.last_seq == summary.last_seq) out.emplace(summary.id, std::move(it->second.state));
        prefetched.erase(it);
      }
    return out;
  }

  // Lets the read-ahead go (recovery came, and took what it could use).
  void drop_read_ahead() {
    std::lock_guard lock(prefetch_mutex);
    prefetch_abandoned = true;
    prefetched.clear();
  }

  // Queues a recovery job per saga: with its state from the read-ahead when `ready` has it, else with its log read
  // in bulk (recovery_load_batch sagas per load_many, on this thread, while the strands fold the batch before). A
  // batch that cannot be read is recovered without preloaded logs: each job then loads its saga itself, retrying
  // with backoff while the store is unavailable.
  void submit_recovery(const std::vector<storage::saga_summary>& unfinished,
                       std::unordered_map<saga_id, saga_state> ready) {
    std::vector<saga_id> ids;
    for (const auto& summary : unfinished) {
      auto it = ready.find(summary.id);
      if (it == ready.end()) {
        ids.push_back(summary.id);
        continue;
      }
      auto e = get(summary.id);
      const std::uint64_t changes = e->state_changes.load();
      job j{true, {}, {}, {}};
      j.log = std::make_shared<preloaded_log>(preloaded_log{e, changes, {}, std::move(it->second)});
      submit(summary.id, std::move(j));
    }
    const std::size_t batch = std::max<std::size_t>(1, options.recovery_load_batch);
    for (std::size_t from = 0; from < ids.size(); from += batch) {
      const std::span<const saga_id> chunk(ids.data() + from, std::min(batch, ids.size() - from));
      // The entries and their state counts first: a log read after this is at least as new as any state they had.
      std::vector<std::pair<std::shared_ptr<entry>, std::uint64_t>> read_for;
      read_for.reserve(chunk.size());
      for (const auto& id : chunk) {
        auto e = get(id);
        const std::uint64_t changes = e->state_changes.load();
        read_for.emplace_back(std::move(e), changes);
      }
      std::vector<storage::saga_log> logs;
      try {
        logs = store.load_many(chunk);
      } catch (const std::exception& x) {
        log("recovery reads " + std::to_string(chunk.size()) + " sagas one by one: " + x.what());
        logs.clear();
      }
      for (std::size_t i = 0; i < chunk.size(); ++i) {
        job j{true, {}, {}, {}};
        if (logs.size() == chunk.size() && logs[i].first == chunk[i])
          j.log = std::make_shared<preloaded_log>(
              preloaded_log{read_for[i].first, read_for[i].second, std::move(logs[i].second), std::nullopt});
        submit(chunk[i], std::move(j));
      }
    }
  }
};

orchestrator::orchestrator(storage::event_store& store, transport::transport& bus, orchestrator_options options)
    : impl_(std::make_shared<impl>(store, bus, std::move(options))) {}

orchestrator::~orchestrator() { shutdown(); }

void orchestrator::add(definition def) {
  if (impl_->accepting) throw std::logic_error("add definitions before run()");
  auto& versions = impl_->definitions[def.type()];
  if (versions.count(def.version()))
    throw std::invalid_argument("definition " + def.type() + " v" + std::to_string(def.version()) +
                                " is already registered");
  versions.emplace(def.version(), std::move(def));
}

void orchestrator::run() {
  auto& s = *impl_;
  if (s.work) throw std::logic_error("orchestrator::run() called twice");
  const bool partitions = s.bus.partitions_replies();
  if (partitions)
    for (const auto& [type, versions] : s.definitions) {
      // Which partition owns a saga, and so which sagas a recovery takes, depends on the count: learn it first.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      std::optional<std::int32_t> count;
      while (!(count = s.bus.reply_partitions(type))) {
        if (std::chrono::steady_clock::now() >= deadline)
          throw transport::transport_error("saga type '" + type +
                                           "': the partition count of its reply topic is not known after 30 s (is "
                                           "the cluster reachable?); nothing was started");
        std::this_thread::sleep_for(std::chrono::milliseconds(100));  // start-up only
      }
      if (auto why = s.misplaced(type, *count); !why.empty()) throw partition_count_changed(why);
    }
  s.work.emplace(asio::make_work_guard(s.io));
  for (std::size_t i = 0; i < s.options.threads; ++i) s.threads.emplace_back([&s] { s.io.run(); });
  s.accepting = true;
  if (partitions && s.options.recovery_prefetch)  // read the logs ahead while the group hands out partitions
    s.prefetch_thread = std::thread([&s] { s.prefetch(); });
  std::weak_ptr<impl> weak = impl_;
  s.bus.on_partitions_assigned([weak](const std::vector<transport::topic_partition>& assigned) {
    auto self = weak.lock();
    if (!self) return;
    // The transport re-read the partition counts before this call: one that changed since run() is checked again.
    for (const auto& [type, versions] : self->definitions) self->recheck(type);
    // One listing per type: the types number their partitions alike, and another type's sagas on a partition of
    // the same number are not this assignment's (their owner may be another process, or they are held here).
    std::map<std::string, storage::partition_filter> filters;
    {
      std::lock_guard lock(self->owned_mutex);
      for (const auto& tp : assigned)
        if (self->latest(tp.name) && !self->fenced_why(tp.name)) {
          auto& filter = filters[tp.name];
          filter.type = tp.name;
          filter.partitions.push_back(tp.partition);
          self->owned[tp.name].insert(tp.partition);
        }
      self->stats.reply_partitions_owned = self->count_owned();
    }
    for (const auto& [type, filter] : filters) {
      try {
        self->recover(filter);
      } catch (const std::exception& x) {  // a store error that retrying does not help: the other types still recover
        self->log_quietly("recovery of saga type '" + type + "' failed: " + x.what());
      } catch (...) {
        self->log_quietly("recovery of saga type '" + type + "' failed");
      }
    }
    if (!filters.empty()) self->drop_read_ahead();
  });
  s.bus.on_partitions_revoked([weak](const std::vector<transport::topic_partition>& revoked) {
    if (auto self = weak.lock()) self->revoke(revoked);
  });
  for (const auto& [type, versions] : s.definitions) {
    s.bus.on_reply(type, [weak, type](transport::reply_message reply, transport::handled_callback handled) {
      auto self = weak.lock();
      if (!self || !self->accepting) return;  // not handled: the next owner gets it again
      if (self->fenced_why(type)) {           // dropped: a process with the recorded count resends the command
        ++self->stats.replies_ignored;
        if (handled) handled();
        return;
      }
      self->submit(reply.saga, job{false, reply.to_trigger(), type, [handled](const decision&, std::exception_ptr) {
                                     if (handled) handled();
                                   }});
    });
  }
  // Transports that do not partition never call on_partitions_assigned: this process owns every saga.
  if (!partitions) s.recover({});
  if (s.options.orphan_sweep > duration::zero()) {
    s.sweep_thread = std::thread([weak] { impl::sweep_loop(weak); });
    s.schedule_sweep();
  }
}

saga_handle orchestrator::start(const std::string& type, const std::string& input_json, const std::string& key) {
  auto& s = *impl_;
  if (!s.latest(type)) throw std::invalid_argument("no definition registered for saga type '" + type + "'");
  if (auto why = s.recheck(type)) throw partition_count_changed(*why);
  if (input_json.size() > s.options.max_input_bytes)
    throw std::invalid_argument("saga input of " + std::to_string(input_json.size()) + " bytes for type '" + type +
                                "' exceeds orchestrator_options::max_input_bytes (" +
                                std::to_string(s.options.max_input_bytes) + ")");
  if (!s.slots.try_acquire_for(s.options.start_timeout))
    throw overloaded("more than " + std::to_string(s.options.max_in_flight) + " sagas in flight for " +
                     std::to_string(s.options.start_timeout.count()) + " ms; try again later");
  const auto [id, owned_here] = s.new_id(type);
  auto e = s.get(id);
  bool made_promise = false;  // else the id was taken after all, and someone may await that saga
  std::shared_future<saga_outcome> future;
  {
    std::lock_guard lock(e->promise_mutex);
    e->counted = true;
    e->started = steady::now();
    if (!e->promise) {
      made_promise = true;
      e->promise = std::make_shared<std::promise<saga_outcome>>();
      e->future = e->promise->get_future().share();
    }
    future = e->future;
  }
  // Not started: frees the slot, and the entry unless it holds a saga (one that this start's append committed in
  // doubt, say). Before, the promise made for the handle (never returned) kept the entry in memory for good.
  auto release = [&] {
    {
      std::lock_guard lock(e->promise_mutex);
      if (e->counted) {
        e->counted = false;
        s.slots.release();
      }
      if (made_promise && !e->fulfilled && !e->asked) {
        e->promise.reset();
        e->future = {};
      }
    }
    s.on_strand(e, [](impl& self, const std::shared_ptr<entry>& x) { self.forget_if_idle(x, false); });
  };
  decision d;
  try {
    d = s.call(id, triggers::start{input_json, key}, type, /*new_saga=*/true);
  } catch (const storage::duplicate_idempotency_key& dup) {
    release();
    return saga_handle{dup.existing(), outcome(dup.existing())};
  } catch (...) {
    release();
    throw;
  }
  if (!d.rejected.empty()) {
    release();
    throw std::invalid_argument("start of saga type '" + type + "' refused: " + d.rejected);
  }
  ++s.stats.sagas_started;
  if (!owned_here) s.watch(e);  // placed on another process's partition (this one owns none of the type's)
  return saga_handle{id, future};
}

decision orchestrator::cancel(const saga_id& id, const std::string& reason, const std::string& by) {
  return impl_->call(id, triggers::cancel{reason, by});
}

decision orchestrator::act(const saga_id& id, const triggers::operator_action& action) {
  return impl_->call(id, action);
}

std::shared_future<saga_outcome> orchestrator::outcome(const saga_id& id) {
  auto& s = *impl_;
  auto [entry_found, future] = s.awaited(id);
  const auto e = std::move(entry_found);  // captured below (a structured binding is not, before clang 16)
  // Already finished (or stuck)? Its finish effect is in the past: answer from the log.
  const auto forget = [&](bool unknown_saga) {
    s.on_strand(e,
                [unknown_saga](impl& self, const std::shared_ptr<entry>& x) { self.forget_if_idle(x, unknown_saga); });
  };
  const auto log = s.store.load(id);
  if (log.empty()) {
    forget(true);
    throw std::invalid_argument("no saga " + id.to_string());
  }
  const auto st = storage::fold_recorded(id, log);
  s.settle_if_ended(e, st);
  if (future.wait_for(std::chrono::seconds(0)) == std::future_status::ready)
    forget(false);
  else if (!s.owns(st.type, id))
    s.watch(e);  // another process advances it: its end is read from the store
  return future;
}

void orchestrator::shutdown() noexcept {
  auto& s = *impl_;
  const bool own_thread = std::any_of(s.threads.begin(), s.threads.end(),
                                      [](const std::thread& t) { return t.get_id() == std::this_thread::get_id(); });
  if (s.stopped.exchange(true)) {
    if (own_thread) return;
    std::unique_lock lock(s.finish_mutex);  // begun elsewhere (maybe on an io thread): done when this returns
    s.finish_cv.wait(lock, [&] { return s.shutdown_finished; });
    return;
  }
  s.accepting = false;
  s.bus.stop();
  {
    std::lock_guard lock(s.sweep_mutex);
    s.sweep_stop = true;
  }
  s.sweep_cv.notify_all();
  if (s.sweep_thread.joinable()) {
    if (s.sweep_thread.get_id() == std::this_thread::get_id())
      s.sweep_thread.detach();  // called from a log callback of the sweep: it ends after this sweep
    else
      s.sweep_thread.join();  // after the listing it is reading, if any
  }
  if (own_thread) {
    // On one of its own io threads (a log callback): that thread cannot join itself, nor can the io_context be
    // drained under a handler that runs on it. A thread of the orchestrator's own finishes the shutdown once this
    // handler has returned; it holds the orchestrator's state until then, even if the orchestrator is destroyed.
    try {
      std::thread([self = impl_] { self->finish_shutdown(); }).detach();
    } catch (...) {  // no thread to be had: stop the workers at least; the rest goes with the io_context
      if (s.work) s.work.reset();
      s.io.stop();
      std::lock_guard lock(s.finish_mutex);
      s.shutdown_finished = true;
    }
    return;
  }
  s.finish_shutdown();
}

void orchestrator::impl::finish_shutdown() noexcept {
  auto& s = *this;
  // Let appends in flight finish (bounded wait; the log stays consistent either way, and one that comes later is
  // handled on the store's thread).
  const auto wait_until = std::chrono::steady_clock::now() + s.options.shutdown_append_wait;
  while (s.appends_in_flight > 0 && std::chrono::steady_clock::now() < wait_until)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  if (s.work) s.work.reset();
  s.io.stop();
  for (auto& t : s.threads)
    if (t.joinable()) t.join();
  if (s.prefetch_thread.joinable()) s.prefetch_thread.join();  // stops after the chunk it reads
  // What is still queued would never run: let it go (see pump), here on this thread. Appends that finished still
  // get their effects (sends fail on the stopped transport; recovery resends them).
  s.draining = true;
  {
    std::lock_guard lock(s.retry_mutex);
    for (const auto& timer : s.retry_timers) timer->cancel();
  }
  {
    std::lock_guard lock(s.watch_mutex);
    if (s.watch_timer) s.watch_timer->cancel();
    for (const auto& e : s.watched) e->watched = false;
    s.watched.clear();
  }
  {
    std::lock_guard lock(s.late_mutex);
    s.drained = true;
    try {
      s.io.restart();
      s.io.poll();
    } catch (...) {  // a job's callback threw: the rest goes with the io_context
    }
  }
  {
    std::lock_guard lock(s.finish_mutex);
    s.shutdown_finished = true;
  }
  s.finish_cv.notify_all();
}

const runtime::metrics& orchestrator::stats() const noexcept { return impl_->stats; }

std::size_t orchestrator::active() const {
  std::lock_guard lock(impl_->entries_mutex);
  return impl_->entries.size();
}

}  // namespace saga::runtime
