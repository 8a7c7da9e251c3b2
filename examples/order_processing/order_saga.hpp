// The order-processing saga: create order -> reserve inventory -> charge payment -> ship (pivot) -> approve.
// Compensations: cancel order, release inventory, refund payment. Shipping is the pivot: once the parcel has
// left, nothing is undone; approving the order afterwards is retriable (it can only succeed eventually).
#pragma once

#include <saga/definition.hpp>

#include <cereal/types/string.hpp>
#include <cstdint>
#include <string>

namespace order_processing {

// The saga's data: the order as placed, plus what the participants answered.
struct order {
  std::string order_id;
  std::string customer;
  std::string sku;
  std::int64_t quantity = 0;
  std::int64_t amount_cents = 0;
  std::string address;
  std::string reservation_id;
  std::string payment_id;
  std::string tracking_number;

  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(order_id), CEREAL_NVP(customer), CEREAL_NVP(sku), CEREAL_NVP(quantity), CEREAL_NVP(amount_cents),
       CEREAL_NVP(address), CEREAL_NVP(reservation_id), CEREAL_NVP(payment_id), CEREAL_NVP(tracking_number));
  }
};

// Command payloads and replies (each is the JSON a participant sees).
struct order_ref {
  std::string order_id;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(order_id));
  }
};
struct create_order {
  std::string order_id, customer;
  std::int64_t amount_cents = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(order_id), CEREAL_NVP(customer), CEREAL_NVP(amount_cents));
  }
};
struct reserve_inventory {
  std::string order_id, sku;
  std::int64_t quantity = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(order_id), CEREAL_NVP(sku), CEREAL_NVP(quantity));
  }
};
struct inventory_reserved {
  std::string reservation_id;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(reservation_id));
  }
};
struct charge_payment {
  std::string order_id, customer;
  std::int64_t amount_cents = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(order_id), CEREAL_NVP(customer), CEREAL_NVP(amount_cents));
  }
};
struct payment_charged {
  std::string payment_id;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(payment_id));
  }
};
struct ship_order {
  std::string order_id, sku, address;
  std::int64_t quantity = 0;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(order_id), CEREAL_NVP(sku), CEREAL_NVP(address), CEREAL_NVP(quantity));
  }
};
struct order_shipped {
  std::string tracking_number;
  template <class Archive>
  void serialize(Archive& ar) {
    ar(CEREAL_NVP(tracking_number));
  }
};

// The definition, version 1. `step_timeout` is how long each step's attempt waits for its reply (tests shorten it).
// The example's business rules, in one place for the participants that apply them and the checks that expect them:
// a customer whose id ends in 7 has their card declined; an address on "Nowhere" Lane cannot be shipped to.
inline bool card_declined(const std::string& customer) { return !customer.empty() && customer.back() == '7'; }
inline bool address_invalid(const std::string& address) { return address.find("Nowhere") != std::string::npos; }

inline saga::definition order_saga(saga::duration step_timeout = saga::retry_policy{}.timeout) {
  return saga::define<order>("order", 1)
      .step("create_order")
      .invoke("orders", "create_order",
              [](const order& o) {
                return create_order{o.order_id, o.customer, o.amount_cents};
              })
      .timeout(step_timeout)
      .compensate("orders", "cancel_order", [](const order& o) { return order_ref{o.order_id}; })
      .step("reserve_inventory")
      .invoke("inventory", "reserve_inventory",
              [](const order& o) {
                return reserve_inventory{o.order_id, o.sku, o.quantity};
              })
      .timeout(step_timeout)
      .on_reply([](order& o, const inventory_reserved& r) { o.reservation_id = r.reservation_id; })
      .compensate("inventory", "release_inventory", [](const order& o) { return order_ref{o.order_id}; })
      .step("charge_payment")
      .invoke("payments", "charge_payment",
              [](const order& o) {
                return charge_payment{o.order_id, o.customer, o.amount_cents};
              })
      .timeout(step_timeout)
      .on_reply([](order& o, const payment_charged& r) { o.payment_id = r.payment_id; })
      .compensate("payments", "refund_payment", [](const order& o) { return order_ref{o.order_id}; })
      .step("ship_order")
      .pivot()
      .invoke("shipping", "ship_order",
              [](const order& o) {
                return ship_order{o.order_id, o.sku, o.address, o.quantity};
              })
      .timeout(step_timeout)
      .on_reply([](order& o, const order_shipped& r) { o.tracking_number = r.tracking_number; })
      .step("approve_order")
      .retriable()
      .invoke("orders", "approve_order", [](const order& o) { return order_ref{o.order_id}; })
      .timeout(step_timeout)
      .build();
}

}  // namespace order_processing
