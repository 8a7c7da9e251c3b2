#include "saga/transport/participant.hpp"

#include "saga/storage/event_store.hpp"

#include <algorithm>
#include <stdexcept>
#include <thread>

namespace saga::transport {

namespace {
// A handler's reply that cannot travel: its command is dead-lettered with this reason.
class reply_too_large : public std::length_error {
 public:
  using std::length_error::length_error;
};
}  // namespace

storage::stored_reply success(std::string payload) {
  return storage::stored_reply{triggers::outcome::success, std::move(payload), {}};
}
storage::stored_reply failure(std::string reason, std::string payload) {
  return storage::stored_reply{triggers::outcome::failure, std::move(payload), std::move(reason)};
}
storage::stored_reply retryable(std::string reason) {
  return storage::stored_reply{triggers::outcome::retryable_failure, "{}", std::move(reason)};
}

participant::participant(transport& t, storage::inbox& inbox, participant_options options)
    : transport_(t), inbox_(inbox), options_(std::move(options)) {
  if (options_.service.empty()) throw std::invalid_argument("participant_options.service is empty");
  if (!options_.log) options_.log = stderr_logger();
}

participant& participant::handle(std::string command_type, handler h) {
  if (started_) throw std::logic_error("participant " + options_.service + ": handle() after start()");
  if (command_type.empty() || !h)
    throw std::invalid_argument("participant " + options_.service + ": empty command type or handler");
  if (!handlers_.emplace(command_type, std::move(h)).second)
    throw std::invalid_argument("participant " + options_.service + ": duplicate handler for command type " +
                                command_type);
  return *this;
}

void participant::start() {
  if (started_) throw std::logic_error("participant " + options_.service + ": start() called twice");
  if (handlers_.empty()) throw std::logic_error("participant " + options_.service + ": no handlers registered");
  started_ = true;
  try {
    transport_.on_command(options_.service, [this](command_message command, handled_callback handled) {
      enqueue(std::move(command), std::move(handled));
    });
  } catch (...) {
    started_ = false;  // nothing subscribed: start() may be called again (a retryable transport_error, say)
    throw;
  }
}

participant::~participant() {
  {
    std::lock_guard lock(queue_mutex_);
    stopping_ = true;
  }
  queue_cv_.notify_all();
  for (auto& w : workers_)
    if (w.joinable()) w.join();
}

void participant::enqueue(command_message command, handled_callback handled) noexcept {
  try {
    if (options_.workers == 0) return process(std::move(command), std::move(handled));
    {
      std::lock_guard lock(queue_mutex_);
      if (stopping_) return;  // left unhandled: redelivered to the next owner
      if (workers_.empty())
        for (std::size_t i = 0; i < options_.workers; ++i) workers_.emplace_back([this] { work_loop(); });
      queue_.push_back(queued{std::move(command), std::move(handled)});
    }
    queue_cv_.notify_one();
  } catch (const std::exception& e) {
    say(log_level::error, std::string("cannot queue a command (left unhandled; redelivered later): ") + e.what());
  }
}

void participant::work_loop() {
  std::vector<queued> batch;
  for (;;) {
    {
      std::unique_lock lock(queue_mutex_);
      queue_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      const std::size_t most = std::max<std::size_t>(1, options_.batch_size);
      while (!queue_.empty() && batch.size() < most) {
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    handle_batch(batch);
    batch.clear();
  }
}

const participant::handler* participant::handler_for(command_message& command, std::string& why) const {
  if (command.service != options_.service) {
    // Delivered here, addressed elsewhere (a producer's mistake): not run by whatever handler shares its type. Its
    // dead letter goes where this service's own go.
    why = "addressed to service '" + command.service + "', delivered to service '" + options_.service + "'";
    command.service = options_.service;
    return nullptr;
  }
  auto it = handlers_.find(command.command_type);
  if (it != handlers_.end()) return &it->second;
  std::string known;
  for (const auto& [type, h] : handlers_) known += (known.empty() ? "" : ", ") + type;
  why =
      "unknown command type '" + command.command_type + "' for service " + options_.service + " (known: " + known + ")";
  return nullptr;
}

storage::stored_reply participant::run_handler(const handler& h, const command_message& command,
                                               storage::transaction& tx) const {
  auto r = h(command, tx);
  // Thrown inside: the handler's writes roll back. The reason travels in the reply too (in a header).
  if (r.payload.size() + r.reason.size() > options_.max_reply_bytes) {
    std::string what = "the reply payload of " + std::to_string(r.payload.size()) + " bytes";
    if (!r.reason.empty()) what += " and reason of " + std::to_string(r.reason.size()) + " bytes";
    what += " to " + command.command_type + (r.reason.empty() ? " exceeds" : " exceed") +
            " participant_options::max_reply_bytes (" + std::to_string(options_.max_reply_bytes) + ")";
    throw reply_too_large(what);
  }
  return r;
}

void participant::handle_batch(std::vector<queued>& batch) noexcept {
  try {
    std::vector<storage::inbox::command_work> works;
    std::vector<queued*> owners;
    for (auto& q : batch) {
      std::string why;
      const handler* found = handler_for(q.command, why);
      if (!found) {
        park(q.command, why, std::move(q.handled));
        continue;
      }
      const handler& h = *found;
      const command_message& command = q.command;
      works.push_back(storage::inbox::command_work{
          command.command_id, command.compensates,
          [this, &h, &command](storage::transaction& tx) { return run_handler(h, command, tx); }});
      owners.push_back(&q);
    }
    if (works.empty()) return;
    auto results = inbox_.handle_batch(works);
    for (std::size_t i = 0; i < owners.size(); ++i) {
      auto& q = *owners[i];
      if (results[i].error) {  // on its own, with the retries and dead-lettering of process()
        process(std::move(q.command), std::move(q.handled));
        continue;
      }
      finish(std::move(q.command), std::move(results[i].reply), results[i].ran, std::move(q.handled));
    }
  } catch (const std::exception& e) {
    say(log_level::error, std::string("cannot handle a batch (left unhandled; redelivered later): ") + e.what());
  } catch (...) {
    say(log_level::error, "cannot handle a batch (left unhandled; redelivered later)");
  }
}

void participant::finish(command_message command, storage::stored_reply reply, bool first, handled_callback handled) {
  if (!first && reply.result != triggers::outcome::retryable_failure) {
    ++duplicates_;
    say(log_level::debug, "repeat of " + command.command_id + ": answering the stored reply");
  } else if (reply.result == triggers::outcome::retryable_failure) {
    ++retryable_;
  } else {
    ++executed_;
  }
  if (options_.before_reply) options_.before_reply(command, reply);
  send_reply(std::move(command), std::move(reply), std::move(handled), 1);
}

void participant::say(log_level level, const std::string& line) const noexcept {
  try {
    options_.log(level, "participant " + options_.service + ": " + line);
  } catch (...) {
  }
}

void participant::process(command_message command, handled_callback handled) noexcept {
  try {
    std::string why;
    const handler* found = handler_for(command, why);
    if (!found) return park(command, why, std::move(handled));
    const handler& h = *found;
    storage::stored_reply reply;
    bool first = false;
    auto backoff = options_.retry_backoff;
    auto outage_backoff =
        std::max(options_.retry_backoff, decltype(options_.retry_backoff)(std::chrono::milliseconds(50)));
    auto conflict_backoff = options_.retry_backoff;
    for (std::uint32_t failures = 0, conflicts = 0;;) {
      std::string what;
      try {
        // Dedup by command id; a compensation first fences the forward command it undoes (storage::handle_command).
        reply = storage::handle_command(
            inbox_, command.command_id, command.compensates,
            [&](storage::transaction& tx) { return run_handler(h, command, tx); }, &first);
        break;
      } catch (const reply_too_large& e) {
        ++handler_exceptions_;
        return park(command, e.what(), std::move(handled));  // the same every time: no retry
      } catch (const storage::store_unavailable& e) {
        // The inbox database is unreachable: an outage to wait out, not a poison message. Nothing was committed;
        // the same command runs (or is answered from the inbox) once the database is back. Other store errors (a
        // handler's failed statement) count toward dead-lettering below, like any exception.
        if (transport_.stopping())
          return say(log_level::warning, "stopping during an inbox outage: " + command.command_id +
                                             " left unhandled (redelivered to the next owner)");
        say(log_level::warning, "inbox unavailable for " + command.command_id + ", retrying in " +
                                    std::to_string(outage_backoff.count()) + " ms: " + e.what());
        std::this_thread::sleep_for(outage_backoff);  // failure path only
        outage_backoff = std::min(outage_backoff * 2, decltype(outage_backoff)(std::chrono::seconds(5)));
        continue;
      } catch (const storage::store_error& e) {
        what = e.what();
        // Rolled back by the server (a serialization failure, a deadlock with another worker's transaction): the
        // command is fine and runs again without using up its failures (else it was dead-lettered, and the step
        // lost an attempt to contention).
        if (e.retryable() && ++conflicts <= max_conflict_retries) {
          if (transport_.stopping())
            return say(log_level::warning, "stopping while " + command.command_id +
                                               " meets contention: left unhandled (redelivered to the next owner)");
          say(log_level::info, "transaction of " + command.command_id + " rolled back (" + std::to_string(conflicts) +
                                   "/" + std::to_string(max_conflict_retries) + "), running it again: " + what);
          std::this_thread::sleep_for(conflict_backoff);  // failure path only
          conflict_backoff = std::min(conflict_backoff * 2, decltype(conflict_backoff)(std::chrono::seconds(1)));
          continue;
        }
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {  // not a std::exception: retried and dead-lettered all the same, not left unhandled for good
        what = "an exception that is not a std::exception";
      }
      ++handler_exceptions_;
      if (++failures > options_.max_handler_failures)
        return park(
            command,
            "handler for " + command.command_type + " threw " + std::to_string(failures) + " times; last: " + what,
            std::move(handled));
      say(log_level::warning, "handler for " + command.command_id + " threw (" + std::to_string(failures) + "/" +
                                  std::to_string(options_.max_handler_failures) + "), retrying: " + what);
      std::this_thread::sleep_for(backoff);  // failure path only
      backoff *= 2;
    }
    finish(std::move(command), std::move(reply), first, std::move(handled));
  } catch (const std::exception& e) {
    say(log_level::error, "cannot process " + command.command_id + " (left unhandled; redelivered later): " + e.what());
  } catch (...) {
    say(log_level::error, "cannot process " + command.command_id + " (left unhandled; redelivered later)");
  }
}

void participant::send_reply(command_message command, storage::stored_reply stored, handled_callback handled,
                             std::uint32_t attempt) {
  const reply_message reply =
      reply_message::answering(command, stored.result, stored.payload, stored.reason,
                               std::chrono::floor<std::chrono::milliseconds>(std::chrono::system_clock::now()));
  auto reply_to = command.reply_to;
  transport_.send_reply(reply_to, reply,
                        [this, command = std::move(command), stored = std::move(stored), handled = std::move(handled),
                         attempt](std::exception_ptr error) mutable {
                          if (!error) {
                            ++replies_sent_;
                            if (handled) handled();
                            return;
                          }
                          ++reply_failures_;
                          std::string why = "unknown error";
                          bool retry = true;
                          try {
                            std::rethrow_exception(error);
                          } catch (const transport_error& e) {
                            why = e.what();
                            retry = e.retryable();
                          } catch (const std::exception& e) {
                            why = e.what();
                          }
                          if (retry && attempt < options_.max_reply_attempts) {
                            say(log_level::warning, "reply to " + command.command_id + " failed (attempt " +
                                                        std::to_string(attempt) + "), sending again: " + why);
                            send_reply(std::move(command), std::move(stored), std::move(handled), attempt + 1);
                          } else if (!retry && !transport_.stopping()) {
                            // Refused for good (the same stored reply would be refused at every redelivery): the
                            // command is parked with the reason, so that its partition moves on. Its reply stays
                            // in the inbox.
                            park(command, "its reply cannot be sent: " + why, std::move(handled));
                          } else {
                            say(log_level::error, "reply to " + command.command_id +
                                                      " failed for good (left unhandled; "
                                                      "answered from the inbox when redelivered): " +
                                                      why);
                          }
                        });
}

void participant::park(const command_message& command, const std::string& reason, handled_callback handled) {
  ++dead_lettered_;
  say(log_level::warning, "dead letter " + command.command_id + ": " + reason);
  transport_.dead_letter(
      command, reason, [this, id = command.command_id, handled = std::move(handled)](std::exception_ptr error) {
        if (!error) {
          if (handled) handled();
          return;
        }
        try {
          std::rethrow_exception(error);
        } catch (const std::exception& e) {
          say(log_level::error, "cannot park " + id + " (left unhandled; redelivered later): " + e.what());
        }
      });
}

participant_stats participant::stats() const {
  return participant_stats{executed_.load(),           duplicates_.load(),    retryable_.load(),
                           handler_exceptions_.load(), dead_lettered_.load(), replies_sent_.load(),
                           reply_failures_.load()};
}

}  // namespace saga::transport
