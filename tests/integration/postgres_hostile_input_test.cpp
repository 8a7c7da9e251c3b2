// Hostile input against the real PostgreSQL store: saga types, step names, idempotency keys and payloads with
// quotes, SQL, NUL characters, 1 MB strings and invalid UTF-8. Each is stored and read back exactly, or refused with an
// error that names what is wrong, and a refused append never takes the other appends of its batch down with it.
#include "postgres_support.hpp"

#include "saga/json.hpp"
#include "saga/storage/hash_chain.hpp"
#include "saga/storage/postgres_event_store.hpp"

#include <future>

namespace saga {
namespace {

using namespace pg_test;
using storage::append_request;
using storage::postgres_event_store;

class postgres_hostile_input : public postgres_test {};

// An append through group commit, as a future.
std::future<storage::append_result> append_future(storage::event_store& store, append_request r) {
  auto promise = std::make_shared<std::promise<storage::append_result>>();
  auto future = promise->get_future();
  store.async_append(std::move(r), [promise](std::exception_ptr e, storage::append_result result) {
    if (e)
      promise->set_exception(e);
    else
      promise->set_value(result);
  });
  return future;
}

const std::vector<std::string> hostile_names = {
    "o'rder",
    "x'); DROP TABLE saga_events; --",
    R"(quote " backslash \ percent %s dollar $1 question ?)",
    "tab\tnewline\ncarriage\r",
    "ordér-注文-🚚",
    std::string(300, '\''),
};

append_request start_request(const saga_id& id, const std::string& type, const std::string& key,
                             const std::string& input_json) {
  append_request r;
  r.saga = id;
  r.saga_type = type;
  r.expected_seq = 0;
  r.events.push_back(make_event(1, events::saga_started{type, 1, "fp", input_json, key}));
  return r;
}

TEST_F(postgres_hostile_input, quotes_and_sql_in_every_text_field_round_trip_exactly) {
  postgres_event_store store(url_);
  for (const auto& name : hostile_names) {
    SCOPED_TRACE(name);
    const auto id = random_saga_id();
    const std::string input = "{\"note\":" + json_quote(name) + "}";
    auto r = start_request(id, name, name, input);
    r.events.push_back(make_event(
        2, events::step_requested{name, 1, name, name, name, "{\"why\":" + json_quote(name) + "}", at_ms(5)}));
    r.events.push_back(make_event(3, events::step_failed{name, 1, name, name, false}));
    r.metadata = "{\"trace\":" + json_quote(name) + "}";
    ASSERT_NO_THROW((void)store.append(r));

    const auto log = store.load(id);
    ASSERT_EQ(log.size(), 3u);
    for (std::size_t i = 0; i < log.size(); ++i) {
      const auto expected = encode(r.events[i].body);
      EXPECT_EQ(log[i].type, expected.type);
      EXPECT_EQ(log[i].payload, expected.payload);
    }
    EXPECT_EQ(std::get<events::step_failed>(decode(log[2].type, log[2].schema_version, log[2].payload)).reason, name);
    EXPECT_FALSE(storage::verify_chain(log).has_value());
    EXPECT_EQ(store.find_by_idempotency_key(name, name), id);
    storage::saga_query q;
    q.type = name;
    const auto listed = store.list(q);
    ASSERT_EQ(listed.size(), 1u);
    EXPECT_EQ(listed[0].id, id);
  }
  // The table the injection attempt names is still there, with every row.
  const auto rows = storage::postgres_session(url_).exec("SELECT count(*) FROM saga_events");
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].at(0), std::to_string(3 * hostile_names.size()));
}

TEST_F(postgres_hostile_input, a_one_megabyte_payload_round_trips) {
  postgres_event_store store(url_);
  const auto id = random_saga_id();
  std::string big(1 << 20, 'x');
  for (std::size_t i = 0; i < big.size(); i += 97) big[i] = "'\"\\<>&%$"[i % 8];
  const auto r = start_request(id, "order", "", "{\"blob\":" + json_quote(big) + "}");
  ASSERT_NO_THROW((void)store.append(r));
  const auto log = store.load(id);
  ASSERT_EQ(log.size(), 1u);
  const auto body = std::get<events::saga_started>(decode(log[0].type, log[0].schema_version, log[0].payload));
  EXPECT_EQ(json_string_member(body.input, "blob"), big);
}

// PostgreSQL's jsonb holds neither the NUL character nor invalid UTF-8. Such an append is refused before it reaches
// the database, naming the saga and the problem; an append of another saga in the same batch still commits.
TEST_F(postgres_hostile_input, nul_and_invalid_utf8_are_refused_naming_the_problem_and_spare_the_batch) {
  postgres_event_store store(url_);
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"NUL in a JSON string", "{\"note\":\"a\\u0000b\"}"},
      {"invalid UTF-8 in a JSON string", std::string("{\"note\":\"a\xff\xfe b\"}")},
      {"truncated UTF-8 sequence", std::string("{\"note\":\"caf\xc3\"}")},
  };
  for (const auto& [what, input] : bad) {
    SCOPED_TRACE(what);
    const auto bad_id = random_saga_id(), good_id = random_saga_id();
    auto bad_future = append_future(store, start_request(bad_id, "order", "", input));
    auto good_future = append_future(store, start_request(good_id, "order", "", R"({"note":"fine"})"));
    try {
      (void)bad_future.get();
      ADD_FAILURE() << "the append was accepted";
    } catch (const storage::store_error& e) {
      const std::string message = e.what();
      EXPECT_FALSE(e.retryable()) << message;
      EXPECT_NE(message.find(bad_id.to_string()), std::string::npos) << message;
      EXPECT_TRUE(message.find("NUL") != std::string::npos || message.find("UTF-8") != std::string::npos) << message;
    }
    EXPECT_NO_THROW((void)good_future.get());
    EXPECT_TRUE(store.load(bad_id).empty());
    EXPECT_EQ(store.load(good_id).size(), 1u);
  }
  // A saga type or step name with a raw NUL byte or invalid UTF-8 is refused the same way.
  for (const std::string& name : {std::string("or\0der", 6), std::string("or\xff") + "der"}) {
    const auto id = random_saga_id();
    EXPECT_THROW((void)store.append(start_request(id, name, "", "{}")), storage::store_error);
    EXPECT_TRUE(store.load(id).empty());
  }
}

}  // namespace
}  // namespace saga
