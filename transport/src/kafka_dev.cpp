#include "saga/transport/kafka_dev.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <thread>

namespace saga::transport {

namespace {

std::string read_first_line(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

}  // namespace

std::string kafka_dev_control(const std::string& address, const std::string& line) {
  auto colon = address.rfind(':');
  if (colon == std::string::npos) throw std::runtime_error("bad control address '" + address + "' (host:port)");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(std::stoi(address.substr(colon + 1))));
  if (::inet_pton(AF_INET, address.substr(0, colon).c_str(), &addr.sin_addr) != 1)
    throw std::runtime_error("bad control address '" + address + "' (IPv4 host:port)");
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  struct closer {
    int fd;
    ~closer() { ::close(fd); }
  } guard{fd};
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    throw std::runtime_error("cannot reach the broker control at " + address + ": " + std::strerror(errno));
  std::string request = line + "\n";
  if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size()))
    throw std::runtime_error("cannot send to the broker control at " + address);
  ::shutdown(fd, SHUT_WR);
  std::string answer;
  char buf[1024];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) answer.append(buf, static_cast<std::size_t>(n));
  while (!answer.empty() && (answer.back() == '\n' || answer.back() == '\r')) answer.pop_back();
  if (answer.empty()) throw std::runtime_error("no answer from the broker control at " + address);
  return answer;
}

dev_broker::dev_broker(const std::string& program, std::vector<std::string> args, std::chrono::milliseconds timeout) {
  if (const char* env = std::getenv("SAGA_KAFKA_BROKERS"); env && *env) {
    bootstrap_ = env;
    if (const char* control = std::getenv("SAGA_KAFKA_CONTROL"); control) control_ = control;
    return;
  }
  if (::access(program.c_str(), X_OK) != 0)
    throw std::runtime_error("embedded broker program not found or not executable: " + program +
                             " (build target saga-kafka-dev, or set SAGA_KAFKA_BROKERS)");
  char templ[] = "/tmp/saga-kafka-dev.XXXXXX";
  if (!::mkdtemp(templ)) throw std::runtime_error(std::string("mkdtemp: ") + std::strerror(errno));
  dir_ = templ;
  const std::string bootstrap_file = dir_ + "/bootstrap", control_file = dir_ + "/control", log = dir_ + "/broker.log";
  std::vector<std::string> argv_s{program, "--bootstrap-file", bootstrap_file, "--control-file", control_file};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  pid_ = ::fork();
  if (pid_ < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  if (pid_ == 0) {
    // The broker never outlives the process that started it (a test that crashed included), and it writes to its
    // own log, never to the parent's stdout: a runner waiting for that pipe to close would otherwise hang.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) std::_Exit(0);
    if (int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644); fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    ::execv(program.c_str(), argv.data());
    std::_Exit(127);
  }
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    bootstrap_ = read_first_line(bootstrap_file);
    if (!bootstrap_.empty()) break;
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      shutdown();
      throw std::runtime_error("embedded broker " + program + " exited before writing its bootstrap file");
    }
    if (std::chrono::steady_clock::now() > deadline) {
      shutdown();
      throw std::runtime_error("embedded broker did not write " + bootstrap_file + " in time");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // startup only, not a hot path
  }
  control_ = read_first_line(control_file);
}

dev_broker::~dev_broker() { shutdown(); }

void dev_broker::shutdown() noexcept {
  if (pid_ > 0) {
    ::kill(pid_, SIGTERM);
    int status = 0;
    bool reaped = false;
    for (int i = 0; i < 500 && !reaped; ++i) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        reaped = true;
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
    if (!reaped) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
    }
    pid_ = -1;
  }
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    dir_.clear();
  }
}

std::string dev_broker::control(const std::string& line) const {
  if (control_.empty())
    throw std::runtime_error(
        "no broker control interface (a real cluster is used: set SAGA_KAFKA_CONTROL or unset "
        "SAGA_KAFKA_BROKERS to run fault injection)");
  auto answer = kafka_dev_control(control_, line);
  if (answer.rfind("ok", 0) != 0) throw std::runtime_error("broker control '" + line + "': " + answer);
  return answer;
}

}  // namespace saga::transport
