// saga/storage/inbox.hpp — a participant's inbox: each command id is applied once, its reply stored with its effect.
#pragma once

#include "saga/decide.hpp"

#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace saga::storage {

// The handler's window into the participant's own database transaction (its writes commit with the reply).
class transaction {
 public:
  virtual ~transaction() = default;
  using row = std::vector<std::optional<std::string>>;
  // Runs one parameterized statement ($1, $2, … bound to `params`; nullopt = NULL) and returns its rows as text.
  // Throws store_error on failure (the whole transaction is then rolled back). On PostgreSQL a SELECT, INSERT, UPDATE,
  // DELETE, WITH or VALUES text is prepared once per connection on its first use (pass values as parameters).
  virtual std::vector<row> exec(std::string_view sql, const std::vector<std::optional<std::string>>& params = {}) = 0;
};

// What a participant answers to a command.
struct stored_reply {
  triggers::outcome result = triggers::outcome::success;
  std::string payload = "{}";  // JSON
  std::string reason;
  friend bool operator==(const stored_reply&, const stored_reply&) = default;
};

// The dedup store. `process` is the whole protocol:
//  - command id seen before: return the stored reply; `work` does not run;
//  - otherwise run `work(tx)` and store its reply in the same transaction as its writes, then commit;
//  - a retryable failure (or an exception from `work`) rolls everything back and stores nothing, so a resend
//    runs the handler again. Exceptions from `work` propagate after the rollback.
// `first_delivery`, when given, is set to whether `work` ran.
class inbox {
 public:
  virtual ~inbox() = default;
  virtual stored_reply process(const std::string& command_id, const std::function<stored_reply(transaction&)>& work,
                               bool* first_delivery = nullptr) = 0;
  // The stored reply of a command id, if any.
  [[nodiscard]] virtual std::optional<stored_reply> find(const std::string& command_id) = 0;

  // One delivered command for handle_batch.
  struct command_work {
    std::string command_id;
    std::string compensates;  // the forward command a compensation undoes; empty for a forward command
    std::function<stored_reply(transaction&)> work;
  };
  // What handle_batch did with one command.
  struct command_result {
    stored_reply reply;
    bool ran = false;          // the first delivery: its reply was produced now (see handle_command)
    std::exception_ptr error;  // handle_command threw this (nothing of this command was committed)
  };
  // handle_command for each of `commands`, in order; results[i] belongs to commands[i]. Never throws: a command
  // whose handling threw has `error` set. The default handles them one at a time; postgres_inbox handles the whole
  // batch in one transaction (one commit) when every handler answers success or failure.
  [[nodiscard]] virtual std::vector<command_result> handle_batch(const std::vector<command_work>& commands);
};

// The participant protocol for one delivered command, on top of an inbox:
//  - a forward command (`compensates` empty) runs `work` once per command id; a repeat gets the stored reply;
//  - a compensation first fences the forward command it undoes: if that never ran, a definite failure
//    ("compensated before it ran") is stored for it, so a late duplicate can never apply it, and the compensation
//    answers success without running `work` — there is nothing to undo; if it was rejected, likewise; if it
//    succeeded, `work` runs once for the compensation's own command id.
// `ran`, when given, is set to whether this delivery was the first (its reply was produced now, by `work` or by
// the fence, rather than read back from the inbox).
stored_reply handle_command(inbox& box, const std::string& command_id, const std::string& compensates,
                            const std::function<stored_reply(transaction&)>& work, bool* ran = nullptr);

// In-memory inbox for tests: `transaction::exec` is not available (throws); handlers keep their own state.
class memory_inbox final : public inbox {
 public:
  stored_reply process(const std::string& command_id, const std::function<stored_reply(transaction&)>& work,
                       bool* first_delivery = nullptr) override;
  [[nodiscard]] std::optional<stored_reply> find(const std::string& command_id) override;

 private:
  std::mutex mutex_;
  std::unordered_map<std::string, stored_reply> replies_;
};

}  // namespace saga::storage
