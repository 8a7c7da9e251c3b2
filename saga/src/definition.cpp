#include "saga/definition.hpp"

#include <algorithm>
#include <cmath>
#include <functional>

namespace saga {

const char* to_string(step_kind kind) noexcept {
  switch (kind) {
    case step_kind::compensatable: return "compensatable";
    case step_kind::pivot: return "pivot";
    case step_kind::retriable: return "retriable";
  }
  return "unknown";
}

duration retry_policy::backoff(std::uint32_t next_attempt, std::uint64_t seed) const noexcept {
  const double exponent = next_attempt >= 2 ? static_cast<double>(next_attempt - 2) : 0.0;
  // No initial wait stays none, whatever the growth (0 times an overflowed power would be NaN, and converting NaN to
  // an integer is undefined); an overflowed growth is the cap.
  double wait = initial_backoff.count() == 0
                    ? 0.0
                    : std::min(static_cast<double>(initial_backoff.count()) * std::pow(multiplier, exponent),
                               static_cast<double>(max_backoff.count()));
  // splitmix64 of the seed -> uniform in [0, 1)
  std::uint64_t z = seed + 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  const double unit = static_cast<double>(z >> 11) * 0x1.0p-53;
  wait *= 1.0 - jitter + 2.0 * jitter * unit;
  wait = std::clamp(wait, 0.0, static_cast<double>(max_backoff.count()));
  return duration{static_cast<duration::rep>(wait)};
}

const step_definition* definition::find(std::string_view name) const noexcept {
  for (const auto& s : impl_->steps)
    if (s.name == name) return &s;
  return nullptr;
}

std::size_t definition::index_of(std::string_view name) const {
  for (std::size_t i = 0; i < impl_->steps.size(); ++i)
    if (impl_->steps[i].name == name) return i;
  throw std::out_of_range("saga '" + impl_->type + "' has no step '" + std::string(name) + "'");
}

namespace {

[[noreturn]] void fail(const std::string& type, const std::string& what) {
  throw definition_error("saga '" + type + "': " + what);
}

void check_policy(const std::string& type, const std::string& where, const retry_policy& p) {
  if (p.max_attempts < 1) fail(type, where + ": max_attempts must be at least 1");
  // Written so that NaN fails too (every comparison with it is false).
  if (!(p.multiplier >= 1.0) || !std::isfinite(p.multiplier))
    fail(type, where + ": backoff multiplier must be a finite number of at least 1");
  if (!(p.jitter >= 0.0 && p.jitter <= 1.0)) fail(type, where + ": jitter must be between 0 and 1");
  if (p.initial_backoff.count() < 0 || p.max_backoff < p.initial_backoff)
    fail(type, where + ": backoff must satisfy 0 <= initial <= max");
  if (p.timeout.count() <= 0) fail(type, where + ": timeout must be positive");
  // A deadline or a retry's due time is now plus one of these: a longer one overflows the clock's arithmetic
  // (duration::max() meant as "no timeout" wrapped into the past, and every attempt timed out at once).
  constexpr duration longest = std::chrono::hours(24 * 365);
  if (p.timeout > longest)
    fail(type, where + ": timeout must be at most 365 days (" + std::to_string(longest.count()) + " ms); got " +
                   std::to_string(p.timeout.count()) + " ms");
  if (p.max_backoff > longest)
    fail(type, where + ": max_backoff must be at most 365 days (" + std::to_string(longest.count()) + " ms); got " +
                   std::to_string(p.max_backoff.count()) + " ms");
}

void check_action(const std::string& type, const std::string& where, const action_definition& a) {
  if (a.service.empty()) fail(type, where + " has no target service");
  if (a.command_type.empty()) fail(type, where + " has no command type");
  if (!a.build) fail(type, where + " has no payload builder");
  check_policy(type, where, a.retry);
}

std::string fingerprint_of(const std::string& type, std::uint32_t version, const std::vector<step_definition>& steps) {
  std::string text = type + "|" + std::to_string(version);
  for (const auto& s : steps) {
    text += "|" + s.name + ":" + to_string(s.kind) + ":" + s.invoke.service + "/" + s.invoke.command_type;
    for (const auto& a : s.after) text += "<" + a;
    if (s.compensation) text += "~" + s.compensation->service + "/" + s.compensation->command_type;
  }
  std::uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ULL;
  static constexpr char digits[] = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 15; i >= 0; --i, h >>= 4) out[static_cast<std::size_t>(i)] = digits[h & 0xf];
  return out;
}

}  // namespace

