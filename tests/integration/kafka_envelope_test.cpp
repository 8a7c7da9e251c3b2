// Envelope: every field of commands and replies survives encode → decode, and every missing or bad header is named.
#include "saga/transport/envelope.hpp"

#include <gtest/gtest.h>

#include <algorithm>

namespace st = saga::transport;
namespace hn = st::header_names;

namespace {

saga::time_point at(long long ms) { return saga::time_point{std::chrono::milliseconds(ms)}; }

st::command_message sample_command() {
  st::command_message c;
  c.saga = saga::saga_id::from_words(0x1234, 0x5678);
  c.command_id = c.saga.to_string() + ":7";
  c.saga_type = "order";
  c.step = "reserve_inventory";
  c.compensation = true;
  c.attempt = 3;
  c.service = "inventory";
  c.command_type = "release_inventory";
  c.payload = R"({"sku":"A-1","qty":2})";
  c.reply_to = "saga.order.replies";
  c.compensates = c.saga.to_string() + ":4";
  c.traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  c.time = at(1795412345678);
  return c;
}

st::reply_message sample_reply() {
  st::reply_message r;
  r.saga = saga::saga_id::from_words(0xabc, 0xdef);
  r.command_id = r.saga.to_string() + ":4";
  r.saga_type = "order";
  r.step = "charge_payment";
  r.attempt = 2;
  r.result = saga::triggers::outcome::failure;
  r.payload = R"({"declined":true})";
  r.reason = "card declined";
  r.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  r.time = at(1795412345001);
  return r;
}

std::string header(const st::envelope& e, std::string_view name) {
  auto v = st::find_header(e.headers, name);
  return v ? std::string(*v) : "<missing>";
}

st::header_list without(st::header_list h, std::string_view name) {
  std::erase_if(h, [&](const st::header& x) { return x.first == name; });
  return h;
}

st::header_list with(st::header_list h, std::string_view name, std::string value) {
  for (auto& [k, v] : h)
    if (k == name) v = value;
  return h;
}

}  // namespace

TEST(kafka_envelope, command_encodes_every_field_into_headers) {
  auto c = sample_command();
  auto e = st::encode(c, "/orders");
  EXPECT_EQ(e.key, c.saga.to_string());
  EXPECT_EQ(e.value, c.payload);
  EXPECT_EQ(header(e, hn::spec_version), "1.0");
  EXPECT_EQ(header(e, hn::id), c.command_id);
  EXPECT_EQ(header(e, hn::type), "release_inventory");
  EXPECT_EQ(header(e, hn::source), "/orders");
  EXPECT_EQ(header(e, hn::time), "2026-11-23T05:39:05.678Z");
  EXPECT_EQ(header(e, hn::content_type), "application/json");
  EXPECT_EQ(header(e, hn::saga_id), c.saga.to_string());
  EXPECT_EQ(header(e, hn::saga_type), "order");
  EXPECT_EQ(header(e, hn::step), "reserve_inventory");
  EXPECT_EQ(header(e, hn::compensation), "true");
  EXPECT_EQ(header(e, hn::attempt), "3");
  EXPECT_EQ(header(e, hn::service), "inventory");
  EXPECT_EQ(header(e, hn::reply_to), "saga.order.replies");
  EXPECT_EQ(header(e, hn::compensates), c.saga.to_string() + ":4");
  EXPECT_EQ(header(e, hn::traceparent), c.traceparent);
}

TEST(kafka_envelope, a_compensation_names_the_command_it_undoes_and_a_forward_command_does_not) {
  auto c = sample_command();
  c.compensates.clear();
  auto bad = st::decode_command(st::encode(c, "/orders").headers, c.payload);
  EXPECT_FALSE(bad);
  EXPECT_EQ(bad.error, "missing header ce_sagacompensates on a compensation");
  c.compensation = false;
  auto e = st::encode(c, "/orders");
  EXPECT_EQ(std::count_if(e.headers.begin(), e.headers.end(), [](const auto& h) { return h.first == hn::compensates; }),
            0);
  auto d = st::decode_command(e.headers, e.value);
  ASSERT_TRUE(d) << d.error;
  EXPECT_EQ(d.message->compensates, "");
}

TEST(kafka_envelope, command_round_trips) {
  auto c = sample_command();
  auto e = st::encode(c, "/orders");
  auto d = st::decode_command(e.headers, e.value);
  ASSERT_TRUE(d) << d.error;
  EXPECT_EQ(*d.message, c);
  c.compensation = false;
  c.compensates.clear();  // a forward command names none (decode refuses one that does)
  c.traceparent.clear();
  c.attempt = 4294967295u;
  e = st::encode(c, "/orders");
  EXPECT_FALSE(st::find_header(e.headers, hn::traceparent));
  d = st::decode_command(e.headers, e.value);
  ASSERT_TRUE(d) << d.error;
  EXPECT_EQ(*d.message, c);
}

