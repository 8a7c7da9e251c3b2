// saga/definition.hpp — a saga definition: immutable, validated data built by a fluent, typed DSL.
#pragma once

#include "saga/json.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace saga {

using duration = std::chrono::milliseconds;

// Thrown by build() for an invalid definition; the message names the saga type and the culprit.
class definition_error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Garcia-Molina/Richardson step kinds.
enum class step_kind {
  compensatable,  // can be undone by its compensation while the saga has not passed its pivot
  pivot,          // the go/no-go point: once it succeeds the saga only goes forward, nothing is compensated
  retriable,      // guaranteed to succeed eventually: retried, never compensated; exhausting it parks the saga
};

[[nodiscard]] const char* to_string(step_kind kind) noexcept;

// How often and how patiently an action (a step or a compensation) is attempted.
struct retry_policy {
  std::uint32_t max_attempts = 3;  // attempts in all, the first one included (>= 1)
  duration initial_backoff{100};   // wait before the second attempt
  duration max_backoff{10'000};    // cap on any wait
  double multiplier = 2.0;         // growth of the wait per attempt (>= 1)
  double jitter = 0.2;             // +/- fraction of the wait drawn from the seed in the event (0..1)
  duration timeout{30'000};        // how long one attempt may wait for its reply

  // The wait before attempt `next_attempt` (>= 2), jittered by `seed`; pure and deterministic.
  [[nodiscard]] duration backoff(std::uint32_t next_attempt, std::uint64_t seed) const noexcept;
};

// Untyped payload builder: saga data (JSON) -> command payload (JSON).
using payload_builder = std::function<std::string(const std::string& data)>;
// Untyped reply merger: (saga data, reply payload) -> new saga data (all JSON).
using reply_merger = std::function<std::string(const std::string& data, const std::string& reply)>;

// One participant command: where it goes and how its payload is built from the saga data.
struct action_definition {
  std::string service;       // target participant service (its command topic is derived from it)
  std::string command_type;  // the command's type name, e.g. "reserve_inventory"
  payload_builder build;     // builds the payload from the saga data
  retry_policy retry;        // attempts, backoff and per-attempt timeout
};

// One step of a saga, as validated by build().
struct step_definition {
  std::string name;
  step_kind kind = step_kind::compensatable;
  std::vector<std::string> after;       // names of the steps that must succeed first
  std::vector<std::size_t> depends_on;  // the same, as indexes into definition::steps()
  action_definition invoke;
  reply_merger on_reply;                          // may be empty: the reply does not change the data
  std::optional<action_definition> compensation;  // absent for pivot and retriable steps (and no-op ones)
};

// An immutable, validated saga definition. Cheap to copy (shared).
class definition {
 public:
  // Saga type name, e.g. "order".
  [[nodiscard]] const std::string& type() const noexcept { return impl_->type; }
  // Definition version; a running saga keeps the version it started with.
  [[nodiscard]] std::uint32_t version() const noexcept { return impl_->version; }
  // Fingerprint of the structure (steps, kinds, order, targets); recorded when a saga starts.
  [[nodiscard]] const std::string& fingerprint() const noexcept { return impl_->fingerprint; }
  // Steps in declaration order.
  [[nodiscard]] const std::vector<step_definition>& steps() const noexcept { return impl_->steps; }
  // The step with this name, or nullptr.
  [[nodiscard]] const step_definition* find(std::string_view name) const noexcept;
  // Index of the step with this name; throws std::out_of_range when unknown.
  [[nodiscard]] std::size_t index_of(std::string_view name) const;
  // Index of the pivot step, if there is one.
  [[nodiscard]] std::optional<std::size_t> pivot() const noexcept { return impl_->pivot; }

  // Validates and freezes; throws definition_error naming the culprit. Used by the typed builder.
  [[nodiscard]] static definition make(std::string type, std::uint32_t version, std::vector<step_definition> steps);

 private:
  struct impl {
    std::string type;
    std::uint32_t version = 0;
    std::vector<step_definition> steps;
    std::optional<std::size_t> pivot;
    std::string fingerprint;
  };
  explicit definition(std::shared_ptr<const impl> i) : impl_(std::move(i)) {}
  std::shared_ptr<const impl> impl_;
};

namespace detail {
template <class F>
struct callable_traits : callable_traits<decltype(&F::operator())> {};
template <class C, class R, class... A>
struct callable_traits<R (C::*)(A...) const> {
  using result = R;
  using args = std::tuple<std::remove_cvref_t<A>...>;
};
template <class C, class R, class... A>
struct callable_traits<R (C::*)(A...)> : callable_traits<R (C::*)(A...) const> {};
template <class R, class... A>
struct callable_traits<R (*)(A...)> : callable_traits<R (std::function<R(A...)>::*)(A...) const> {};

template <class F>
struct is_std_function : std::false_type {};
template <class S>
struct is_std_function<std::function<S>> : std::true_type {};

// True when `f` is a callable that holds nothing: an empty std::function, a null function pointer, nullptr.
template <class F>
[[nodiscard]] bool is_empty_callable(const F& f) noexcept {
  if constexpr (std::is_null_pointer_v<F>)
    return true;
  else if constexpr (std::is_pointer_v<F> || std::is_member_pointer_v<F> || is_std_function<F>::value)
    return f == nullptr;
  else
    return false;
}
}  // namespace detail

// Fluent, typed builder: `Data` is the saga's data struct (cereal-serializable). Every call returns *this;
// calls that configure a step apply to the step most recently opened with step(). Misuse is reported by build().
template <class Data>
class definition_builder {
 public:
  definition_builder(std::string type, std::uint32_t version) : type_(std::move(type)), version_(version) {}

  // Opens a new step; later calls configure it.
  definition_builder& step(std::string name) {
    steps_.emplace_back();
    steps_.back().name = std::move(name);
    return *this;
  }
  // Runs the current step only after these steps succeeded (instead of after the previously declared step).
  definition_builder& after(std::initializer_list<std::string> names) {
    if (auto* s = current("after")) {
      s->after.insert(s->after.end(), names.begin(), names.end());
      explicit_after_.push_back(s->name);
    }
    return *this;
  }
  definition_builder& after(std::string name) { return after({std::move(name)}); }
  // The current step sends `command_type` to `service` with the payload `payload(data)` returns. An empty
  // std::function or a null function pointer makes build() fail naming the step.
  template <class F>
  definition_builder& invoke(std::string service, std::string command_type, F payload) {
    if (auto* s = current("invoke"))
      s->invoke = make_action(std::move(service), std::move(command_type), std::move(payload));
    return *this;
  }
  // Merges the current step's reply into the saga data: `merge(Data&, const Reply&)`.
  template <class F>
  definition_builder& on_reply(F merge) {
    using reply_t = std::tuple_element_t<1, typename detail::callable_traits<F>::args>;
    if (auto* s = current("on_reply"); s && detail::is_empty_callable(merge))
      misuse_.push_back("on_reply() on step '" + s->name + "' was given an empty function");
    else if (s)
      s->on_reply = [merge = std::move(merge)](const std::string& data, const std::string& reply) {
        Data d = from_json<Data>(data);
        merge(d, from_json<reply_t>(reply));
        return to_json(d);
      };
    return *this;
  }
  // The current step is compensatable and is undone by sending `command_type` to `service` with the payload
  // `payload(data)` returns (empty or null: build() fails naming the step).
  template <class F>
  definition_builder& compensate(std::string service, std::string command_type, F payload) {
    if (auto* s = current("compensate")) {
      s->compensation = make_action(std::move(service), std::move(command_type), std::move(payload));
      if (s->kind != step_kind::compensatable) conflicts_.push_back(s->name);
      declared_kind_.push_back(s->name);
    }
    return *this;
  }
  // The current step is compensatable but has nothing to undo (a check, a read).
  definition_builder& no_compensation() {
    if (auto* s = current("no_compensation")) declared_kind_.push_back(s->name);
    return *this;
  }
  // The current step is the pivot.
  definition_builder& pivot() { return kind(step_kind::pivot, "pivot"); }
  // The current step is retriable (after the pivot, or a step that cannot fail for business reasons).
  definition_builder& retriable() { return kind(step_kind::retriable, "retriable"); }
  // Retry policy for the current step's command.
  definition_builder& retry(retry_policy p) {
    if (auto* s = current("retry")) {
      s->invoke.retry = p;
      retry_set_.push_back(s->name);
    }
    return *this;
  }
  // Retry policy for the current step's compensation (set after compensate()).
  definition_builder& compensation_retry(retry_policy p) {
    if (auto* s = current("compensation_retry")) {
      if (s->compensation)
        s->compensation->retry = p;
      else
        misuse_.push_back("compensation_retry() on step '" + s->name + "' before compensate()");
    }
    return *this;
  }
  // Per-attempt timeout of the current step's command.
  definition_builder& timeout(duration t) {
    if (auto* s = current("timeout")) s->invoke.retry.timeout = t;
    return *this;
  }

  // Validates and returns the immutable definition; throws definition_error naming what is wrong.
  [[nodiscard]] definition build() const {
    if (!misuse_.empty()) throw definition_error("saga '" + type_ + "': " + misuse_.front());
    std::vector<step_definition> steps = steps_;
    for (auto& s : steps) {
      const bool declared = contains(declared_kind_, s.name);
      if (contains(conflicts_, s.name))
        throw definition_error("saga '" + type_ + "': step '" + s.name + "' is " + to_string(s.kind) +
                               " and cannot have a compensation");
      if (s.kind == step_kind::compensatable && !declared)
        throw definition_error("saga '" + type_ + "': step '" + s.name +
                               "' declares no compensation; add compensate(...), no_compensation(), pivot() or "
                               "retriable()");
      if (s.kind == step_kind::retriable && !contains(retry_set_, s.name)) s.invoke.retry.max_attempts = 10;
    }
    // Without after(), a step runs after the previously declared one.
    for (std::size_t i = 1; i < steps.size(); ++i)
      if (!contains(explicit_after_, steps[i].name)) steps[i].after = {steps[i - 1].name};
    return definition::make(type_, version_, std::move(steps));
  }

 private:
  static bool contains(const std::vector<std::string>& v, const std::string& s) {
    for (const auto& x : v)
      if (x == s) return true;
    return false;
  }
  step_definition* current(const char* what) {
    if (steps_.empty()) {
      misuse_.push_back(std::string(what) + "() called before any step()");
      return nullptr;
    }
    return &steps_.back();
  }
  definition_builder& kind(step_kind k, const char* what) {
    if (auto* s = current(what)) {
      if (s->compensation) conflicts_.push_back(s->name);
      s->kind = k;
      declared_kind_.push_back(s->name);
    }
    return *this;
  }
  // An empty std::function or a null function pointer leaves `build` empty, so build() reports the step as having
  // no payload builder instead of accepting a definition that would fail when the command is sent.
  template <class F>
  static action_definition make_action(std::string service, std::string command_type, F payload) {
    action_definition a;
    a.service = std::move(service);
    a.command_type = std::move(command_type);
    if constexpr (!std::is_null_pointer_v<F>) {
      if (!detail::is_empty_callable(payload))
        a.build = [payload = std::move(payload)](const std::string& data) {
          return to_json(payload(from_json<Data>(data)));
        };
    }
    return a;
  }

  std::string type_;
  std::uint32_t version_;
  std::vector<step_definition> steps_;
  std::vector<std::string> explicit_after_, declared_kind_, conflicts_, retry_set_, misuse_;
};

// Starts a definition of saga type `type`, version `version`, whose data is `Data`.
template <class Data>
[[nodiscard]] definition_builder<Data> define(std::string type, std::uint32_t version) {
  return definition_builder<Data>(std::move(type), version);
}

}  // namespace saga
