#include "test_definitions.hpp"

#include <gtest/gtest.h>

#include <limits>

using namespace saga;
using saga_test::ack;
using saga_test::cmd;
using saga_test::data;
using saga_test::merge_note;
using saga_test::payload_for;

namespace {

template <class F>
std::string build_error(F make) {
  try {
    (void)make();
  } catch (const definition_error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(definition, builds_steps_in_declaration_order_with_implicit_dependencies) {
  const auto def = saga_test::linear();
  ASSERT_EQ(def.steps().size(), 4u);
  EXPECT_EQ(def.type(), "linear");
  EXPECT_EQ(def.version(), 1u);
  EXPECT_TRUE(def.steps()[0].depends_on.empty());
  EXPECT_EQ(def.steps()[1].depends_on, std::vector<std::size_t>{0});
  EXPECT_EQ(def.steps()[3].depends_on, std::vector<std::size_t>{2});
  EXPECT_EQ(def.pivot(), std::optional<std::size_t>(2));
  EXPECT_EQ(def.steps()[3].kind, step_kind::retriable);
}

TEST(definition, explicit_dependencies_allow_parallel_steps) {
  const auto def = saga_test::diamond();
  EXPECT_EQ(def.steps()[1].depends_on, std::vector<std::size_t>{0});
  EXPECT_EQ(def.steps()[2].depends_on, std::vector<std::size_t>{0});
  EXPECT_EQ(def.steps()[3].depends_on, (std::vector<std::size_t>{1, 2}));
}

TEST(definition, fingerprint_changes_with_structure_and_not_otherwise) {
  EXPECT_EQ(saga_test::linear().fingerprint(), saga_test::linear().fingerprint());
  EXPECT_NE(saga_test::linear().fingerprint(), saga_test::diamond().fingerprint());
  const auto renamed =
      define<data>("linear", 1).step("a2").invoke("svc_a", "do_a", payload_for("a")).no_compensation().build();
  const auto original =
      define<data>("linear", 1).step("a").invoke("svc_a", "do_a", payload_for("a")).no_compensation().build();
  EXPECT_NE(renamed.fingerprint(), original.fingerprint());
}

TEST(definition, rejects_duplicate_step_names) {
  EXPECT_EQ(build_error([] {
              return define<data>("s", 1)
                  .step("x")
                  .invoke("a", "b", payload_for("x"))
                  .no_compensation()
                  .step("x")
                  .invoke("a", "b", payload_for("x"))
                  .no_compensation()
                  .build();
            }),
            "saga 's': duplicate step name 'x'");
}

TEST(definition, rejects_unknown_dependency) {
  EXPECT_EQ(build_error([] {
              return define<data>("s", 1)
                  .step("x")
                  .after("nope")
                  .invoke("a", "b", payload_for("x"))
                  .no_compensation()
                  .build();
            }),
            "saga 's': step 'x' depends on unknown step 'nope'");
}

TEST(definition, rejects_cycles_naming_them) {
  EXPECT_EQ(build_error([] {
              return define<data>("s", 1)
                  .step("x")
                  .after("z")
                  .invoke("a", "b", payload_for("x"))
                  .no_compensation()
                  .step("y")
                  .after("x")
                  .invoke("a", "b", payload_for("y"))
                  .no_compensation()
                  .step("z")
                  .after("y")
                  .invoke("a", "b", payload_for("z"))
                  .no_compensation()
                  .build();
            }),
            "saga 's': dependency cycle: x -> z -> y -> x");
  EXPECT_EQ(
      build_error([] {
        return define<data>("s", 1).step("x").after("x").invoke("a", "b", payload_for("x")).no_compensation().build();
      }),
      "saga 's': step 'x' depends on itself");
}

TEST(definition, rejects_missing_invoke_and_missing_compensation_decision) {
  EXPECT_EQ(build_error([] { return define<data>("s", 1).step("x").no_compensation().build(); }),
            "saga 's': step 'x' has no invoke(...)");
  EXPECT_EQ(
      build_error([] { return define<data>("s", 1).step("x").invoke("a", "b", payload_for("x")).build(); }),
      "saga 's': step 'x' declares no compensation; add compensate(...), no_compensation(), pivot() or retriable()");
  EXPECT_EQ(build_error([] {
              return define<data>("s", 1).step("x").invoke("", "b", payload_for("x")).no_compensation().build();
            }),
            "saga 's': step 'x' has no target service");
}

cmd build_cmd(const data& d) { return cmd{"f", d.name}; }

TEST(definition, rejects_an_empty_or_null_payload_builder_naming_the_step) {
  const std::function<cmd(const data&)> empty;
  EXPECT_EQ(
      build_error([&] { return define<data>("s", 1).step("x").invoke("a", "b", empty).no_compensation().build(); }),
      "saga 's': step 'x' has no payload builder");
  cmd (*const null_fn)(const data&) = nullptr;
  EXPECT_EQ(
      build_error([&] { return define<data>("s", 1).step("x").invoke("a", "b", null_fn).no_compensation().build(); }),
      "saga 's': step 'x' has no payload builder");
  EXPECT_EQ(
      build_error([] { return define<data>("s", 1).step("x").invoke("a", "b", nullptr).no_compensation().build(); }),
      "saga 's': step 'x' has no payload builder");
  // The culprit is named even when earlier steps are fine.
  EXPECT_EQ(build_error([&] {
              return define<data>("s", 1)
                  .step("ok")
                  .invoke("a", "b", payload_for("ok"))
                  .no_compensation()
                  .step("y")
                  .invoke("a", "b", empty)
                  .no_compensation()
                  .build();
            }),
            "saga 's': step 'y' has no payload builder");
}

// Another service's inbox has no record of the forward command: its fence would take the compensation for one
// whose forward command never ran, answer "nothing to undo", and the saga would end compensated with the charge
// still in place.
TEST(definition, rejects_a_compensation_sent_to_another_service_than_its_step) {
  EXPECT_EQ(build_error([] {
              return define<data>("s", 1)
                  .step("charge")
                  .invoke("payments", "charge", payload_for("charge"))
                  .compensate("refunds", "refund", payload_for("refund"))
                  .build();
            }),
            "saga 's': step 'charge' runs on service 'payments' and its compensation on 'refunds'; a compensation "
            "goes to the service that ran the step: that service's inbox fences it against the forward command, and "
            "another service's inbox, with no record of that command, would take it for one that never ran and undo "
            "nothing");
}

TEST(definition, rejects_an_empty_or_null_compensation_builder_naming_the_step) {
  const std::function<cmd(const data&)> empty;
  EXPECT_EQ(
      build_error([&] {
        return define<data>("s", 1).step("x").invoke("a", "b", payload_for("x")).compensate("a", "u", empty).build();
      }),
      "saga 's': compensation of step 'x' has no payload builder");
  cmd (*const null_fn)(const data&) = nullptr;
  EXPECT_EQ(
      build_error([&] {
        return define<data>("s", 1).step("x").invoke("a", "b", payload_for("x")).compensate("a", "u", null_fn).build();
      }),
      "saga 's': compensation of step 'x' has no payload builder");
  EXPECT_EQ(
      build_error([] {
        return define<data>("s", 1).step("x").invoke("a", "b", payload_for("x")).compensate("a", "u", nullptr).build();
      }),
      "saga 's': compensation of step 'x' has no payload builder");
}

TEST(definition, rejects_an_empty_reply_merger_naming_the_step) {
  const std::function<void(data&, const ack&)> empty;
  EXPECT_EQ(build_error([&] {
              return define<data>("s", 1)
                  .step("x")
                  .invoke("a", "b", payload_for("x"))
                  .on_reply(empty)
                  .no_compensation()
                  .build();
            }),
            "saga 's': on_reply() on step 'x' was given an empty function");
}

TEST(definition, accepts_non_empty_std_function_and_function_pointer_builders) {
  const std::function<cmd(const data&)> fn = [](const data& d) { return cmd{"g", d.name}; };
  const auto def = define<data>("s", 1)
                       .step("x")
                       .invoke("a", "b", fn)
                       .compensate("a", "u", &build_cmd)
                       .on_reply(std::function<void(data&, const ack&)>(merge_note()))
                       .build();
  EXPECT_EQ(def.steps()[0].invoke.build(R"({"name":"n1","trail":[]})"), R"({"name":"n1","step":"g"})");
  ASSERT_TRUE(def.steps()[0].compensation.has_value());
  EXPECT_EQ(def.steps()[0].compensation->build(R"({"name":"n1","trail":[]})"), R"({"name":"n1","step":"f"})");
  EXPECT_EQ(def.steps()[0].on_reply(R"({"name":"n1","trail":[]})", R"({"note":"hi"})"),
            R"({"name":"n1","trail":["hi"]})");
}

TEST(definition, rejects_compensation_on_pivot_or_retriable) {
  EXPECT_EQ(build_error([] {
              return define<data>("s", 1)
                  .step("x")
                  .pivot()
                  .invoke("a", "b", payload_for("x"))
                  .compensate("a", "u", payload_for("u"))
                  .build();
            }),
            "saga 's': step 'x' is pivot and cannot have a compensation");
  EXPECT_EQ(build_error([] {
              return define<data>("s", 1)
                  .step("x")
                  .compensate("a", "u", payload_for("u"))
                  .retriable()
                  .invoke("a", "b", payload_for("x"))
                  .build();
            }),
            "saga 's': step 'x' is retriable and cannot have a compensation");
}

TEST(definition, rejects_pivot_that_strands_a_compensatable_step) {
  EXPECT_EQ(build_error([] {
              return define<data>("s", 1)
                  .step("x")
                  .invoke("a", "b", payload_for("x"))
                  .compensate("a", "u", payload_for("u"))
                  .step("p")
                  .after({})
                  .pivot()
                  .invoke("a", "b", payload_for("p"))
                  .build();
            }),
            "saga 's': pivot 'p' is not ordered after compensatable step 'x', which it would strand; add it to the "
            "pivot's after(...)");
  EXPECT_EQ(build_error([] {
              return define<data>("s", 1)
                  .step("p")
                  .pivot()
                  .invoke("a", "b", payload_for("p"))
                  .step("q")
                  .pivot()
                  .invoke("a", "b", payload_for("q"))
                  .build();
            }),
            "saga 's': steps 'p' and 'q' are both pivots; a saga has one");
}

TEST(definition, rejects_bad_retry_policies_and_misuse) {
  retry_policy p;
  p.max_attempts = 0;
  EXPECT_EQ(
      build_error([&] {
        return define<data>("s", 1).step("x").invoke("a", "b", payload_for("x")).retry(p).no_compensation().build();
      }),
      "saga 's': step 'x': max_attempts must be at least 1");
  p = retry_policy{};
  p.jitter = 1.5;
  EXPECT_EQ(
      build_error([&] {
        return define<data>("s", 1).step("x").invoke("a", "b", payload_for("x")).retry(p).no_compensation().build();
      }),
      "saga 's': step 'x': jitter must be between 0 and 1");
  // NaN compares false with everything: it passed both checks before.
  for (auto bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    p = retry_policy{};
    p.multiplier = bad;
    EXPECT_EQ(
        build_error([&] {
          return define<data>("s", 1).step("x").invoke("a", "b", payload_for("x")).retry(p).no_compensation().build();
        }),
        "saga 's': step 'x': backoff multiplier must be a finite number of at least 1");
  }
  p = retry_policy{};
  p.jitter = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(
      build_error([&] {
        return define<data>("s", 1).step("x").invoke("a", "b", payload_for("x")).retry(p).no_compensation().build();
      }),
      "saga 's': step 'x': jitter must be between 0 and 1");
  // duration::max() as "no timeout" overflowed now + timeout into the past: every attempt timed out at once.
  p = retry_policy{};
  p.timeout = duration::max();
  EXPECT_EQ(
      build_error([&] {
        return define<data>("s", 1).step("x").invoke("a", "b", payload_for("x")).retry(p).no_compensation().build();
      }),
      "saga 's': step 'x': timeout must be at most 365 days (31536000000 ms); got " +
          std::to_string(duration::max().count()) + " ms");
  p = retry_policy{};
  p.max_backoff = duration::max();
  EXPECT_EQ(
      build_error([&] {
        return define<data>("s", 1).step("x").invoke("a", "b", payload_for("x")).retry(p).no_compensation().build();
      }),
      "saga 's': step 'x': max_backoff must be at most 365 days (31536000000 ms); got " +
          std::to_string(duration::max().count()) + " ms");
  p = retry_policy{};
  p.timeout = std::chrono::hours(24 * 365);
  p.max_backoff = std::chrono::hours(24 * 365);
  EXPECT_EQ(
      build_error([&] {
        return define<data>("s", 1).step("x").invoke("a", "b", payload_for("x")).retry(p).no_compensation().build();
      }),
      "(no error)");
  EXPECT_EQ(build_error([] { return define<data>("s", 1).invoke("a", "b", payload_for("x")).build(); }),
            "saga 's': invoke() called before any step()");
  EXPECT_EQ(build_error([] { return define<data>("s", 1).build(); }), "saga 's': has no steps");
  EXPECT_EQ(build_error([] {
              return define<data>("", 1).step("x").invoke("a", "b", payload_for("x")).no_compensation().build();
            }),
            "saga type name is empty");
}

TEST(definition, typed_builders_encode_with_cereal) {
  const auto def = saga_test::linear();
  const std::string payload = def.steps()[0].invoke.build(R"({"name":"n1","trail":[]})");
  EXPECT_EQ(payload, R"({"name":"n1","step":"a"})");
  const std::string merged = def.steps()[0].on_reply(R"({"name":"n1","trail":[]})", R"({"note":"hi"})");
  EXPECT_EQ(merged, R"({"name":"n1","trail":["hi"]})");
  EXPECT_THROW((void)def.steps()[0].on_reply(R"({"name":"n1","trail":[]})", R"({"note":5})"), json_error);
}

TEST(retry_policy, backoff_grows_caps_and_is_deterministic_per_seed) {
  retry_policy p;
  p.initial_backoff = duration{100};
  p.max_backoff = duration{1000};
  p.multiplier = 2.0;
  p.jitter = 0.0;
  EXPECT_EQ(p.backoff(2, 1).count(), 100);
  EXPECT_EQ(p.backoff(3, 1).count(), 200);
  EXPECT_EQ(p.backoff(4, 1).count(), 400);
  EXPECT_EQ(p.backoff(10, 1).count(), 1000);
  p.jitter = 0.5;
  EXPECT_EQ(p.backoff(3, 99), p.backoff(3, 99));
  for (std::uint64_t seed = 0; seed < 200; ++seed) {
    EXPECT_GE(p.backoff(3, seed).count(), 100);
    EXPECT_LE(p.backoff(3, seed).count(), 300);
  }
  EXPECT_NE(p.backoff(3, 1), p.backoff(3, 2));
  // No initial wait stays none after the growth overflows (0 x inf was NaN, converted to an integer: undefined).
  p.initial_backoff = duration{0};
  EXPECT_EQ(p.backoff(2000, 7).count(), 0);
  p.initial_backoff = duration{100};
  EXPECT_EQ(p.backoff(4'000'000'000U, 7).count() <= 1000, true);
}

}  // namespace
