// uuid, JSON helpers and the event codec.
#include "test_definitions.hpp"

#include <saga/event.hpp>
#include <saga/json.hpp>
#include <saga/timeline.hpp>
#include <saga/uuid.hpp>

#include <gtest/gtest.h>

#include <set>

using namespace saga;
using namespace saga::events;

namespace {

TEST(uuid, round_trips_text_and_rejects_garbage) {
  const saga_id id = saga_id::from_words(0x0123456789abcdefULL, 0xfedcba9876543210ULL);
  EXPECT_EQ(id.to_string(), "01234567-89ab-4def-bedc-ba9876543210");
  EXPECT_EQ(saga_id::parse(id.to_string()), id);
  EXPECT_EQ(saga_id::parse("01234567-89AB-4DEF-BEDC-BA9876543210"), id);
  EXPECT_FALSE(saga_id::parse("01234567-89ab-4def-bedc-ba987654321"));
  EXPECT_FALSE(saga_id::parse("01234567x89ab-4def-bedc-ba9876543210"));
  EXPECT_FALSE(saga_id::parse("0123456g-89ab-4def-bedc-ba9876543210"));
  EXPECT_TRUE(saga_id{}.is_nil());
  EXPECT_FALSE(id.is_nil());
}

TEST(json, canonical_form_sorts_keys_and_normalizes_numbers) {
  EXPECT_EQ(canonical_json(R"( { "b" : 1.0, "a" : [true, null, "x\u00e9"], "c": {"z":1,"y":2.5} } )"),
            std::string(R"({"a":[true,null,"x)") + "\xc3\xa9" + R"("],"b":1,"c":{"y":2.5,"z":1}})");
  EXPECT_EQ(canonical_json(R"({"b":1,"a":2})"), R"({"a":2,"b":1})");
  EXPECT_EQ(canonical_json("1e3"), "1000");
  EXPECT_EQ(canonical_json("0.1"), "0.1");
  // Numbers are read by the library, not by rapidjson 1.1.0, whose conversions misread or are undefined on these
  // (found by fuzzing): zero significands with an exponent, long digit strings, values below the smallest double.
  EXPECT_EQ(canonical_json(R"([0e5,-0.00E-41,0.0e+3,"0e5 in a string",10e1])"), R"([0,0,0,"0e5 in a string",100])");
  EXPECT_EQ(canonical_json("[1e-400,-2.5e-999999999999,0.000000000000000000000000000000000000000000001e-300]"),
            "[0,0,0]");
  EXPECT_EQ(canonical_json("[0.1000000000000000055511151231257827021181583404541015625,"
                           "1.00000000000000000000000000000000000000000000000000000000000000000001]"),
            "[0.1,1]");
  EXPECT_EQ(canonical_json("[4.9406564584124654e-324,1.7976931348623157e308,-9223372036854775808,"
                           "18446744073709551615,18446744073709551616]"),
            "[5e-324,1.7976931348623157e308,-9223372036854775808,18446744073709551615,18446744073709553000.0]");
  // Integral doubles beyond int64 stay doubles (the conversion to check them was undefined: found by fuzzing).
  EXPECT_EQ(canonical_json("[2.2e43,-1.8e20,1e300,9007199254740991.0]"),
            "[2.2e43,-180000000000000000000.0,1e300,9007199254740991]");
  EXPECT_EQ(canonical_json(canonical_json(R"({"k":[1,2,{"b":"x","a":"y"}]})")),
            canonical_json(R"({"k":[1,2,{"a":"y","b":"x"}]})"));
}

// Nesting is bounded: 50,000 brackets (a 100 KB reply) overflowed the stack in the reader and the canonical writer.
TEST(json, nesting_deeper_than_the_limit_is_refused_naming_it) {
  const auto nested = [](int depth, char open, char close) {
    return std::string(static_cast<std::size_t>(depth), open) + std::string(static_cast<std::size_t>(depth), close);
  };
  EXPECT_EQ(canonical_json(nested(max_json_depth, '[', ']')), nested(max_json_depth, '[', ']'));
  for (const auto& text : {nested(max_json_depth + 1, '[', ']'), nested(50'000, '[', ']'),
                           "{\"a\":" + nested(max_json_depth, '[', ']') + "}"}) {
    try {
      (void)canonical_json(text);
      ADD_FAILURE() << "accepted " << text.size() << " bytes of nesting";
    } catch (const json_error& e) {
      EXPECT_NE(std::string(e.what()).find("nested deeper than " + std::to_string(max_json_depth) + " levels"),
                std::string::npos)
          << e.what();
    }
  }
}

TEST(json, errors_name_the_offset_and_duplicate_keys) {
  try {
    (void)canonical_json(R"({"a":1,})");
    FAIL() << "no error";
  } catch (const json_error& e) {
    EXPECT_NE(std::string(e.what()).find("invalid JSON at offset 7"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)canonical_json(R"({"a":1,"a":2})"), json_error);
  EXPECT_THROW((void)canonical_json("NaN"), json_error);
  EXPECT_THROW((void)canonical_json("{} trailing"), json_error);
  try {
    (void)canonical_json("[1, 2e308]");
    FAIL() << "no error";
  } catch (const json_error& e) {
    EXPECT_NE(std::string(e.what()).find("2e308"), std::string::npos) << e.what();
  }
}

TEST(json, cereal_round_trip_of_user_types_and_readable_decode_errors) {
  saga_test::data d{"name", {"a", "b"}};
  const std::string text = to_json(d);
  EXPECT_EQ(text, R"({"name":"name","trail":["a","b"]})");
  const auto back = from_json<saga_test::data>(text);
  EXPECT_EQ(back.name, "name");
  EXPECT_EQ(back.trail, (std::vector<std::string>{"a", "b"}));
  // Field order does not matter.
  EXPECT_EQ(from_json<saga_test::data>(R"({"trail":[],"name":"x"})").name, "x");
  try {
    (void)from_json<saga_test::data>(R"({"name":"x"})");
    FAIL() << "no error";
  } catch (const json_error& e) {
    EXPECT_NE(std::string(e.what()).find("saga_test::data"), std::string::npos) << e.what();
  }
  EXPECT_EQ(to_json(raw_json{R"({ "b":1, "a":2 })"}), R"({"a":2,"b":1})");
}

std::vector<event_body> one_of_each() {
  const time_point t = time_point(std::chrono::milliseconds(1'700'000'123'456));
  return {saga_started{"order", 3, "abcdef0123456789", R"({"x":[1,2]})", "key-\"quoted\""},
          step_requested{"s", 2, "id:2", "svc", "do", R"({"p":"\u0000 nul"})", t},
          step_succeeded{"s", 2, "id:2", R"({"r":1})", std::string(R"({"d":true})")},
          step_succeeded{"s", 1, "id:2", R"({"r":1})", std::nullopt},
          step_failed{"s", 1, "id:2", "declined: \"card\"", false},
          step_timed_out{"s", 4, "id:2"},
          retry_scheduled{"s", true, 5, t, 0xffffffffffffffffULL},
          compensation_started{"why", "s"},
          compensation_requested{"s", 1, "id:9", "svc", "undo", "{}", t},
          compensation_succeeded{"s", 1, "id:9", "{}"},
          compensation_failed{"s", 1, "id:9", "no", true},
          compensation_timed_out{"s", 1, "id:9"},
          cancel_requested{"r", "alice"},
          saga_completed{R"({"out":"ü"})"},
          saga_compensated{"because"},
          saga_stuck{"s", true, "stuck reason"},
          operator_action_recorded{"skip", "s", true, "manual refund", "bob"}};
}

TEST(event_codec, every_event_type_round_trips_exactly) {
  const auto all = one_of_each();
  std::set<std::string> types;
  for (const auto& body : all) {
    const encoded_event enc = encode(body);
    types.insert(enc.type);
    EXPECT_EQ(enc.payload, canonical_json(enc.payload)) << enc.type;
    const event_body back = decode(enc.type, enc.schema_version, enc.payload);
    EXPECT_EQ(back.index(), body.index());
    EXPECT_EQ(encode(back).payload, enc.payload) << enc.type;
  }
  EXPECT_EQ(types.size(), std::variant_size_v<event_body>);
}

TEST(event_codec, decode_errors_name_type_and_field) {
  auto message = [](std::string_view type, std::uint32_t v, std::string_view payload) -> std::string {
    try {
      (void)decode(type, v, payload);
    } catch (const event_decode_error& e) {
      return e.what();
    }
    return "(no error)";
  };
  EXPECT_EQ(message("nope", 1, "{}"), "unknown event type 'nope'");
  // A field that holds JSON (the saga input) with a duplicate key inside: still this event's typed error (fuzzing).
  EXPECT_EQ(message("saga_started", 1,
                    R"({"saga_type":"order","definition_version":1,"definition_fingerprint":"f","idempotency_key":"",)"
                    R"("input":{"sku":"a","sku":"b"}})"),
            "event saga_started: duplicate key \"sku\" in JSON object");
  EXPECT_EQ(message("step_timed_out", 9, "{}"),
            "event step_timed_out: unsupported schema version 9 (this build reads 1)");
  EXPECT_EQ(message("step_timed_out", 1, R"({"step":"s","attempt":1})"),
            "event step_timed_out: field 'command_id' is missing");
  EXPECT_EQ(message("step_timed_out", 1, R"({"step":"s","attempt":-1,"command_id":"c"})"),
            "event step_timed_out: field 'attempt' must be an unsigned 32-bit integer");
  EXPECT_NE(message("step_timed_out", 1, "{").find("event step_timed_out: invalid JSON"), std::string::npos);
  EXPECT_EQ(message("step_timed_out", 1, "[]"), "event step_timed_out: payload is not a JSON object");
}

TEST(time_text, rfc3339_formats_and_parses) {
  const auto at = [](long long ms) { return time_point(std::chrono::milliseconds(ms)); };
  EXPECT_EQ(format_time(at(0)), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(format_time(at(951782400123)), "2000-02-29T00:00:00.123Z");
  for (long long ms : {0LL, 1LL, 951782400123LL, 1795412345678LL, 4102444799999LL})
    EXPECT_EQ(parse_time(format_time(at(ms))), at(ms));
  EXPECT_EQ(parse_time("2000-02-29T00:00:00Z"), at(951782400000));
  EXPECT_EQ(parse_time("2000-02-29T00:00:00.1234567Z"), at(951782400123));
  EXPECT_EQ(parse_time("2000-02-29T01:30:00+01:30"), at(951782400000));
  EXPECT_EQ(parse_time("2000-02-28T22:00:00.5-02:00"), at(951782400500));
  for (auto bad :
       {"", "1700000000000", "2000-02-30T00:00:00Z", "2000-02-29 00:00:00Z", "2000-02-29T00:00:00",
        "2000-02-29T24:00:00Z", "2000-02-29T00:00:00.Z", "2000-02-29T00:00:00+0100", "2000-02-29T00:00:00Zjunk",
        // a sign or a space where a digit belongs, an offset beyond a day
        "2000-02-29T-1:00:00Z", "2000-02-29T10:-5:00Z", "2000-02-29T10:05:-1Z", "2000-+2-29T10:05:00Z",
        "2000-02- 9T10:05:00Z", "2000-02-29T10:05:00+-1:00", "2000-02-29T10:05:00+24:00", "2000-02-29T10:05:00+01:60"})
    EXPECT_FALSE(parse_time(bad)) << bad;
}

TEST(event_codec, command_ids_are_derived_from_saga_and_seq) {
  const saga_id id = saga_id::from_words(1, 2);
  EXPECT_EQ(make_command_id(id, 7), id.to_string() + ":7");
  EXPECT_EQ(make_command_id(id, 7), make_command_id(id, 7));
  EXPECT_NE(make_command_id(id, 7), make_command_id(id, 8));
}

}  // namespace
