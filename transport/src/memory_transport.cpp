#include "saga/transport/memory_transport.hpp"

namespace saga::transport {

namespace {
bool take_failure(std::size_t& failures) {
  if (failures == 0) return false;
  --failures;
  return true;
}
}  // namespace

void memory_transport::send_command(const command_message& command, delivery_callback done) {
  bool failed = false;
  bool retryable = true;
  {
    std::lock_guard lock(mutex_);
    failed = take_failure(failures_);
    retryable = failures_retryable_;
    if (!failed) {
      commands_.push_back(command);
      log_.push_back(command);
    }
  }
  // Callbacks run outside the lock: they may send again.
  if (done) done(failed ? std::make_exception_ptr(transport_error("injected send failure", retryable)) : nullptr);
}

void memory_transport::send_reply(const std::string& reply_to, const reply_message& reply, delivery_callback done) {
  bool failed = false;
  bool retryable = true;
  {
    std::lock_guard lock(mutex_);
    failed = take_failure(failures_);
    retryable = failures_retryable_;
    if (!failed) replies_.emplace_back(reply_to, reply);
  }
  if (done) done(failed ? std::make_exception_ptr(transport_error("injected send failure", retryable)) : nullptr);
}

void memory_transport::on_reply(const std::string& saga_type, reply_handler handler) {
  std::lock_guard lock(mutex_);
  reply_handlers_[saga_type] = std::move(handler);
}

void memory_transport::on_command(const std::string& service, command_handler handler) {
  std::lock_guard lock(mutex_);
  command_handlers_[service] = std::move(handler);
}

std::size_t memory_transport::pump() {
  std::size_t delivered = 0;
  for (;;) {
    std::function<void()> next;
    {
      std::lock_guard lock(mutex_);
      for (auto it = replies_.begin(); it != replies_.end() && !next; ++it) {
        if (auto h = reply_handlers_.find(it->first); h != reply_handlers_.end()) {
          next = [handler = h->second, message = it->second] { handler(message, [] {}); };
          replies_.erase(it);
          break;
        }
      }
      for (auto it = commands_.begin(); it != commands_.end() && !next; ++it) {
        if (auto h = command_handlers_.find(it->service); h != command_handlers_.end()) {
          next = [handler = h->second, message = *it] { handler(message, [] {}); };
          commands_.erase(it);
          break;
        }
      }
    }
    if (!next) return delivered;
    next();  // outside the lock: handlers send more messages
    ++delivered;
  }
}

std::vector<command_message> memory_transport::take_commands(const std::string& service) {
  std::lock_guard lock(mutex_);
  std::vector<command_message> out;
  for (auto it = commands_.begin(); it != commands_.end();) {
    if ((service.empty() || it->service == service) && !command_handlers_.count(it->service)) {
      out.push_back(std::move(*it));
      it = commands_.erase(it);
    } else {
      ++it;
    }
  }
  return out;
}

std::vector<command_message> memory_transport::sent_commands() const {
  std::lock_guard lock(mutex_);
  return log_;
}

void memory_transport::fail_next_send(std::size_t count, bool retryable) {
  std::lock_guard lock(mutex_);
  failures_ += count;
  failures_retryable_ = retryable;
}

void memory_transport::dead_letter(const command_message& command, const std::string& reason, delivery_callback done) {
  {
    std::lock_guard lock(mutex_);
    dead_letters_.emplace_back(command, reason);
  }
  if (done) done(nullptr);
}

std::vector<std::pair<command_message, std::string>> memory_transport::dead_letters() const {
  std::lock_guard lock(mutex_);
  return dead_letters_;
}

void memory_transport::set_reply_partitions(std::int32_t count) {
  std::lock_guard lock(mutex_);
  partitions_ = count;
}

void memory_transport::on_partitions_assigned(partitions_callback callback) {
  std::lock_guard lock(mutex_);
  assigned_ = std::move(callback);
}

void memory_transport::on_partitions_revoked(partitions_callback callback) {
  std::lock_guard lock(mutex_);
  revoked_ = std::move(callback);
}

std::optional<std::int32_t> memory_transport::reply_partition(const std::string&, const saga_id& saga) {
  std::lock_guard lock(mutex_);
  if (partitions_ <= 0) return std::nullopt;
  return static_cast<std::int32_t>(std::hash<saga_id>{}(saga) % static_cast<std::size_t>(partitions_));
}

bool memory_transport::partitions_replies() {
  std::lock_guard lock(mutex_);
  return partitions_ > 0;
}

std::optional<std::int32_t> memory_transport::reply_partitions(const std::string&) {
  std::lock_guard lock(mutex_);
  if (partitions_ <= 0) return std::nullopt;
  return partitions_;
}

void memory_transport::assign(const std::vector<topic_partition>& partitions) {
  partitions_callback cb;
  {
    std::lock_guard lock(mutex_);
    cb = assigned_;
  }
  if (cb) cb(partitions);
}

void memory_transport::revoke(const std::vector<topic_partition>& partitions) {
  partitions_callback cb;
  {
    std::lock_guard lock(mutex_);
    cb = revoked_;
  }
  if (cb) cb(partitions);
}

}  // namespace saga::transport
