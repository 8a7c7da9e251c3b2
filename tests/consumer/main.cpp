// Defines a two-step saga, runs it on the in-memory test kit, and checks that it completed.
#include <saga/definition.hpp>
#include <saga/testing/driver.hpp>

#include <cereal/types/string.hpp>
#include <iostream>

struct booking {
  std::string guest;
  std::string room;
  template <class A>
  void serialize(A& ar) {
    ar(CEREAL_NVP(guest), CEREAL_NVP(room));
  }
};
struct room_held {
  std::string room;
  template <class A>
  void serialize(A& ar) {
    ar(CEREAL_NVP(room));
  }
};

int main() {
  const auto def = saga::define<booking>("booking", 1)
                       .step("hold_room")
                       .invoke("hotel", "hold_room", [](const booking& b) { return b; })
                       .on_reply([](booking& b, const room_held& r) { b.room = r.room; })
                       .compensate("hotel", "release_room", [](const booking& b) { return b; })
                       .step("confirm")
                       .pivot()
                       .invoke("hotel", "confirm", [](const booking& b) { return b; })
                       .build();
  saga::testing::driver driver;
  driver.add(def);
  driver.serve("hotel", [](const saga::transport::command_message& c) {
    return saga::storage::stored_reply{saga::triggers::outcome::success,
                                       c.command_type == "hold_room" ? R"({"room":"101"})" : "{}", ""};
  });
  const auto id = driver.start_with("booking", booking{"ada", ""});
  const auto state = driver.state(id);
  std::cout << "saga " << id.to_string() << " is " << saga::to_string(state.status) << " with data " << state.data
            << "\n";
  return state.status == saga::saga_status::completed && state.data == R"({"guest":"ada","room":"101"})" ? 0 : 1;
}
