// saga-kafka-dev — an embedded Kafka broker for development, demos and tests: librdkafka's mock cluster (real Kafka
// protocol over loopback TCP) with a line-based control port for fault injection. Runs until SIGINT/SIGTERM.
//
//   saga-kafka-dev --bootstrap-file FILE [--control-file FILE] [--brokers N] [--topic NAME:PARTITIONS]...
//
// Control protocol (one command per line, one answer line "ok[ …]" or "error …"):
//   ping | bootstrap | down B | up B | rtt B MS | produce_errors COUNT ERROR | request_errors APIKEY COUNT ERROR
//   create_topic NAME PARTITIONS [REPLICATION] | leader TOPIC PARTITION B | clear_errors
// ERROR is a Kafka error name (e.g. NOT_LEADER_FOR_PARTITION, REQUEST_TIMED_OUT) or number.
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct handle_deleter {
  void operator()(rd_kafka_t* rk) const noexcept { rd_kafka_destroy(rk); }
};
struct cluster_deleter {
  void operator()(rd_kafka_mock_cluster_t* c) const noexcept { rd_kafka_mock_cluster_destroy(c); }
};
struct fd_closer {
  int fd = -1;
  explicit fd_closer(int f) : fd(f) {}
  ~fd_closer() {
    if (fd >= 0) ::close(fd);
  }
  fd_closer(const fd_closer&) = delete;
  fd_closer& operator=(const fd_closer&) = delete;
};

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "saga-kafka-dev: %s\n", what.c_str());
  std::exit(1);
}

void write_file_atomically(const std::string& path, const std::string& text) {
  auto tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << text << '\n';
    if (!out) die("cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) die("cannot rename " + tmp + " to " + path);
}

bool parse_int(const std::string& s, long& out) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  out = std::strtol(s.c_str(), &end, 10);
  return errno == 0 && end && *end == '\0';
}

bool parse_error(const std::string& s, rd_kafka_resp_err_t& out) {
  long n = 0;
  if (parse_int(s, n)) {
    out = static_cast<rd_kafka_resp_err_t>(n);
    return true;
  }
  const rd_kafka_err_desc* descs = nullptr;
  size_t cnt = 0;
  rd_kafka_get_err_descs(&descs, &cnt);
  std::string name = s.rfind("RD_KAFKA_RESP_ERR_", 0) == 0 ? s.substr(18) : s;
  for (size_t i = 0; i < cnt; ++i) {
    if (descs[i].name && name == descs[i].name) {
      out = descs[i].code;
      return true;
    }
  }
  return false;
}

class broker {
 public:
  broker(rd_kafka_mock_cluster_t* c, int count) : cluster_(c), count_(count) {}

  std::string execute(const std::string& line) {
    std::istringstream in(line);
    std::vector<std::string> w;
    for (std::string s; in >> s;) w.push_back(s);
    if (w.empty()) return "error empty command";
    const auto& cmd = w[0];
    long a = 0, b = 0, c = 0;
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (cmd == "ping" && w.size() == 1) return "ok";
    if (cmd == "bootstrap" && w.size() == 1) return std::string("ok ") + rd_kafka_mock_cluster_bootstraps(cluster_);
    if ((cmd == "down" || cmd == "up") && w.size() == 2 && parse_int(w[1], a)) {
      if (a < 1 || a > count_) return "error no broker " + w[1] + " (brokers are 1.." + std::to_string(count_) + ")";
      auto id = static_cast<int32_t>(a);
      err = cmd == "down" ? rd_kafka_mock_broker_set_down(cluster_, id) : rd_kafka_mock_broker_set_up(cluster_, id);
      return answer(err);
    }
    if (cmd == "rtt" && w.size() == 3 && parse_int(w[1], a) && parse_int(w[2], b) && b >= 0) {
      if (a < 1 || a > count_) return "error no broker " + w[1];
      return answer(rd_kafka_mock_broker_set_rtt(cluster_, static_cast<int32_t>(a), static_cast<int>(b)));
    }
    if (cmd == "produce_errors" && w.size() == 3 && parse_int(w[1], a) && a > 0) {
      if (!parse_error(w[2], err)) return "error unknown Kafka error " + w[2];
      push_errors(0 /* Produce */, a, err);
      return "ok";
    }
    if (cmd == "request_errors" && w.size() == 4 && parse_int(w[1], b) && parse_int(w[2], a) && a > 0) {
      if (!parse_error(w[3], err)) return "error unknown Kafka error " + w[3];
      push_errors(static_cast<int16_t>(b), a, err);
      return "ok";
    }
    if (cmd == "create_topic" && (w.size() == 3 || w.size() == 4) && parse_int(w[2], a) && a > 0) {
      c = std::min<long>(3, count_);
      if (w.size() == 4 && (!parse_int(w[3], c) || c < 1 || c > count_)) return "error bad replication factor";
      return answer(rd_kafka_mock_topic_create(cluster_, w[1].c_str(), static_cast<int>(a), static_cast<int>(c)));
    }
    if (cmd == "leader" && w.size() == 4 && parse_int(w[2], a) && parse_int(w[3], b)) {
      return answer(
          rd_kafka_mock_partition_set_leader(cluster_, w[1].c_str(), static_cast<int32_t>(a), static_cast<int32_t>(b)));
    }
    if (cmd == "clear_errors" && w.size() == 1) {
      for (int16_t api = 0; api < 70; ++api) rd_kafka_mock_clear_request_errors(cluster_, api);
      return "ok";
    }
    return "error unknown or malformed command: " + line;
  }

