/*
 * Per-worker pool of non-blocking libpq connections, driven by nginx's
 * event loop (PQconnectStartParams, PQsendQueryPrepared, PQconsumeInput).
 * The session query is prepared once per connection. One query in flight
 * per connection; requests beyond the pool wait in a queue until a
 * connection frees or their timeout passes. libpq owns the sockets: the
 * nginx connection around one is released with ngx_free_connection, never
 * closed.
 */
#pragma once

#include "nginx.h"

#include <cstdint>
#include <string>
#include <string_view>

#include <libpq-fe.h>

namespace session_cache {

class PgPool;
struct PgConn;

struct PgRow {
    std::string_view user_id;
    bool             has_expiry;
    std::int64_t     expires_at;
};

/*
 * Completion: a row (valid during the call only), or nullptr and no error
 * when the query found nothing, or nullptr and an error naming the cause.
 */
using PgDone = void (*)(void *data, const PgRow *row, const char *error);

struct PgJob {
    PgPool      *pool;
    std::string  token;
    PgDone       done;
    void        *data;
    ngx_event_t  timer;
    ngx_queue_t  queue;
    PgConn      *conn;
    bool         waiting;
};

class PgPool {
public:
    PgPool(ngx_cycle_t *cycle, const ngx_http_session_cache_pg_conf_t *conf,
           const ngx_str_t *query);
    ~PgPool();

    PgPool(const PgPool &) = delete;
    PgPool &operator=(const PgPool &) = delete;

    /* as RedisPool::submit: done() is called later, exactly once, unless
     * cancelled; nullptr and *error when the query cannot even start */
    PgJob *submit(std::string_view token, PgDone done, void *data,
                  const char **error);
    void cancel(PgJob *job);

    ngx_uint_t size() const { return nconns_; }
    ngx_uint_t max() const { return conf_->backend.pool; }
    ngx_uint_t pending() const { return npending_; }

    static void on_event(ngx_event_t *ev);
    static void on_connect_timeout(ngx_event_t *ev);
    static void on_job_timeout(ngx_event_t *ev);

private:
    PgConn *open(const char **error);
    bool wrap(PgConn *pc);
    void release(PgConn *pc);
    void drive(PgConn *pc);
    void connecting(PgConn *pc);
    void busy(PgConn *pc);
    void idle(PgConn *pc);
    void completed(PgConn *pc);
    bool want_write(PgConn *pc, bool on);
    void assign(PgConn *pc, PgJob *job);
    void fail(PgConn *pc, const char *error);
    void destroy(PgConn *pc);
    void finish(PgJob *job, const PgRow *row, const char *error);
    void dispatch();
    PgConn *free_conn();

    static u_char *log_context(ngx_log_t *log, u_char *buf, size_t len);

    const ngx_http_session_cache_pg_conf_t *conf_;
    std::string  query_;
    ngx_log_t    log_;
    ngx_queue_t  conns_;
    ngx_queue_t  waiting_;
    ngx_uint_t   nconns_ = 0;
    ngx_uint_t   npending_ = 0;
    char         timeout_text_[64];
};

}  // namespace session_cache