TEST(kafka_envelope, reply_encodes_every_field_and_round_trips) {
  auto r = sample_reply();
  auto e = st::encode(r, "/payments");
  EXPECT_EQ(e.key, r.saga.to_string());
  EXPECT_EQ(e.value, r.payload);
  EXPECT_EQ(header(e, hn::spec_version), "1.0");
  EXPECT_EQ(header(e, hn::id), r.command_id);
  EXPECT_EQ(header(e, hn::type), "saga.reply");
  EXPECT_EQ(header(e, hn::source), "/payments");
  EXPECT_EQ(header(e, hn::time), "2026-11-23T05:39:05.001Z");
  EXPECT_EQ(header(e, hn::saga_id), r.saga.to_string());
  EXPECT_EQ(header(e, hn::saga_type), "order");
  EXPECT_EQ(header(e, hn::step), "charge_payment");
  EXPECT_EQ(header(e, hn::attempt), "2");
  EXPECT_EQ(header(e, hn::outcome), "failure");
  EXPECT_EQ(header(e, hn::reason), "card declined");
  EXPECT_EQ(header(e, hn::traceparent), r.traceparent);
  auto d = st::decode_reply(e.headers, e.value);
  ASSERT_TRUE(d) << d.error;
  EXPECT_EQ(*d.message, r);
  for (auto o : {saga::triggers::outcome::success, saga::triggers::outcome::retryable_failure}) {
    r.result = o;
    r.reason.clear();
    r.payload.clear();  // replies may carry no payload
    e = st::encode(r, "/payments");
    d = st::decode_reply(e.headers, e.value);
    ASSERT_TRUE(d) << d.error;
    EXPECT_EQ(*d.message, r);
  }
}

TEST(kafka_envelope, missing_command_headers_are_named) {
  auto e = st::encode(sample_command(), "/orders");
  for (auto name : {hn::spec_version, hn::id, hn::type, hn::saga_id, hn::saga_type, hn::step, hn::attempt,
                    hn::compensation, hn::service, hn::reply_to}) {
    auto d = st::decode_command(without(e.headers, name), e.value);
    ASSERT_FALSE(d) << name;
    EXPECT_EQ(d.error, "missing header " + std::string(name));
  }
  // Optional ones may be missing.
  for (auto name : {hn::source, hn::time, hn::traceparent, hn::content_type})
    EXPECT_TRUE(st::decode_command(without(e.headers, name), e.value)) << name;
}

TEST(kafka_envelope, missing_reply_headers_are_named) {
  auto e = st::encode(sample_reply(), "/p");
  for (auto name :
       {hn::spec_version, hn::id, hn::type, hn::saga_id, hn::saga_type, hn::step, hn::attempt, hn::outcome}) {
    auto d = st::decode_reply(without(e.headers, name), e.value);
    ASSERT_FALSE(d) << name;
    EXPECT_EQ(d.error, "missing header " + std::string(name));
  }
  auto d = st::decode_reply(without(e.headers, hn::reason), e.value);
  ASSERT_TRUE(d);
  EXPECT_EQ(d.message->reason, "");
}

