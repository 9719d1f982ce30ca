/*
 * Per-worker pool of non-blocking libpq connections, driven by nginx's
 * event loop (PQconnectStartParams, PQsendQueryPrepared, PQconsumeInput).
 * The session query is prepared once per connection (again before each
 * query where Postgres refused it: see prepared()), and described, for
 * the names of its attribute columns (see described()). One query in flight
 * per connection (depth 1); requests beyond the pool wait in a queue until a
 * connection frees or their timeout passes. libpq owns the sockets: the
 * nginx connection around one is released with ngx_free_connection, never
 * closed.
 */
#pragma once

#include "pool/pool.h"

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <libpq-fe.h>

namespace session_cache {

struct PgConn;

/* An attribute: a column after the second, named by its column name. */
struct PgAttr {
    std::string_view name;
    std::string_view value;
};

struct PgRow {
    std::string_view user_id; /* a probe: SELECT 1's answer */
    bool             has_expiry;
    std::int64_t     expires_at;
    std::size_t      nattrs = 0; /* SQL NULLs left out */
    PgAttr           attrs[NGX_HTTP_SESSION_CACHE_MAX_ATTRS];
    std::string_view server_version; /* a probe: the server's version */
    std::string_view query_error;    /* a probe: why the session query
                                      * cannot be prepared, or empty */
    ngx_msec_t       asked_at = 0;   /* when the query that read it was
                                      * sent (ngx_current_msec): see
                                      * revoked_since() */
    /* a probe: the server it ran on (SPEC §11) */
    std::string_view host;
    std::string_view port;
    const char      *role = "unknown"; /* primary, standby, unknown */
    bool             has_lag = false;  /* on a standby that replayed */
    double           lag_ms = 0;       /* now() - last replayed commit */
};

/* Where a pool's open connections are (the health document, SPEC §11). */
struct PgHostFigure {
    const char *pool; /* "main" or "primary" */
    std::string host;
    std::string port;
    const char *role; /* primary, standby, unknown */
    std::size_t connections;
};

/* The error a session query gets when Postgres refuses to prepare it: a
 * configuration error, not an outage (compare the address). */
extern const char kPgQueryUnprepared[];

/* The error a session query gets when its attribute columns are refused
 * (a name that is not a plain identifier, more than 16): the check
 * answers as if Postgres had failed. */
extern const char kPgAttrsRefused[];

/* One query on the pool, as a RedisJob is one command: the session query
 * for token, or the health probe (PoolJob::probe). done(data, row,
 * nullptr) with row == nullptr: the query found nothing. */
struct PgJob : PoolJob<PgConn, PgRow> {
    std::string token;          /* unused by a probe */
    bool        health = false; /* the health probe's query (probe alone:
                                 * a session query the breaker ignores) */
    ngx_msec_t  sent_at = 0;    /* when it went to Postgres */
};

using PgDone = PgJob::Done;

/* The answer "no row" from a hot standby that no primary could confirm
 * (SPEC §11): the caller refuses the session but remembers nothing. */
extern const char kPgUnconfirmed[];

struct PgFlight;

/* A caller waiting for the answer for a token. Callers asking for the same
 * token while its query runs share that query ("single flight"). */
struct PgWaiter {
    PgDone      done;
    void       *data;
    PgFlight   *flight;
    ngx_queue_t link;
};

class PgPool : public Pool<PgPool, PgConn, PgJob> {
public:
    PgPool(ngx_cycle_t *cycle, const ngx_http_session_cache_pg_conf_t *conf,
           const ngx_str_t *query);
    ~PgPool();

    /* as RedisPool::submit: the session query's answer for token, from a
     * query of its own or one already running for the same token */
    PgWaiter *submit(std::string_view token, PgDone done, void *data,
                     const char **error);

    /* the health probe: SELECT 1 on a pooled connection, around the
     * breaker; done() gets a row with the answer and the server's
     * version, or an error */
    PgWaiter *submit_probe(PgDone done, void *data, const char **error);

    /* The caller went away: done() will not be called. */
    void cancel(PgWaiter *job);

    /* Where this worker's connections are, this pool's and those of its
     * pool on the primary (SPEC §11). */
    std::vector<PgHostFigure> hosts() const;

    /* the options a pool connects with (pg_pool.cpp) */
    struct Options;

private:
    PgPool(ngx_cycle_t *cycle, std::unique_ptr<Options> opts, std::string query,
           bool primary);

    void        hand_out(PgFlight *f, const PgRow *row, const char *error);
    void        reask(PgFlight *f);
    static void reasked(void *data, const PgRow *row, const char *error);
    bool        begin(PgConn *pc, std::size_t from, const char **error);
    void        restart(PgConn *pc);
    void        locate(PgConn *pc);
    void        more(PgConn *pc);
    void        host_figures(std::vector<PgHostFigure> *out) const;
    friend class Pool<PgPool, PgConn, PgJob>;
    friend struct PgFlight;

    static void flight_done(void *data, const PgRow *row, const char *error);
    PgWaiter *probe(PgDone done, void *data, const char **error, bool recovery);
    bool      probe_recovery();
    static void recovery_answered(void *data, const PgRow *row,
                                  const char *error);
    PgWaiter   *fly(std::unique_ptr<PgJob> q, bool shared, PgDone done,
                    void *data, const char **error);

    PgConn    *open(const char **error);
    void       assign(PgConn *pc, PgJob *job);
    bool       on_wire(const PgConn *pc) const;
    ngx_uint_t depth() const { return 1; }
    bool       batching(const PgConn *) const { return false; }
    void       destroy(PgConn *pc);

    void drive(PgConn *pc);
    void connecting(PgConn *pc);
    void busy(PgConn *pc);
    void idle(PgConn *pc);
    void prepare(PgConn *pc);
    void send(PgConn *pc, PgJob *job);
    void prepared(PgConn *pc, PGresult *res);
    void described(PgConn *pc, PGresult *res);
    void ready(PgConn *pc, bool ok);
    void completed(PgConn *pc);
    void probed(PgConn *pc, PgJob *job, PGresult *res);
    void failed(PgConn *pc, const char *message);
    void crashed(PgConn *pc);

    void conn_failed(PgConn *pc, const char *error);

    static void on_event(ngx_event_t *ev);
    static void on_connect_timeout(ngx_event_t *ev);

    std::unique_ptr<Options>                         opts_;
    const ngx_http_session_cache_pg_conf_t          *conf_;
    std::string                                      query_;
    std::unordered_map<std::string_view, PgFlight *> flights_;
    bool                                             primary_role_;
    PgPool                                          *primary_ = nullptr;
    std::vector<PgConn *>                            mine_; /* open */
};

} // namespace session_cache
