#include "saga/testing/driver.hpp"

#include <stdexcept>

namespace saga::testing {

namespace {
std::uint64_t next_random(std::uint64_t& state) {
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
}  // namespace

driver::driver(std::uint64_t seed, time_point start) : rng_(seed), now_(start) {}

driver::~driver() = default;

void driver::add(definition def) {
  const std::string type = def.type();
  definitions_.insert_or_assign(type, std::move(def));
  transport_.on_reply(type, [this](transport::reply_message reply, transport::handled_callback handled) {
    handle(reply.saga, reply.to_trigger());
    handled();
  });
}

void driver::serve(const std::string& service,
                   std::function<storage::stored_reply(const transport::command_message&)> handler) {
  auto& inbox = inboxes_[service];
  inbox = std::make_unique<storage::memory_inbox>();
  transport_.on_command(service, [this, box = inbox.get(), handler = std::move(handler)](
                                     transport::command_message command, transport::handled_callback handled) {
    const auto stored = storage::handle_command(*box, command.command_id, command.compensates,
                                                [&](storage::transaction&) { return handler(command); });
    transport_.send_reply(
        command.reply_to,
        transport::reply_message::answering(command, stored.result, stored.payload, stored.reason, now_), nullptr);
    handled();
  });
}

const definition& driver::definition_of(const std::string& type) const {
  auto it = definitions_.find(type);
  if (it == definitions_.end()) throw std::invalid_argument("no definition registered for saga type '" + type + "'");
  return it->second;
}

saga_state& driver::cached(const saga_id& id) {
  auto it = states_.find(id);
  if (it == states_.end()) it = states_.emplace(id, storage::fold_recorded(id, store_.load(id))).first;
  return it->second;
}

saga_id driver::start(const std::string& type, const std::string& input_json, const std::string& idempotency_key) {
  const definition& def = definition_of(type);
  if (!idempotency_key.empty())
    if (auto existing = store_.find_by_idempotency_key(type, idempotency_key)) return *existing;
  const std::uint64_t hi = next_random(rng_);
  const saga_id id = saga_id::from_words(hi, next_random(rng_));
  states_[id].id = id;
  try {
    const decision d = process(id, def, triggers::start{input_json, idempotency_key});
    if (!d.rejected.empty()) throw std::invalid_argument("start of saga type '" + type + "' refused: " + d.rejected);
  } catch (const storage::duplicate_idempotency_key& e) {
    states_.erase(id);
    return e.existing();
  } catch (...) {
    states_.erase(id);
    throw;
  }
  return id;
}

decision driver::handle(const saga_id& id, const trigger& t) {
  const saga_state& state = cached(id);
  if (state.status == saga_status::not_started) {
    decision d;
    d.ignored = "trigger for unknown saga " + id.to_string();
    ignored_.push_back(d.ignored);
    return d;
  }
  return process(id, definition_of(state.type), t);
}

decision driver::process(const saga_id& id, const definition& def, const trigger& t) {
  const std::uint64_t entropy = next_random(rng_);
  for (int attempt = 1;; ++attempt) {
    const bool fresh = !states_.count(id);
    const saga_state& state = cached(id);
    decision d = decide(def, state, t, decide_context{now_, entropy});
    if (d.events.empty() && !d.ignored.empty() && !fresh && attempt == 1 &&
        std::holds_alternative<triggers::reply>(t)) {
      states_.erase(id);  // the cached state may be stale (another writer appended): decide on the log
      continue;
    }
    if (!d.ignored.empty()) ignored_.push_back(d.ignored);
    if (d.events.empty()) return d;
    saga_state after = d.after;
    storage::append_request request{id, def.type(), state.seq, d.events, after.status, 0, {}};
    try {
      (void)store_.append(std::move(request));
    } catch (const storage::concurrency_conflict&) {
      states_.erase(id);  // someone else wrote: reload and decide again
      if (attempt < 3) continue;
      throw;
    }
    const auto effects = effects_of(after, d.events);
    states_[id] = std::move(after);
    perform(effects);
    pump();
    return d;
  }
}

decision driver::reply(const transport::command_message& command, triggers::outcome result, const std::string& payload,
                       const std::string& reason) {
  return handle(command.saga, triggers::reply{command.command_id, command.attempt, result, payload, reason});
}

std::vector<transport::command_message> driver::take_commands(const std::string& service) {
  return transport_.take_commands(service);
}

void driver::advance(duration d) {
  const time_point target = now_ + d;
  while (!timers_.empty() && timers_.begin()->first <= target) {
    const auto node = timers_.extract(timers_.begin());
    if (node.key() > now_) now_ = node.key();
    handle(node.mapped().first, node.mapped().second);
  }
  now_ = target;
}

decision driver::cancel(const saga_id& id, const std::string& reason, const std::string& by) {
  return handle(id, triggers::cancel{reason, by});
}

decision driver::retry(const saga_id& id, const std::string& reason, const std::string& by) {
  return handle(id, triggers::operator_action{triggers::operator_verb::retry, {}, reason, by});
}

decision driver::skip(const saga_id& id, const std::string& step, const std::string& reason, const std::string& by) {
  return handle(id, triggers::operator_action{triggers::operator_verb::skip, step, reason, by});
}

std::size_t driver::crash_and_recover() {
  states_.clear();
  timers_.clear();
  const auto unfinished = store_.list_unfinished({});
  for (const auto& summary : unfinished) perform(recovery_effects(cached(summary.id)));
  pump();
  return unfinished.size();
}

saga_state driver::state(const saga_id& id) { return storage::fold_recorded(id, store_.load(id)); }

std::vector<event> driver::events(const saga_id& id) {
  std::vector<event> out;
  for (const auto& r : store_.load(id)) out.push_back(r.to_event());
  return out;
}

void driver::perform(const std::vector<effect>& effects) {
  for (const auto& e : effects) {
    if (const auto* send = std::get_if<effects::send_command>(&e)) {
      transport_.send_command(transport::command_message::from(*send, send->saga_type, now_), nullptr);
    } else if (const auto* timer = std::get_if<effects::arm_timer>(&e)) {
      timers_.emplace(timer->due, std::make_pair(timer->saga, timer->timer));
    } else if (const auto* done = std::get_if<effects::saga_finished>(&e)) {
      finished_.push_back(*done);
    }
  }
}

void driver::pump() {
  if (pumping_) return;
  pumping_ = true;
  try {
    transport_.pump();
  } catch (...) {
    pumping_ = false;
    throw;
  }
  pumping_ = false;
}

}  // namespace saga::testing