definition definition::make(std::string type, std::uint32_t version, std::vector<step_definition> steps) {
  if (type.empty()) throw definition_error("saga type name is empty");
  if (steps.empty()) fail(type, "has no steps");
  for (std::size_t i = 0; i < steps.size(); ++i) {
    const auto& s = steps[i];
    if (s.name.empty()) fail(type, "step #" + std::to_string(i + 1) + " has an empty name");
    for (std::size_t j = 0; j < i; ++j)
      if (steps[j].name == s.name) fail(type, "duplicate step name '" + s.name + "'");
  }
  std::optional<std::size_t> pivot;
  for (std::size_t i = 0; i < steps.size(); ++i) {
    auto& s = steps[i];
    if (s.invoke.service.empty() && !s.invoke.build) fail(type, "step '" + s.name + "' has no invoke(...)");
    check_action(type, "step '" + s.name + "'", s.invoke);
    if (s.compensation) {
      if (s.kind != step_kind::compensatable)
        fail(type, "step '" + s.name + "' is " + to_string(s.kind) + " and cannot have a compensation");
      check_action(type, "compensation of step '" + s.name + "'", *s.compensation);
      if (s.compensation->service != s.invoke.service)
        fail(type, "step '" + s.name + "' runs on service '" + s.invoke.service + "' and its compensation on '" +
                       s.compensation->service +
                       "'; a compensation goes to the service that ran the step: that service's inbox fences it "
                       "against the forward command, and another service's inbox, with no record of that command, "
                       "would take it for one that never ran and undo nothing");
    }
    if (s.kind == step_kind::pivot) {
      if (pivot) fail(type, "steps '" + steps[*pivot].name + "' and '" + s.name + "' are both pivots; a saga has one");
      pivot = i;
    }
    s.depends_on.clear();
    for (const auto& dep : s.after) {
      if (dep == s.name) fail(type, "step '" + s.name + "' depends on itself");
      auto it = std::find_if(steps.begin(), steps.end(), [&](const step_definition& d) { return d.name == dep; });
      if (it == steps.end()) fail(type, "step '" + s.name + "' depends on unknown step '" + dep + "'");
      const auto idx = static_cast<std::size_t>(it - steps.begin());
      if (std::find(s.depends_on.begin(), s.depends_on.end(), idx) == s.depends_on.end()) s.depends_on.push_back(idx);
    }
  }
  // Cycle detection (depth-first, colouring), reporting the cycle by name.
  std::vector<int> colour(steps.size(), 0);
  std::vector<std::size_t> path;
  std::function<void(std::size_t)> visit = [&](std::size_t i) {
    colour[i] = 1;
    path.push_back(i);
    for (auto d : steps[i].depends_on) {
      if (colour[d] == 1) {
        std::string cycle;
        auto from = std::find(path.begin(), path.end(), d);
        for (auto it = from; it != path.end(); ++it) cycle += steps[*it].name + " -> ";
        fail(type, "dependency cycle: " + cycle + steps[d].name);
      }
      if (colour[d] == 0) visit(d);
    }
    path.pop_back();
    colour[i] = 2;
  };
  for (std::size_t i = 0; i < steps.size(); ++i)
    if (colour[i] == 0) visit(i);
  // A pivot must come after every compensatable step, or that step could complete after the point of no return.
  if (pivot) {
    std::vector<bool> ancestor(steps.size(), false);
    std::function<void(std::size_t)> mark = [&](std::size_t i) {
      for (auto d : steps[i].depends_on)
        if (!ancestor[d]) ancestor[d] = true, mark(d);
    };
    mark(*pivot);
    for (std::size_t i = 0; i < steps.size(); ++i)
      if (steps[i].kind == step_kind::compensatable && !ancestor[i])
        fail(type, "pivot '" + steps[*pivot].name + "' is not ordered after compensatable step '" + steps[i].name +
                       "', which it would strand; add it to the pivot's after(...)");
  }
  auto i = std::make_shared<impl>();
  i->fingerprint = fingerprint_of(type, version, steps);
  i->type = std::move(type);
  i->version = version;
  i->steps = std::move(steps);
  i->pivot = pivot;
  return definition(std::move(i));
}

}  // namespace saga
