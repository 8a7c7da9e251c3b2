#include "saga/testing/scenario.hpp"

namespace saga::testing {

std::string describe(const event_body& body) {
  const auto e = encode(body);
  return e.type + " " + e.payload;
}

std::string diff(const std::vector<event>& actual, const std::vector<event_body>& expected) {
  std::string out;
  const std::size_t n = std::max(actual.size(), expected.size());
  for (std::size_t i = 0; i < n; ++i) {
    const std::string a = i < actual.size() ? describe(actual[i].body) : "(nothing)";
    const std::string e = i < expected.size() ? describe(expected[i]) : "(nothing)";
    if (a != e) out += "  event #" + std::to_string(i + 1) + "\n    expected: " + e + "\n    actual:   " + a + "\n";
  }
  return out.empty() ? out : "decided events differ from the expected ones:\n" + out;
}

scenario::scenario(definition def, saga_id id)
    : def_(std::move(def)), ctx_{time_point(std::chrono::milliseconds(1'700'000'000'000)), 7} {
  state_.id = id;
}

scenario& scenario::at(time_point now) {
  ctx_.now = now;
  return *this;
}

scenario& scenario::entropy(std::uint64_t value) {
  ctx_.entropy = value;
  return *this;
}

scenario& scenario::given(std::vector<event_body> history) {
  for (auto& body : history) {
    event e{state_.seq + 1, ctx_.now, std::move(body)};
    saga::apply(state_, e);
    history_.push_back(std::move(e));
  }
  return *this;
}

decision scenario::when(const trigger& t) const { return decide(def_, state_, t, ctx_); }

decision scenario::apply(const trigger& t) {
  decision d = when(t);
  for (const auto& e : d.events) {
    saga::apply(state_, e);
    history_.push_back(e);
  }
  return d;
}

std::string scenario::then(const trigger& t, const std::vector<event_body>& expected) const {
  const decision d = when(t);
  if (!d.rejected.empty()) return "trigger was rejected: " + d.rejected;
  if (!d.ignored.empty() && !expected.empty()) return "trigger was ignored: " + d.ignored;
  return diff(d.events, expected);
}

}  // namespace saga::testing
