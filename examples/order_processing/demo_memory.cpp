// The order-processing demo on the in-memory store and transport, in one process.
// Participants keep real business state (stock, balances, shipments); some orders run out of stock, some cards
// are declined, some addresses are invalid, and payments fail transiently now and then (retried with backoff).
#include "order_saga.hpp"

#include <saga/storage/hash_chain.hpp>
#include <saga/testing/driver.hpp>
#include <saga/timeline.hpp>

#include <unistd.h>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <random>

using namespace order_processing;
using saga::storage::stored_reply;
using saga::transport::command_message;
using saga::triggers::outcome;

namespace {

stored_reply ok(std::string payload = "{}") { return {outcome::success, std::move(payload), ""}; }
stored_reply fail(std::string reason) { return {outcome::failure, "{}", std::move(reason)}; }

struct reservation {
  std::string sku;
  std::int64_t quantity = 0;
};

// The participants' own state: what their tables would hold.
struct shop {
  std::map<std::string, std::int64_t> stock;
  std::map<std::string, reservation> reservations;  // by order
  std::map<std::string, std::int64_t> balance;
  std::map<std::string, std::pair<std::string, std::int64_t>> charges;  // by order: customer, amount
  std::map<std::string, std::string> order_status, shipments;
  std::int64_t initial_stock = 0, initial_balance = 0;
  std::mt19937_64 rng{2026};
};

void progress(std::size_t done, std::size_t total) {
  const std::size_t width = 40, filled = width * done / total;
  std::printf("%s  [%s%s] %zu/%zu", isatty(1) ? "\r" : "\n", std::string(filled, '#').c_str(),
              std::string(width - filled, '.').c_str(), done, total);
  std::fflush(stdout);
}

void serve_participants(saga::testing::driver& d, shop& s) {
  d.serve("orders", [&s](const command_message& c) {
    const auto ref = saga::from_json<order_ref>(c.payload);
    if (c.command_type == "create_order") s.order_status[ref.order_id] = "created";
    if (c.command_type == "cancel_order") s.order_status[ref.order_id] = "cancelled";
    if (c.command_type == "approve_order") s.order_status[ref.order_id] = "approved";
    return ok();
  });
  d.serve("inventory", [&s](const command_message& c) {
    if (c.command_type == "reserve_inventory") {
      const auto cmd = saga::from_json<reserve_inventory>(c.payload);
      auto& left = s.stock[cmd.sku];
      if (left < cmd.quantity) return fail("out of stock");
      left -= cmd.quantity;
      s.reservations[cmd.order_id] = reservation{cmd.sku, cmd.quantity};
      return ok(saga::to_json(inventory_reserved{"res-" + cmd.order_id}));
    }
    const auto ref = saga::from_json<order_ref>(c.payload);  // release_inventory
    if (auto it = s.reservations.find(ref.order_id); it != s.reservations.end()) {
      s.stock[it->second.sku] += it->second.quantity;
      s.reservations.erase(it);
    }
    return ok();
  });
  d.serve("payments", [&s](const command_message& c) {
    if (c.command_type == "charge_payment") {
      const auto cmd = saga::from_json<charge_payment>(c.payload);
      if (s.rng() % 100 < 5) return stored_reply{outcome::retryable_failure, "{}", "payment gateway busy"};
      if (card_declined(cmd.customer)) return fail("card declined");
      auto& balance = s.balance[cmd.customer];
      if (balance < cmd.amount_cents) return fail("insufficient funds");
      balance -= cmd.amount_cents;
      s.charges[cmd.order_id] = {cmd.customer, cmd.amount_cents};
      return ok(saga::to_json(payment_charged{"pay-" + cmd.order_id}));
    }
    const auto ref = saga::from_json<order_ref>(c.payload);  // refund_payment
    if (auto it = s.charges.find(ref.order_id); it != s.charges.end()) {
      s.balance[it->second.first] += it->second.second;
      s.charges.erase(it);
    }
    return ok();
  });
  d.serve("shipping", [&s](const command_message& c) {
    const auto cmd = saga::from_json<ship_order>(c.payload);
    if (address_invalid(cmd.address)) return fail("shipping address invalid");
    s.shipments[cmd.order_id] = "trk-" + cmd.order_id;
    return ok(saga::to_json(order_shipped{"trk-" + cmd.order_id}));
  });
}

}  // namespace

