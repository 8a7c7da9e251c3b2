#include "saga/runtime/clock.hpp"

#include <condition_variable>
#include <thread>

namespace saga::runtime {

namespace {
time_point wall_now() {
  return std::chrono::time_point_cast<std::chrono::milliseconds>(std::chrono::system_clock::now());
}
}  // namespace

// One thread waits for the earliest due time (a condition variable, no polling) and fires it.
struct system_clock::impl {
  std::mutex mutex;
  std::condition_variable changed;
  std::multimap<time_point, std::function<void()>> queue;
  bool stopping = false;

  void loop() {
    std::unique_lock lock(mutex);
    while (!stopping) {
      if (queue.empty()) {
        changed.wait(lock);
        continue;
      }
      const auto due = queue.begin()->first;
      if (wall_now() < due) {
        changed.wait_until(lock, std::chrono::system_clock::time_point(due.time_since_epoch()));
        continue;
      }
      auto node = queue.extract(queue.begin());
      lock.unlock();
      node.mapped()();
      lock.lock();
    }
  }
};

system_clock::system_clock() : impl_(std::make_shared<impl>()), thread_([state = impl_] { state->loop(); }) {}

// A callback may hold the last reference to what owns this clock (an orchestrator destroyed meanwhile on another
// thread), and so destroy the clock on the timer thread itself: that thread cannot join itself, so it is detached
// and finishes after the callback returns, keeping the shared state alive until then.
system_clock::~system_clock() {
  {
    std::lock_guard lock(impl_->mutex);
    impl_->stopping = true;
  }
  impl_->changed.notify_all();
  if (thread_.get_id() == std::this_thread::get_id())
    thread_.detach();
  else
    thread_.join();
}

time_point system_clock::now() { return wall_now(); }

// The timer thread is woken only when the new callback comes first: otherwise it already waits for an earlier time
// (or is firing one and looks at the queue again before it waits). Every step arms a deadline, mostly later than
// the earliest pending one, so this saves a wake-up of that thread per step.
void system_clock::schedule(time_point due, std::function<void()> fire) {
  bool first = false;
  {
    std::lock_guard lock(impl_->mutex);
    const auto added = impl_->queue.emplace(due, std::move(fire));
    first = added == impl_->queue.begin();  // begin() read after the insertion, not in the same expression
  }
  if (first) impl_->changed.notify_all();
}

manual_clock::manual_clock(time_point start) : now_(start) {}

time_point manual_clock::now() {
  std::lock_guard lock(mutex_);
  return now_;
}

void manual_clock::schedule(time_point due, std::function<void()> fire) {
  std::lock_guard lock(mutex_);
  queue_.emplace(due, std::move(fire));
}

std::size_t manual_clock::advance(duration d) {
  std::size_t fired = 0;
  std::unique_lock lock(mutex_);
  const time_point target = now_ + d;
  while (!queue_.empty() && queue_.begin()->first <= target) {
    auto node = queue_.extract(queue_.begin());
    if (node.key() > now_) now_ = node.key();
    lock.unlock();
    node.mapped()();
    ++fired;
    lock.lock();
  }
  now_ = target;
  return fired;
}

std::size_t manual_clock::pending() {
  std::lock_guard lock(mutex_);
  return queue_.size();
}

}  // namespace saga::runtime
