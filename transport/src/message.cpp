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

reply_message reply_message::answering(const command_message& command, triggers::outcome result, std::string payload,
                                       std::string reason, time_point now) {
  reply_message r;
  r.command_id = command.command_id;
  r.saga = command.saga;
  r.saga_type = command.saga_type;
  r.step = command.step;
  r.attempt = command.attempt;
  r.result = result;
  r.payload = std::move(payload);
  r.reason = std::move(reason);
  r.traceparent = command.traceparent;
  r.time = now;
  return r;
}

triggers::reply reply_message::to_trigger() const {
  return triggers::reply{command_id, attempt, result, payload, reason};
}

}  // namespace saga::transport
