// order-participant SERVICE [options] — one of the order saga's participant services (orders, inventory,
// payments, shipping) as its own process: Kafka in, PostgreSQL inbox + the service's own tables, Kafka out.
// Options: --silent-on COMMAND_TYPE (consume those commands and never answer them: a participant that hangs, for
// timeout tests; each one is logged as "silent: <type> <command id> attempt <n>"), --stock N (units per sku) and
// --balance N (cents per customer) seeded when the tables are first created.
// Environment: SAGA_PG_URL, SAGA_KAFKA_BROKERS (and SAGA_KAFKA_PREFIX, default "saga").
#include "order_saga.hpp"
#include "shop_schema.hpp"

#include <saga/storage/migrate.hpp>
#include <saga/storage/postgres_inbox.hpp>
#include <saga/storage/postgres_session.hpp>
#include <saga/transport/kafka_transport.hpp>
#include <saga/transport/participant.hpp>

#include <csignal>
#include <cstdlib>
#include <iostream>
#include <semaphore>
#include <set>

using namespace order_processing;
using saga::storage::stored_reply;
using saga::storage::transaction;
using saga::transport::command_message;
namespace tx_answers = saga::transport;

namespace {

std::binary_semaphore stop_signal{0};
extern "C" void on_signal(int) { stop_signal.release(); }

std::string one(transaction& tx, std::string_view sql, const std::vector<std::optional<std::string>>& params) {
  const auto rows = tx.exec(sql, params);
  return rows.empty() || !rows[0][0] ? std::string() : *rows[0][0];
}

void register_handlers(saga::transport::participant& p, const std::string& service) {
  if (service == "orders") {
    p.handle("create_order", [](const command_message& c, transaction& tx) {
      const auto cmd = saga::from_json<create_order>(c.payload);
      tx.exec(
          "INSERT INTO shop_orders (order_id, customer, amount_cents, status) VALUES ($1, $2, $3, 'created') "
          "ON CONFLICT (order_id) DO NOTHING",
          {cmd.order_id, cmd.customer, std::to_string(cmd.amount_cents)});
      return tx_answers::success();
    });
    p.handle("cancel_order", [](const command_message& c, transaction& tx) {
      tx.exec("UPDATE shop_orders SET status = 'cancelled' WHERE order_id = $1",
              {saga::from_json<order_ref>(c.payload).order_id});
      return tx_answers::success();
    });
    p.handle("approve_order", [](const command_message& c, transaction& tx) {
      tx.exec("UPDATE shop_orders SET status = 'approved' WHERE order_id = $1",
              {saga::from_json<order_ref>(c.payload).order_id});
      return tx_answers::success();
    });
  } else if (service == "inventory") {
    p.handle("reserve_inventory", [](const command_message& c, transaction& tx) {
      const auto cmd = saga::from_json<reserve_inventory>(c.payload);
      const std::string left = one(tx, "SELECT on_hand FROM shop_stock WHERE sku = $1 FOR UPDATE", {cmd.sku});
      if (left.empty()) return tx_answers::failure("unknown sku " + cmd.sku);
      if (std::stoll(left) < cmd.quantity) return tx_answers::failure("out of stock");
      tx.exec("UPDATE shop_stock SET on_hand = on_hand - $2 WHERE sku = $1", {cmd.sku, std::to_string(cmd.quantity)});
      tx.exec("INSERT INTO shop_reservations (order_id, sku, quantity, state) VALUES ($1, $2, $3, 'reserved')",
              {cmd.order_id, cmd.sku, std::to_string(cmd.quantity)});
      return tx_answers::success(saga::to_json(inventory_reserved{"res-" + cmd.order_id}));
    });
    p.handle("release_inventory", [](const command_message& c, transaction& tx) {
      const auto ref = saga::from_json<order_ref>(c.payload);
      const auto rows = tx.exec(
          "UPDATE shop_reservations SET state = 'released' WHERE order_id = $1 AND state = 'reserved' "
          "RETURNING sku, quantity",
          {ref.order_id});
      for (const auto& r : rows) tx.exec("UPDATE shop_stock SET on_hand = on_hand + $2 WHERE sku = $1", {r[0], r[1]});
      return tx_answers::success();
    });
  } else if (service == "payments") {
    p.handle("charge_payment", [](const command_message& c, transaction& tx) {
      const auto cmd = saga::from_json<charge_payment>(c.payload);
      if (card_declined(cmd.customer)) return tx_answers::failure("card declined");
      const std::string balance =
          one(tx, "SELECT balance FROM shop_accounts WHERE customer = $1 FOR UPDATE", {cmd.customer});
      if (balance.empty()) return tx_answers::failure("unknown customer " + cmd.customer);
      if (std::stoll(balance) < cmd.amount_cents) return tx_answers::failure("insufficient funds");
      tx.exec("UPDATE shop_accounts SET balance = balance - $2 WHERE customer = $1",
              {cmd.customer, std::to_string(cmd.amount_cents)});
      tx.exec("INSERT INTO shop_charges (order_id, customer, amount_cents, state) VALUES ($1, $2, $3, 'charged')",
              {cmd.order_id, cmd.customer, std::to_string(cmd.amount_cents)});
      return tx_answers::success(saga::to_json(payment_charged{"pay-" + cmd.order_id}));
    });
    p.handle("refund_payment", [](const command_message& c, transaction& tx) {
      const auto rows = tx.exec(
          "UPDATE shop_charges SET state = 'refunded' WHERE order_id = $1 AND state = 'charged' "
          "RETURNING customer, amount_cents",
          {saga::from_json<order_ref>(c.payload).order_id});
      for (const auto& r : rows)
        tx.exec("UPDATE shop_accounts SET balance = balance + $2 WHERE customer = $1", {r[0], r[1]});
      return tx_answers::success();
    });
  } else if (service == "shipping") {
    p.handle("ship_order", [](const command_message& c, transaction& tx) {
      const auto cmd = saga::from_json<ship_order>(c.payload);
      if (address_invalid(cmd.address)) return tx_answers::failure("shipping address invalid");
      tx.exec("INSERT INTO shop_shipments (order_id, tracking_number) VALUES ($1, $2)",
              {cmd.order_id, "trk-" + cmd.order_id});
      return tx_answers::success(saga::to_json(order_shipped{"trk-" + cmd.order_id}));
    });
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string service = argc > 1 ? argv[1] : "";
  if (service != "orders" && service != "inventory" && service != "payments" && service != "shipping") {
    std::cerr << "usage: order-participant orders|inventory|payments|shipping [--silent-on COMMAND_TYPE] "
                 "[--stock N] [--balance N]\n";
    return 2;
  }
  std::set<std::string> silent_on;
  seed amounts;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc || (a != "--silent-on" && a != "--stock" && a != "--balance")) {
      std::cerr << "order-participant: unknown option or missing value: " << a << "\n";
      return 2;
    }
    const std::string v = argv[++i];
    if (a == "--silent-on")
      silent_on.insert(v);
    else
      (a == "--stock" ? amounts.stock_per_sku : amounts.balance_per_customer) = std::stoll(v);
  }
  const char* url = std::getenv("SAGA_PG_URL");
  if (!url) {
    std::cerr << "order-participant: set SAGA_PG_URL\n";
    return 2;
  }
  try {
    (void)saga::storage::migrate(url);
    saga::storage::postgres_session(url).run([&](transaction& tx) { create_tables(tx, service, amounts); });
    saga::storage::postgres_inbox inbox(url);
    auto config = saga::transport::kafka_config::from_env();
    if (const char* prefix = std::getenv("SAGA_KAFKA_PREFIX")) config.topic_prefix = prefix;
    // A process that dies without leaving its group keeps its partitions until its session times out: keep that
    // short (6 s is the smallest a default broker accepts) so another process takes over soon.
    config.properties.emplace("consumer.session.timeout.ms", "6000");
    config.properties.emplace("consumer.heartbeat.interval.ms", "1000");
    config.group_id = "order-participant-" + service;
    config.client_id = "order-" + service;
    config.source = "/order/" + service;
    saga::transport::kafka_transport bus(config);
    saga::transport::participant_options options;
    options.service = service;
    saga::transport::participant p(bus, inbox, options);
    register_handlers(p, service);
    std::atomic<std::uint64_t> ignored{0};
    if (silent_on.empty()) {
      p.start();
    } else {  // the participant's own loop, except that it swallows the silenced command types unanswered
      bus.on_command(service, [&](command_message c, saga::transport::handled_callback handled) {
        if (!silent_on.count(c.command_type)) return p.enqueue(std::move(c), std::move(handled));
        ++ignored;
        std::cerr << "silent: " << c.command_type << " " << c.command_id << " attempt " << c.attempt << std::endl;
        if (handled) handled();
      });
    }
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::cerr << "order-participant " << service << " ready\n";
    stop_signal.acquire();
    bus.stop();
    const auto s = p.stats();
    std::cerr << "order-participant " << service << " stopping: " << s.executed << " executed, " << s.duplicates
              << " duplicates answered from the inbox, " << s.dead_lettered << " dead-lettered, " << ignored.load()
              << " left unanswered\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "order-participant " << service << ": " << e.what() << "\n";
    return 1;
  }
}
