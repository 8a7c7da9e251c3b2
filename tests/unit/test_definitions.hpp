// Small definitions shared by the unit tests.
#pragma once

#include <saga/definition.hpp>

#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>

#include <stdexcept>
#include <string>
#include <vector>

namespace saga_test {

struct data {
  std::string name;
  std::vector<std::string> trail;  // replies merged so far
  template <class A>
  void serialize(A& ar) {
    ar(CEREAL_NVP(name), CEREAL_NVP(trail));
  }
};
struct cmd {
  std::string step;
  std::string name;
  template <class A>
  void serialize(A& ar) {
    ar(CEREAL_NVP(step), CEREAL_NVP(name));
  }
};
struct ack {
  std::string note;
  template <class A>
  void serialize(A& ar) {
    ar(CEREAL_NVP(note));
  }
};

inline auto payload_for(std::string step) {
  return [step](const data& d) { return cmd{step, d.name}; };
}
inline auto merge_note() {
  return [](data& d, const ack& a) { d.trail.push_back(a.note); };
}

inline saga::retry_policy policy(std::uint32_t attempts, std::int64_t timeout_ms = 1000) {
  saga::retry_policy p;
  p.max_attempts = attempts;
  p.initial_backoff = saga::duration{100};
  p.max_backoff = saga::duration{1000};
  p.multiplier = 2.0;
  p.jitter = 0.5;
  p.timeout = saga::duration{timeout_ms};
  return p;
}

// a -> b -> c(pivot) -> d(retriable); a and b compensatable.
inline saga::definition linear(std::uint32_t attempts = 2) {
  return saga::define<data>("linear", 1)
      .step("a")
      .invoke("svc_a", "do_a", payload_for("a"))
      .on_reply(merge_note())
      .retry(policy(attempts))
      .compensate("svc_a", "undo_a", payload_for("undo_a"))
      .compensation_retry(policy(2))
      .step("b")
      .invoke("svc_b", "do_b", payload_for("b"))
      .on_reply(merge_note())
      .retry(policy(attempts))
      .compensate("svc_b", "undo_b", payload_for("undo_b"))
      .compensation_retry(policy(2))
      .step("c")
      .pivot()
      .invoke("svc_c", "do_c", payload_for("c"))
      .retry(policy(attempts))
      .step("d")
      .retriable()
      .invoke("svc_d", "do_d", payload_for("d"))
      .retry(policy(attempts))
      .build();
}

// a -> (b || c) -> d; every step compensatable.
inline saga::definition diamond(std::uint32_t attempts = 2) {
  return saga::define<data>("diamond", 1)
      .step("a")
      .invoke("svc", "do_a", payload_for("a"))
      .retry(policy(attempts))
      .compensate("svc", "undo_a", payload_for("undo_a"))
      .compensation_retry(policy(2))
      .step("b")
      .after("a")
      .invoke("svc", "do_b", payload_for("b"))
      .retry(policy(attempts))
      .compensate("svc", "undo_b", payload_for("undo_b"))
      .compensation_retry(policy(2))
      .step("c")
      .after("a")
      .invoke("svc", "do_c", payload_for("c"))
      .retry(policy(attempts))
      .compensate("svc", "undo_c", payload_for("undo_c"))
      .compensation_retry(policy(2))
      .step("d")
      .after({"b", "c"})
      .invoke("svc", "do_d", payload_for("d"))
      .retry(policy(attempts))
      .compensate("svc", "undo_d", payload_for("undo_d"))
      .compensation_retry(policy(2))
      .build();
}

// a -> (c || b) -> p (pivot) -> d (retriable): b's payload builder always throws, so every saga sticks going
// forward at b, and operators cancel it (compensating a and c), retry it (stuck again) or skip it (on to the pivot).
inline saga::definition blocked(std::uint32_t attempts = 2) {
  return saga::define<data>("blocked", 1)
      .step("a")
      .invoke("svc", "do_a", payload_for("a"))
      .retry(policy(attempts))
      .compensate("svc", "undo_a", payload_for("undo_a"))
      .compensation_retry(policy(2))
      .step("c")
      .after("a")
      .invoke("svc", "do_c", payload_for("c"))
      .retry(policy(attempts))
      .compensate("svc", "undo_c", payload_for("undo_c"))
      .compensation_retry(policy(2))
      .step("b")
      .after("a")
      .invoke("svc", "do_b", [](const data&) -> cmd { throw std::runtime_error("no address"); })
      .compensate("svc", "undo_b", payload_for("undo_b"))
      .compensation_retry(policy(2))
      .step("p")
      .after({"b", "c"})
      .pivot()
      .invoke("svc", "do_p", payload_for("p"))
      .retry(policy(attempts))
      .step("d")
      .retriable()
      .invoke("svc", "do_d", payload_for("d"))
      .retry(policy(attempts))
      .build();
}

}  // namespace saga_test
