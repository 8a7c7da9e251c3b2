// The participants' own tables (each service owns its tables; they share one database in the demo) and the
// consistency checks the demo and the tests run over them.
#pragma once

#include <saga/storage/inbox.hpp>

#include <string>
#include <vector>

namespace order_processing {

// What the tables are seeded with when they are first created.
struct seed {
  long long stock_per_sku = 250;           // units of each of the 10 skus
  long long balance_per_customer = 40000;  // cents in each of the 100 customers' accounts
};

// Creates the tables of `service` (orders, inventory, payments, shipping) if missing and seeds stock and
// balances once (later seeds change nothing). Idempotent.
void create_tables(saga::storage::transaction& tx, const std::string& service, const seed& amounts = {});

// What the books say.
struct books {
  long long stock_initial = 0, stock_on_hand = 0, stock_reserved = 0;
  long long money_initial = 0, money_balances = 0, money_charged = 0;
  long long orders_checked = 0;
  std::vector<std::string> problems;  // each names the order and what does not add up
  [[nodiscard]] bool consistent() const { return problems.empty(); }
};

// Checks conservation (stock on hand + reserved = initial; balances + kept charges = initial) and, for each order
// id given with its saga's final status ("completed" / "compensated"), that its effects match that ending.
[[nodiscard]] books check_books(saga::storage::transaction& tx,
                                const std::vector<std::pair<std::string, std::string>>& order_status);

}  // namespace order_processing
