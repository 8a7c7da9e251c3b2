#include "shop_schema.hpp"

#include <map>

namespace order_processing {

void create_tables(saga::storage::transaction& tx, const std::string& service, const seed& amounts) {
  if (service == "orders") {
    tx.exec(
        "CREATE TABLE IF NOT EXISTS shop_orders (order_id text PRIMARY KEY, customer text NOT NULL, "
        "amount_cents bigint NOT NULL, status text NOT NULL)");
  } else if (service == "inventory") {
    tx.exec(
        "CREATE TABLE IF NOT EXISTS shop_stock (sku text PRIMARY KEY, on_hand bigint NOT NULL CHECK (on_hand >= 0), "
        "initial bigint NOT NULL)");
    tx.exec(
        "CREATE TABLE IF NOT EXISTS shop_reservations (order_id text PRIMARY KEY, sku text NOT NULL, "
        "quantity bigint NOT NULL, state text NOT NULL)");
    tx.exec(
        "INSERT INTO shop_stock (sku, on_hand, initial) SELECT 'sku-' || i, $1::bigint, $1::bigint "
        "FROM generate_series(0, 9) i ON CONFLICT (sku) DO NOTHING",
        {std::to_string(amounts.stock_per_sku)});
  } else if (service == "payments") {
    tx.exec(
        "CREATE TABLE IF NOT EXISTS shop_accounts (customer text PRIMARY KEY, balance bigint NOT NULL "
        "CHECK (balance >= 0), initial bigint NOT NULL)");
    tx.exec(
        "CREATE TABLE IF NOT EXISTS shop_charges (order_id text PRIMARY KEY, customer text NOT NULL, "
        "amount_cents bigint NOT NULL, state text NOT NULL)");
    tx.exec(
        "INSERT INTO shop_accounts (customer, balance, initial) SELECT 'cust-' || i, $1::bigint, $1::bigint "
        "FROM generate_series(0, 99) i ON CONFLICT (customer) DO NOTHING",
        {std::to_string(amounts.balance_per_customer)});
  } else if (service == "shipping") {
    tx.exec("CREATE TABLE IF NOT EXISTS shop_shipments (order_id text PRIMARY KEY, tracking_number text NOT NULL)");
  }
}

namespace {
long long number(const std::optional<std::string>& v) { return v ? std::stoll(*v) : 0; }
}  // namespace

books check_books(saga::storage::transaction& tx,
                  const std::vector<std::pair<std::string, std::string>>& order_status) {
  books b;
  auto one = [&](const char* sql) { return tx.exec(sql).at(0); };
  const auto stock = one("SELECT sum(initial), sum(on_hand) FROM shop_stock");
  b.stock_initial = number(stock[0]);
  b.stock_on_hand = number(stock[1]);
  b.stock_reserved =
      number(one("SELECT coalesce(sum(quantity), 0) FROM shop_reservations WHERE state = 'reserved'")[0]);
  const auto money = one("SELECT sum(initial), sum(balance) FROM shop_accounts");
  b.money_initial = number(money[0]);
  b.money_balances = number(money[1]);
  b.money_charged = number(one("SELECT coalesce(sum(amount_cents), 0) FROM shop_charges WHERE state = 'charged'")[0]);
  if (b.stock_on_hand + b.stock_reserved != b.stock_initial)
    b.problems.push_back("stock: " + std::to_string(b.stock_on_hand) + " on hand + " +
                         std::to_string(b.stock_reserved) + " reserved != " + std::to_string(b.stock_initial) +
                         " initial");
  if (b.money_balances + b.money_charged != b.money_initial)
    b.problems.push_back("money: " + std::to_string(b.money_balances) + " in balances + " +
                         std::to_string(b.money_charged) + " charged != " + std::to_string(b.money_initial) +
                         " initial");
  for (const auto& [order_id, status] : order_status) {
    ++b.orders_checked;
    const auto row = tx.exec(
        "SELECT (SELECT status FROM shop_orders WHERE order_id = $1), "
        "(SELECT state FROM shop_reservations WHERE order_id = $1), "
        "(SELECT state FROM shop_charges WHERE order_id = $1), "
        "(SELECT count(*) FROM shop_shipments WHERE order_id = $1)",
        {order_id});
    const std::string order = row[0][0].value_or("none"), reservation = row[0][1].value_or("none"),
                      charge = row[0][2].value_or("none");
    const long long shipments = number(row[0][3]);
    const bool ok = status == "completed"
                        ? order == "approved" && reservation == "reserved" && charge == "charged" && shipments == 1
                        : order != "approved" && order != "created" && reservation != "reserved" &&
                              charge != "charged" && shipments == 0;
    if (!ok)
      b.problems.push_back("order " + order_id + " ended " + status + " but order=" + order + " reservation=" +
                           reservation + " charge=" + charge + " shipments=" + std::to_string(shipments));
  }
  return b;
}

}  // namespace order_processing