 private:
  void push_errors(int16_t api, long count, rd_kafka_resp_err_t err) {
    std::vector<rd_kafka_resp_err_t> errors(static_cast<size_t>(count), err);
    rd_kafka_mock_push_request_errors_array(cluster_, api, errors.size(), errors.data());
  }
  static std::string answer(rd_kafka_resp_err_t err) {
    return err ? std::string("error ") + rd_kafka_err2name(err) + ": " + rd_kafka_err2str(err) : "ok";
  }
  rd_kafka_mock_cluster_t* cluster_;
  int count_;
};

void serve(int client, broker& b) {
  std::string buffer;
  char chunk[4096];
  for (;;) {
    auto n = ::read(client, chunk, sizeof chunk);
    if (n <= 0) return;
    buffer.append(chunk, static_cast<size_t>(n));
    for (auto nl = buffer.find('\n'); nl != std::string::npos; nl = buffer.find('\n')) {
      auto line = buffer.substr(0, nl);
      buffer.erase(0, nl + 1);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      auto reply = b.execute(line);
      std::fprintf(stderr, "saga-kafka-dev: control '%s' -> %s\n", line.c_str(), reply.c_str());
      reply += '\n';
      if (::write(client, reply.data(), reply.size()) < 0) return;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string bootstrap_file, control_file;
  long brokers = 3;
  std::vector<std::pair<std::string, long>> topics;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) die("missing value for " + arg);
      return argv[++i];
    };
    if (arg == "--bootstrap-file") {
      bootstrap_file = value();
    } else if (arg == "--control-file") {
      control_file = value();
    } else if (arg == "--brokers") {
      if (!parse_int(value(), brokers) || brokers < 1) die("--brokers needs a positive number");
    } else if (arg == "--topic") {
      auto t = value();
      auto colon = t.rfind(':');
      long parts = 0;
      if (colon == std::string::npos || !parse_int(t.substr(colon + 1), parts) || parts < 1)
        die("--topic needs NAME:PARTITIONS, got " + t);
      topics.emplace_back(t.substr(0, colon), parts);
    } else if (arg == "-h" || arg == "--help") {
      std::puts(
          "usage: saga-kafka-dev --bootstrap-file FILE [--control-file FILE] [--brokers N] "
          "[--topic NAME:PARTITIONS]...");
      return 0;
    } else {
      die("unknown argument " + arg + " (see --help)");
    }
  }
  if (bootstrap_file.empty()) die("--bootstrap-file is required");

  // Signals are taken synchronously through a signalfd; block them before librdkafka starts its threads.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  fd_closer sfd(signalfd(-1, &signals, SFD_CLOEXEC));
  if (sfd.fd < 0) die(std::string("signalfd: ") + std::strerror(errno));

  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char err[512];
  rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
  std::unique_ptr<rd_kafka_t, handle_deleter> rk(rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err));
  if (!rk) die(std::string("cannot create the client hosting the mock cluster: ") + err);
  std::unique_ptr<rd_kafka_mock_cluster_t, cluster_deleter> cluster(
      rd_kafka_mock_cluster_new(rk.get(), static_cast<int>(brokers)));
  if (!cluster) die("cannot create the mock cluster");
  for (const auto& [name, parts] : topics) {
    if (auto e = rd_kafka_mock_topic_create(cluster.get(), name.c_str(), static_cast<int>(parts),
                                            static_cast<int>(std::min<long>(3, brokers))))
      die("cannot create topic " + name + ": " + rd_kafka_err2str(e));
  }
  broker control(cluster.get(), static_cast<int>(brokers));

  fd_closer listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (listener.fd < 0 || ::bind(listener.fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listener.fd, 16) != 0 || ::getsockname(listener.fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    die(std::string("cannot listen on loopback for control: ") + std::strerror(errno));
  std::string control_address = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));

  // Control file first: whoever sees the bootstrap file may rely on the control file being there.
  if (!control_file.empty()) write_file_atomically(control_file, control_address);
  std::string bootstraps = rd_kafka_mock_cluster_bootstraps(cluster.get());
  write_file_atomically(bootstrap_file, bootstraps);
  std::fprintf(stderr, "saga-kafka-dev: %ld brokers at %s, control at %s (pid %d)\n", brokers, bootstraps.c_str(),
               control_address.c_str(), static_cast<int>(::getpid()));

  for (;;) {
    pollfd fds[2] = {{sfd.fd, POLLIN, 0}, {listener.fd, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      die(std::string("poll: ") + std::strerror(errno));
    }
    if (fds[0].revents & POLLIN) {
      signalfd_siginfo info{};
      if (::read(sfd.fd, &info, sizeof info) == static_cast<ssize_t>(sizeof info) && info.ssi_signo == SIGPIPE)
        continue;
      break;
    }
    if (fds[1].revents & POLLIN) {
      fd_closer client(::accept4(listener.fd, nullptr, nullptr, SOCK_CLOEXEC));
      if (client.fd >= 0) serve(client.fd, control);
    }
  }
  std::fprintf(stderr, "saga-kafka-dev: stopping\n");
  return 0;
}
