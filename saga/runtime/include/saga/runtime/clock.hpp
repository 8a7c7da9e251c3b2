// saga/runtime/clock.hpp — the runtime's only source of time: injected, so tests advance a manual clock.
#pragma once

#include "saga/definition.hpp"
#include "saga/event.hpp"

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

namespace saga::runtime {

// Tells the time and calls back when a time comes. Implementations are thread-safe.
class clock {
 public:
  virtual ~clock() = default;
  // The current time.
  [[nodiscard]] virtual time_point now() = 0;
  // Calls `fire` once, at or after `due`, on a thread of the clock's choosing. Never throws.
  virtual void schedule(time_point due, std::function<void()> fire) = 0;
};

// Wall-clock time; callbacks run on a timer thread of its own. Pending callbacks are dropped when destroyed.
class system_clock final : public clock {
 public:
  system_clock();
  ~system_clock() override;
  system_clock(const system_clock&) = delete;
  system_clock& operator=(const system_clock&) = delete;
  [[nodiscard]] time_point now() override;
  void schedule(time_point due, std::function<void()> fire) override;

 private:
  struct impl;
  std::shared_ptr<impl> impl_;  // shared with the timer thread, which may outlive this object (see the destructor)
  std::thread thread_;
};

// A clock that moves only when told to; advance() fires what came due, in order, on the calling thread.
class manual_clock final : public clock {
 public:
  explicit manual_clock(time_point start = time_point(std::chrono::milliseconds(1'700'000'000'000)));
  [[nodiscard]] time_point now() override;
  void schedule(time_point due, std::function<void()> fire) override;
  // Moves time forward by `d`, firing every callback that comes due (each at its own time); returns how many.
  std::size_t advance(duration d);
  // Callbacks waiting.
  [[nodiscard]] std::size_t pending();

 private:
  std::mutex mutex_;
  time_point now_;
  std::multimap<time_point, std::function<void()>> queue_;
};

}  // namespace saga::runtime
