#include "saga/storage/event_store.hpp"
#include "saga/storage/inbox.hpp"

namespace saga::storage {

namespace {
class no_database final : public transaction {
 public:
  std::vector<row> exec(std::string_view sql, const std::vector<std::optional<std::string>>&) override {
    throw store_error("memory_inbox has no database; cannot run: " + std::string(sql.substr(0, 80)));
  }
};
}  // namespace

stored_reply memory_inbox::process(const std::string& command_id, const std::function<stored_reply(transaction&)>& work,
                                   bool* first_delivery) {
  // The lock is held while the handler runs: one command id is never processed twice concurrently.
  std::lock_guard lock(mutex_);
  if (auto it = replies_.find(command_id); it != replies_.end()) {
    if (first_delivery) *first_delivery = false;
    return it->second;
  }
  if (first_delivery) *first_delivery = true;
  no_database tx;
  stored_reply reply = work(tx);
  if (reply.result != triggers::outcome::retryable_failure) replies_.emplace(command_id, reply);
  return reply;
}

stored_reply handle_command(inbox& box, const std::string& command_id, const std::string& compensates,
                            const std::function<stored_reply(transaction&)>& work, bool* ran) {
  if (ran) *ran = false;
  if (!compensates.empty()) {
    const stored_reply forward = box.process(compensates, [](transaction&) {
      return stored_reply{triggers::outcome::failure, "{}", "compensated before it ran"};
    });
    if (forward.result != triggers::outcome::success) {
      // The forward command never took effect (and now never will): nothing to undo.
      return box.process(
          command_id,
          [](transaction&) {
            return stored_reply{triggers::outcome::success, R"({"nothing_to_undo":true})", ""};
          },
          ran);
    }
  }
  return box.process(command_id, work, ran);
}

std::vector<inbox::command_result> inbox::handle_batch(const std::vector<command_work>& commands) {
  std::vector<command_result> results(commands.size());
  for (std::size_t i = 0; i < commands.size(); ++i) {
    try {
      results[i].reply =
          handle_command(*this, commands[i].command_id, commands[i].compensates, commands[i].work, &results[i].ran);
    } catch (...) {
      results[i].error = std::current_exception();
    }
  }
  return results;
}

std::optional<stored_reply> memory_inbox::find(const std::string& command_id) {
  std::lock_guard lock(mutex_);
  if (auto it = replies_.find(command_id); it != replies_.end()) return it->second;
  return std::nullopt;
}

}  // namespace saga::storage
