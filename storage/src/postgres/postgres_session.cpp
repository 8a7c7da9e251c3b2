#include "saga/storage/postgres_session.hpp"

#include "pg_detail.hpp"

namespace saga::storage {

struct postgres_session::impl {
  std::string url;
  std::unique_ptr<pqxx::connection> conn;
};

postgres_session::postgres_session(const std::string& url) : impl_(std::make_unique<impl>()) {
  impl_->url = url;
  impl_->conn = detail::connect_planning_each_time(url, "postgres_session");
}

postgres_session::~postgres_session() = default;
postgres_session::postgres_session(postgres_session&&) noexcept = default;
postgres_session& postgres_session::operator=(postgres_session&&) noexcept = default;

void postgres_session::run(const std::function<void(transaction& tx)>& body) {
  if (!impl_->conn || !impl_->conn->is_open())
    impl_->conn = detail::connect_planning_each_time(impl_->url, "postgres_session");
  try {
    pqxx::work work(*impl_->conn);
    detail::work_transaction tx(work);
    body(tx);
    work.commit();
  } catch (...) {
    if (detail::connection_lost(impl_->conn.get())) impl_->conn.reset();
    detail::rethrow_translated("postgres_session");
  }
}

std::vector<transaction::row> postgres_session::exec(std::string_view sql,
                                                     const std::vector<std::optional<std::string>>& params) {
  std::vector<transaction::row> rows;
  run([&](transaction& tx) { rows = tx.exec(sql, params); });
  return rows;
}

}  // namespace saga::storage
