#include "saga/runtime/metrics_server.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <atomic>
#include <stdexcept>
#include <thread>

namespace saga::runtime {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

struct metrics_server::impl {
  const runtime::metrics& source;
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::thread thread;

  explicit impl(const runtime::metrics& m) : source(m) {}

  void accept() {
    acceptor.async_accept([this](boost::system::error_code ec, tcp::socket socket) {
      if (ec) return;  // closed
      serve(std::move(socket));
      accept();
    });
  }

  // One request per connection, answered synchronously: scrapes are rare and small.
  void serve(tcp::socket socket) {
    boost::system::error_code ec;
    boost::beast::flat_buffer buffer;
    http::request<http::string_body> request;
    http::read(socket, buffer, request, ec);
    if (ec) return;
    http::response<http::string_body> response;
    response.version(request.version());
    response.keep_alive(false);
    if (request.method() == http::verb::get && request.target() == "/metrics") {
      response.result(http::status::ok);
      response.set(http::field::content_type, "text/plain; version=0.0.4");
      response.body() = source.prometheus();
    } else {
      response.result(http::status::not_found);
      response.set(http::field::content_type, "text/plain");
      response.body() = "only GET /metrics is served here\n";
    }
    response.prepare_payload();
    http::write(socket, response, ec);
    socket.shutdown(tcp::socket::shutdown_both, ec);
  }
};

metrics_server::metrics_server(const runtime::metrics& source, const std::string& address, std::uint16_t port)
    : impl_(std::make_unique<impl>(source)) {
  boost::system::error_code ec;
  const auto ip = asio::ip::make_address(address, ec);
  if (ec) throw std::runtime_error("metrics server: '" + address + "' is not an IP address");
  const tcp::endpoint endpoint(ip, port);
  impl_->acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl_->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) impl_->acceptor.bind(endpoint, ec);
  if (!ec) impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    throw std::runtime_error("metrics server cannot listen on " + address + ":" + std::to_string(port) + ": " +
                             ec.message());
  impl_->accept();
  impl_->thread = std::thread([this] { impl_->io.run(); });
}

metrics_server::~metrics_server() {
  asio::post(impl_->io, [this] {
    boost::system::error_code ec;
    impl_->acceptor.close(ec);
  });
  impl_->thread.join();
}

std::uint16_t metrics_server::port() const noexcept { return impl_->acceptor.local_endpoint().port(); }

}  // namespace saga::runtime