int main(int argc, char** argv) {
  const std::size_t total = argc > 1 ? std::stoul(argv[1]) : 1000;
  std::cout << "Saga order-processing demo\n"
            << "  mode: IN-MEMORY event store and transport in one process (not PostgreSQL, not Kafka)\n\n";
  shop s;
  for (int i = 0; i < 10; ++i) s.initial_stock += s.stock["sku-" + std::to_string(i)] = 250;
  for (int i = 0; i < 100; ++i) s.initial_balance += s.balance["cust-" + std::to_string(i)] = 40'000;

  // The driver's manual clock starts at the wall-clock time; timers come due only as the demo advances it.
  saga::testing::driver d(7, std::chrono::time_point_cast<std::chrono::milliseconds>(std::chrono::system_clock::now()));
  d.add(order_saga());
  serve_participants(d, s);

  std::cout << "placing " << total << " orders\n";
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<saga::saga_id> ids;
  std::map<saga::saga_id, std::string> order_of;
  for (std::size_t i = 0; i < total; ++i) {
    order o;
    o.order_id = "o-" + std::to_string(i + 1);
    o.customer = "cust-" + std::to_string(i % 100);
    o.sku = "sku-" + std::to_string(i % 10);
    o.quantity = 1 + static_cast<std::int64_t>(i % 4);
    o.amount_cents = 1000 + static_cast<std::int64_t>((i * 37) % 9000);
    o.address = i % 29 == 5 ? "1 Nowhere Lane" : std::to_string(i) + " Main Street";
    const auto id = d.start_with("order", o, o.order_id);
    ids.push_back(id);
    order_of[id] = o.order_id;
    if ((i + 1) % (total / 10 == 0 ? 1 : total / 10) == 0 || i + 1 == total) progress(i + 1, total);
    if (i % 50 == 49) d.advance(saga::duration{1000});  // time passes: retries come due
  }
  for (int i = 0; i < 120 && d.finished().size() < total; ++i) d.advance(saga::duration{1000});
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "\n\n";

  std::map<saga::saga_status, std::size_t> by_status;
  std::map<std::string, std::size_t> by_reason;
  std::size_t events = 0, broken_chains = 0;
  saga::saga_id shown{};
  for (const auto& id : ids) {
    const auto st = d.state(id);
    ++by_status[st.status];
    events += st.seq;
    if (st.status == saga::saga_status::compensated) {
      const auto colon = st.reason.rfind(": ");
      ++by_reason[colon == std::string::npos ? st.reason : st.reason.substr(colon + 2)];
      if (shown.is_nil() && st.reason.find("card declined") != std::string::npos) shown = id;
    }
    if (saga::storage::verify_chain(d.store().load(id))) ++broken_chains;
  }
  std::cout << "summary\n"
            << "  completed    " << by_status[saga::saga_status::completed] << "\n"
            << "  compensated  " << by_status[saga::saga_status::compensated] << "\n";
  for (const auto& [reason, n] : by_reason) std::cout << "    " << n << " x " << reason << "\n";
  std::cout << "  stuck        " << by_status[saga::saga_status::stuck] << "\n"
            << "  running      " << by_status[saga::saga_status::running] + by_status[saga::saga_status::compensating]
            << "\n"
            << "  events       " << events << " appended, hash chains verified: " << ids.size() - broken_chains << "/"
            << ids.size() << "\n"
            << "  throughput   " << static_cast<long>(static_cast<double>(total) / seconds) << " sagas/s (in memory, "
            << "one thread)\n\n";

  // Every reservation was released or shipped, every charge refunded or kept for a completed order.
  std::int64_t stock_now = 0, reserved_kept = 0, balance_now = 0, charged_kept = 0;
  bool consistent = true;
  for (const auto& [sku, n] : s.stock) stock_now += n;
  for (const auto& [sku, n] : s.balance) balance_now += n;
  for (const auto& id : ids) {
    const auto st = d.state(id).status;
    const auto& oid = order_of[id];
    const bool kept = st == saga::saga_status::completed;
    if (auto it = s.reservations.find(oid); it != s.reservations.end()) {
      reserved_kept += it->second.quantity;
      consistent &= kept;
    }
    if (auto it = s.charges.find(oid); it != s.charges.end()) {
      charged_kept += it->second.second;
      consistent &= kept;
    }
    if (kept) consistent &= s.shipments.count(oid) == 1 && s.order_status[oid] == "approved";
    if (st == saga::saga_status::compensated)
      consistent &= s.order_status[oid] == "cancelled" || s.order_status[oid].empty();
  }
  consistent &= stock_now + reserved_kept == s.initial_stock && balance_now + charged_kept == s.initial_balance;
  std::cout << "consistency\n"
            << "  stock    " << stock_now << " on hand + " << reserved_kept << " shipped = " << s.initial_stock << "\n"
            << "  balances " << balance_now << " + " << charged_kept << " kept charges = " << s.initial_balance << "\n"
            << "  "
            << (consistent ? "OK: every reservation released or shipped, every charge refunded or kept"
                           : "BROKEN: participants' effects do not add up")
            << "\n\n";
  if (!shown.is_nil()) {
    std::cout << "timeline of compensated order " << order_of[shown] << " (saga " << shown.to_string() << ")\n"
              << saga::format_timeline(d.events(shown)) << "\n";
  }
  const bool all_terminal =
      by_status[saga::saga_status::completed] + by_status[saga::saga_status::compensated] == total;
  return all_terminal && consistent && broken_chains == 0 ? 0 : 1;
}