TEST(kafka_envelope, bad_header_values_are_named) {
  auto e = st::encode(sample_command(), "/orders");
  auto bad = [&](std::string_view name, std::string value) {
    auto d = st::decode_command(with(e.headers, name, value), e.value);
    EXPECT_FALSE(d) << name;
    return d.error;
  };
  EXPECT_EQ(bad(hn::spec_version, "0.3"), "bad header ce_specversion: '0.3' (expected 1.0)");
  EXPECT_EQ(bad(hn::saga_id, "not-a-uuid"), "bad header ce_sagaid: 'not-a-uuid' is not a UUID");
  EXPECT_EQ(bad(hn::attempt, "x1"), "bad header ce_sagaattempt: 'x1' is not an unsigned 32-bit number");
  EXPECT_EQ(bad(hn::attempt, "4294967296"), "bad header ce_sagaattempt: '4294967296' is not an unsigned 32-bit number");
  EXPECT_EQ(bad(hn::compensation, "maybe"), "bad header ce_sagacompensation: 'maybe' (expected true or false)");
  EXPECT_EQ(bad(hn::time, "yesterday"), "bad header ce_time: 'yesterday' is not an RFC 3339 date-time");
  EXPECT_EQ(bad(hn::id, ""), "empty header ce_id");
  // A NUL ends a text parameter early on its way to PostgreSQL: "X\0junk" would dedupe as "X".
  EXPECT_EQ(bad(hn::id, std::string("c-1\0junk", 8)), "bad header ce_id: control character 0x00 at offset 3");
  EXPECT_EQ(bad(hn::id, "c-1\n"), "bad header ce_id: control character 0x0a at offset 3");
  // A forward command that names a command it compensates would be fenced as that compensation and never run.
  EXPECT_EQ(bad(hn::compensation, "false"), "header ce_sagacompensates on a command that is not a compensation");
  EXPECT_EQ(bad(hn::compensates, std::string("a\0b", 3)),
            "bad header ce_sagacompensates: control character 0x00 at offset 1");
  EXPECT_EQ(st::decode_reply(with(st::encode(sample_reply(), "/p").headers, hn::id, "r\x7f"), "{}").error,
            "bad header ce_id: control character 0x7f at offset 1");
  // Text the event log cannot hold (invalid UTF-8, NUL) is refused here, naming the header or the value: a reply
  // carrying it was taken, its events refused by the store, and the reply lost without a word.
  EXPECT_EQ(bad(hn::id, "c-\xff"), "bad header ce_id: invalid UTF-8 at byte 2 (PostgreSQL stores UTF-8 text only)");
  EXPECT_EQ(bad(hn::step, "ship\xc0\xaf"),
            "bad header ce_sagastep: invalid UTF-8 at byte 4 (PostgreSQL stores UTF-8 text only)");
  EXPECT_EQ(bad(hn::reply_to, std::string("r\0", 2)),
            "bad header ce_sagareplyto: a NUL byte at byte 1 (PostgreSQL text cannot hold NUL)");
  EXPECT_EQ(st::decode_command(e.headers, "{\"a\":\"\xed\xa0\x80\"}").error,
            "value cannot be stored: invalid UTF-8 at byte 6 (PostgreSQL stores UTF-8 text only)");
  {
    auto reply = st::encode(sample_reply(), "/p");
    EXPECT_EQ(st::decode_reply(with(reply.headers, hn::reason, "card \xff declined"), reply.value).error,
              "bad header ce_sagareason: invalid UTF-8 at byte 5 (PostgreSQL stores UTF-8 text only)");
    EXPECT_EQ(st::decode_reply(with(reply.headers, hn::reason, std::string("a\0b", 3)), reply.value).error,
              "bad header ce_sagareason: a NUL byte at byte 1 (PostgreSQL text cannot hold NUL)");
    EXPECT_EQ(st::decode_reply(reply.headers, R"({"note":"\u0000"})").error,
              "value cannot be stored: the JSON escape \\u0000 (NUL) at byte 9 (PostgreSQL jsonb cannot hold NUL)");
    EXPECT_EQ(st::decode_reply(reply.headers, "{\"note\":\"\xff\"}").error,
              "value cannot be stored: invalid UTF-8 at byte 9 (PostgreSQL stores UTF-8 text only)");
    // Valid UTF-8 and escapes other than \u0000 pass, in the value and in the reason.
    const auto fine = st::decode_reply(with(reply.headers, hn::reason,
                                            "carte refus\xc3\xa9"
                                            "e \xf0\x9f\x92\xb3"),
                                       R"({"note":"\u00e9\\u0000 \u0001"})");
    ASSERT_TRUE(fine) << fine.error;
    EXPECT_EQ(fine.message->reason,
              "carte refus\xc3\xa9"
              "e \xf0\x9f\x92\xb3");
  }
  auto garbage = st::decode_command(e.headers, "\xff\x01garbage");
  ASSERT_FALSE(garbage);
  EXPECT_NE(garbage.error.find("value is not JSON"), std::string::npos) << garbage.error;
  EXPECT_NE(st::decode_command(e.headers, R"({"a":1} x)").error.find("value is not JSON"), std::string::npos);
  EXPECT_TRUE(st::decode_command(e.headers, R"( {"a":[1,2.5,null,"\u00e9"]} )"));
  // A payload nested past the limit (here 400,000 levels in 800 KB, which overflowed the stack) is refused.
  const std::string deep = std::string(400'000, '[') + std::string(400'000, ']');
  EXPECT_NE(st::decode_command(e.headers, deep).error.find("deeper than " + std::to_string(saga::max_json_depth)),
            std::string::npos);
  EXPECT_EQ(st::decode_command(e.headers, "").error, "empty value (expected a JSON payload)");
  EXPECT_EQ(st::decode_command({}, "{}").error, "missing header ce_specversion");

  auto r = st::encode(sample_reply(), "/p");
  EXPECT_EQ(st::decode_reply(with(r.headers, hn::outcome, "meh"), r.value).error,
            "bad header ce_sagaoutcome: 'meh' (expected success, failure or retryable_failure)");
  EXPECT_EQ(st::decode_reply(with(r.headers, hn::type, "order.created"), r.value).error,
            "bad header ce_type: 'order.created' (expected saga.reply)");
}

TEST(kafka_envelope, outcome_names_round_trip) {
  for (auto o :
       {saga::triggers::outcome::success, saga::triggers::outcome::failure, saga::triggers::outcome::retryable_failure})
    EXPECT_EQ(st::parse_outcome(st::outcome_name(o)), o);
  EXPECT_FALSE(st::parse_outcome("SUCCESS"));
}
