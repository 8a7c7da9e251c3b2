#include "saga/transport/message.hpp"

namespace saga::transport {

command_message command_message::from(const effects::send_command& e, std::string reply_to, time_point now) {
  command_message m;
  m.command_id = e.command_id;
  m.saga = e.saga;
  m.saga_type = e.saga_type;
  m.step = e.step;
  m.compensation = e.compensation;
  m.attempt = e.attempt;
  m.service = e.service;
  m.command_type = e.command_type;
  m.payload = e.payload;
  m.compensates = e.compensates;
  m.reply_to = std::move(reply_to);
  m.time = now;
  return m;
}

triggers::reply reply_message::to_trigger() const {
  return triggers::reply{command_id, attempt, result, payload, reason};
}

}  // namespace saga::transport
