/*
 * Per-worker pool of non-blocking libpq connections, driven by nginx's
 * event loop (PQconnectStartParams, PQsendQueryPrepared, PQconsumeInput).
 * The session query is prepared once per connection. One query in flight
 * per connection (depth 1); requests beyond the pool wait in a queue until a
 * connection frees or their timeout passes. libpq owns the sockets: the
 * nginx connection around one is released with ngx_free_connection, never
 * closed.
 */
#pragma once

#include "pool.h"

#include <cstdint>
#include <string>
#include <string_view>

#include <libpq-fe.h>

namespace session_cache {

struct PgConn;

struct PgRow {
    std::string_view user_id;         /* a probe: SELECT 1's answer */
    bool             has_expiry;
    std::int64_t     expires_at;
    std::string_view server_version;  /* a probe: the server's version */
};

/* done(data, row, nullptr) with row == nullptr: the query found nothing */
struct PgJob : PoolJob<PgConn, PgRow> {
    std::string  token;     /* unused by a probe (PoolJob::probe) */
};

using PgDone = PgJob::Done;

class PgPool : public Pool<PgPool, PgConn, PgJob> {
public:
    PgPool(ngx_cycle_t *cycle, const ngx_http_session_cache_pg_conf_t *conf,
           const ngx_str_t *query);
    ~PgPool();

    /* as RedisPool::submit: run the session query for token */
    PgJob *submit(std::string_view token, PgDone done, void *data,
                  const char **error);

    /* the health probe: SELECT 1 on a pooled connection, around the
     * breaker; done() gets a row with the answer and the server's
     * version, or an error */
    PgJob *submit_probe(PgDone done, void *data, const char **error);

private:
    friend class Pool<PgPool, PgConn, PgJob>;

    PgConn *open(const char **error);
    void assign(PgConn *pc, PgJob *job);
    bool on_wire(const PgConn *pc) const;
    ngx_uint_t depth() const { return 1; }
    bool batching(const PgConn *) const { return false; }
    void destroy(PgConn *pc);

    bool wrap(PgConn *pc);
    void release(PgConn *pc);
    void drive(PgConn *pc);
    void connecting(PgConn *pc);
    void busy(PgConn *pc);
    void idle(PgConn *pc);
    void completed(PgConn *pc);
    void probed(PgConn *pc, PgJob *job, PGresult *res);
    bool want_write(PgConn *pc, bool on);

    static void on_event(ngx_event_t *ev);
    static void on_connect_timeout(ngx_event_t *ev);

    const ngx_http_session_cache_pg_conf_t *conf_;
    std::string  query_;
};

}  // namespace session_cache
