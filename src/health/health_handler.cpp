/*
 * The session_cache_health content handler (SPEC §6). A GET starts two
 * probes at once, through this worker's pools, and answers when both are
 * over or the directive's timeout passes, whichever comes first:
 *
 *   Redis:    PING -> INFO -> DBSIZE -> SET probe key EX 5 -> GET it
 *   Postgres: SELECT 1 (and the server_version the server reported), on
 *             a connection where the session query was prepared, or
 *             refused (then the document says why)
 *
 * Each command is also bounded by its backend's own timeout= (the pool's
 * deadline). The figures that are not probed come from shared memory
 * (counters, pool gauges of every worker, the check's latency histogram)
 * and the breaker zone. The
 * document itself is built by the pure code in health_render.cpp.
 */
#include "nginx_cpp.h"

#include <time.h>

#include <new>
#include <string>

#include "breaker/breaker_zone.h"
#include "health/health_render.h"
#include "l1/l1_zone.h"
#include "pg/pg_listener.h"
#include "metrics/metrics.h"
#include "redis/cluster.h"
#include "redis/resp.h"
#include "redis/sentinel.h"
#include "worker.h"

namespace session_cache {

namespace {

/* The probe key's expiry (SET ... EX): it outlives the probe's own GET
 * and leaves nothing behind for long. */
constexpr const char *kProbeExpiry = "5";

enum class Step { Ping, Info, DbSize, Set, Get };

const char *step_name(Step s)
{
    switch (s) {
    case Step::Ping:
        return "PING";
    case Step::Info:
        return "INFO";
    case Step::DbSize:
        return "DBSIZE";
    case Step::Set:
        return "SET";
    case Step::Get:
        break;
    }
    return "GET";
}

struct HealthCtx {
    ngx_http_request_t                       *r;
    const ngx_http_session_cache_main_conf_t *smcf;
    const ngx_http_session_cache_loc_conf_t  *slcf;
    bool                                      prometheus = false;
    bool                                      redis_done = true;
    bool                                      pg_done = true;
    bool           waiting = false; /* the handler said NGX_DONE */
    bool           responded = false;
    Step           step = Step::Ping;
    RedisJob      *redis_job = nullptr;
    PgWaiter      *pg_waiter = nullptr;
    double         redis_sent = 0; /* monotonic ms */
    double         pg_sent = 0;
    std::string    probe_key;
    std::string    probe_value;
    health::Report report;
    ngx_event_t    timer;
};

/* Sub-millisecond latencies: ngx_current_msec is too coarse. A vDSO call,
 * never a wait. */
double now_ms()
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<double>(ts.tv_sec) * 1e3
           + static_cast<double>(ts.tv_nsec) / 1e6;
}

/* Redis Cluster: this worker's map and node pools. */
void cluster_report(health::ClusterReport *out)
{
    const Cluster *c = redis_cluster();

    if (c == nullptr) {
        return;
    }

    out->enabled = true;
    out->error = c->error();
    if (!c->mapped() && out->error.empty()) {
        out->error = "no slot map yet";
    }
    out->slots_covered = c->covered();

    for (const auto &n : c->nodes()) {
        health::ClusterNodeReport node;
        node.address = n->address;
        node.slots = n->slots;
        node.error = n->error;
        if (n->pool) {
            node.pool = PoolFigures{n->pool->connections(), n->pool->idle(),
                                    n->pool->waiting(), n->conf.backend.pool};
            node.breaker = breaker_state(n->breaker);
        }
        out->nodes.push_back(std::move(node));
    }
}

/* Stop whatever still runs for ctx: the answers are no longer wanted. */
void stop(HealthCtx *ctx)
{
    if (ctx->redis_job && redis_pool()) {
        RedisPool::of(ctx->redis_job)->cancel(ctx->redis_job);
    }

    if (ctx->pg_waiter && pg_pool()) {
        pg_pool()->cancel(ctx->pg_waiter);
    }

    ctx->redis_job = nullptr;
    ctx->pg_waiter = nullptr;

    if (ctx->timer.timer_set) {
        ngx_del_timer(&ctx->timer);
    }
}

void cleanup(void *data)
{
    auto *ctx = static_cast<HealthCtx *>(data);

    stop(ctx);
    delete ctx;
}

ngx_int_t add_header(ngx_http_request_t *r, const char *key,
                     const char *lowcase, const char *value)
{
    auto *h =
        static_cast<ngx_table_elt_t *>(ngx_list_push(&r->headers_out.headers));
    if (h == nullptr) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key.data = (u_char *) key;
    h->key.len = ngx_strlen(key);
    h->value.data = (u_char *) value;
    h->value.len = ngx_strlen(value);
    h->lowcase_key = (u_char *) lowcase;

    return NGX_OK;
}

/* The L1 zone's figures, and why it is not consulted. */
/* sentinel:// (SPEC §10): this worker's view, the instance's switches */
void sentinel_report(health::Redis *r)
{
    sentinel::View v = sentinel::figures();

    if (!v.enabled) {
        return;
    }

    health::SentinelReport s;
    s.master_name = v.master_name;
    if (!v.address.empty()) {
        s.address = v.address;
    }
    s.switches = v.switches;
    if (v.last_switch_ms >= 0) {
        s.last_switch_ms = v.last_switch_ms;
    }
    s.error = v.error;
    r->sentinel = s;
}

void l1_report(health::L1Report *l)
{
    l1::Figures f = l1::figures();

    l->enabled = f.configured;
    l->tracking = f.tracking;
    l->armed = f.configured && l1::usable();
    l->entries = f.entries;
    l->capacity = f.capacity;
    l->used_bytes = f.used_bytes;
    l->hits = f.hits;
    l->negatives = f.negatives;
    l->invalidations = f.invalidations;
    l->evictions = f.evictions;
    for (std::size_t i = 0; i < l1::kFlushReasons; i++) {
        l->flushes[i] = f.flushes[i];
    }

    if (f.tracking && f.listener != 0) {
        l->listener = f.listener;
    }

    if (!f.configured) {
        l->reason = "session_cache_l1 is off";
    } else if (!l->armed) {
        l->reason = f.reason[0] ? std::string(f.reason)
                                : std::string("the listener is not armed");
    }
}

/* The revocation listener's figures (SPEC §9). */
void revocation_report(health::RevocationReport *v)
{
    RevocationFigures f = revocation_figures();

    v->enabled = f.configured;
    v->state = f.state;
    v->listening = f.listening;
    v->notifications = f.notifications;
    v->revoked = f.revoked;
    v->flushes = f.flushes;
    v->ignored = f.ignored;
    v->reconnects = f.reconnects;

    if (!f.configured) {
        v->reason = "session_cache_revocation is off";
        return;
    }

    v->channel = f.channel;
    if (!f.listening) {
        v->reason = f.reason;
    }
    if (f.listener != 0) {
        v->listener = f.listener;
    }
}

/* Everything known: fill in the shared figures, render, send. */
ngx_int_t send(HealthCtx *ctx)
{
    ngx_http_request_t *r = ctx->r;
    health::Report     &rep = ctx->report;
    const auto         *smcf = ctx->smcf;

    ctx->responded = true;
    stop(ctx);

    ngx_time_t *tp = ngx_timeofday();
    rep.now_ms = static_cast<std::int64_t>(tp->sec) * 1000 + tp->msec;
    rep.ttl = smcf->ttl;
    rep.threshold_ms = static_cast<double>(ctx->slcf->health_threshold);
    rep.counters = counters_total();

    for (int l = 0; l < kLayers; l++) {
        rep.check[l] = latency_total(static_cast<Layer>(l));
    }

    rep.redis.configured = smcf->redis.backend.configured;
    rep.postgres.configured = smcf->pg.backend.configured;

    if (rep.redis.configured) {
        rep.redis.breaker = breaker_state(Backend::Redis);
        rep.redis.pool = pool_total(Backend::Redis);
        cluster_report(&rep.redis.cluster);
    }

    if (smcf->redis.sentinel != nullptr) {
        sentinel_report(&rep.redis);
    }

    if (rep.postgres.configured) {
        rep.postgres.breaker = breaker_state(Backend::Postgres);
        rep.postgres.pool = pool_total(Backend::Postgres);
    }

    l1_report(&rep.l1);
    revocation_report(&rep.revocation);

    health::evaluate(&rep);

    std::string body = ctx->prometheus ? health::render_prometheus(rep)
                                       : health::render_json(rep);

    r->headers_out.status = health::http_status(rep.status);
    r->headers_out.content_length_n = body.size();

    if (ctx->prometheus) {
        ngx_str_set(&r->headers_out.content_type, "text/plain; version=0.0.4");
    } else {
        ngx_str_set(&r->headers_out.content_type, "application/json");
    }
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = nullptr;

    if (add_header(r, "Cache-Control", "cache-control", "no-store") != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_int_t rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    ngx_buf_t *b = ngx_create_temp_buf(r->pool, body.size());
    if (b == nullptr) {
        return NGX_ERROR;
    }

    b->last = ngx_cpymem(b->last, body.data(), body.size());
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    ngx_chain_t out = {b, nullptr};

    return ngx_http_output_filter(r, &out);
}

/* After a probe step: answer if nothing is left to wait for. */
void maybe_respond(HealthCtx *ctx)
{
    if (!ctx->redis_done || !ctx->pg_done || ctx->responded || !ctx->waiting) {
        return;
    }

    ngx_http_request_t *r = ctx->r;
    ngx_connection_t   *c = r->connection;

    ngx_int_t rc;

    try {
        rc = send(ctx);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, c->log, 0, "session_cache: health: %s",
                      e.what());
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}

void on_redis(void *data, const RedisReply *reply, const char *error);

void redis_send(HealthCtx *ctx)
{
    std::string cmd;

    switch (ctx->step) {
    case Step::Ping:
        resp_append(&cmd, {"PING"});
        break;
    case Step::Info:
        resp_append(&cmd, {"INFO"});
        break;
    case Step::DbSize:
        resp_append(&cmd, {"DBSIZE"});
        break;
    case Step::Set:
        resp_append(&cmd, {"SET", ctx->probe_key, ctx->probe_value, "EX",
                           kProbeExpiry});
        break;
    case Step::Get:
        resp_append(&cmd, {"GET", ctx->probe_key});
        break;
    }

    const char *error = "no connection";
    RedisPool  *pool = redis_pool_for(ctx->probe_key);
    ctx->redis_sent = now_ms();
    ctx->redis_job = nullptr;

    if (pool == nullptr) {
        error = "no reachable redis cluster node serves the probe key's slot";
    } else {
        ctx->redis_job =
            pool->submit_probe(std::move(cmd), on_redis, ctx, &error);
    }

    if (ctx->redis_job == nullptr) {
        ctx->report.redis.error =
            ctx->step == Step::Ping
                ? std::string(error)
                : std::string(step_name(ctx->step)) + ": " + error;
        ctx->redis_done = true;
    }
}

/* One step answered: record it, and send the next one. */
void redis_step(HealthCtx *ctx, const RedisReply *reply, const char *error)
{
    health::Redis &R = ctx->report.redis;
    double         ms = now_ms() - ctx->redis_sent;
    std::string    step = step_name(ctx->step);

    if (error != nullptr || reply->type == REDIS_REPLY_ERROR) {
        std::string why =
            error ? std::string(error)
                  : std::string(reply->str, ngx_min(reply->len, (size_t) 200));
        R.error = ctx->step == Step::Ping ? why : step + ": " + why;
        ctx->redis_done = true;
        return;
    }

    bool ok = true;

    switch (ctx->step) {
    case Step::Ping:
        ok = reply->type == REDIS_REPLY_STATUS
             && std::string_view(reply->str, reply->len) == "PONG";
        if (ok) {
            R.connected = true;
            R.ping_ms = ms;
        }
        ctx->step = Step::Info;
        break;

    case Step::Info:
        ok = reply->type == REDIS_REPLY_STRING;
        if (ok) {
            health::RedisInfo info = health::parse_redis_info(
                std::string_view(reply->str, reply->len));
            R.version = info.version;
            R.uptime = info.uptime;
            R.used_memory = info.used_memory_human;
            R.used_memory_bytes = info.used_memory;
        }
        ctx->step = Step::DbSize;
        break;

    case Step::DbSize:
        ok = reply->type == REDIS_REPLY_INTEGER;
        if (ok) {
            R.total_keys = reply->integer;
        }
        ctx->step = Step::Set;
        break;

    case Step::Set:
        ok = reply->type == REDIS_REPLY_STATUS;
        if (ok) {
            R.set_ms = ms;
        }
        ctx->step = Step::Get;
        break;

    case Step::Get:
        ok = reply->type == REDIS_REPLY_STRING
             && std::string_view(reply->str, reply->len) == ctx->probe_value;
        if (ok) {
            R.get_ms = ms;
        }
        ctx->redis_done = true;
        break;
    }

    if (!ok) {
        R.error = step + ": unexpected reply";
        ctx->redis_done = true;
        return;
    }

    if (!ctx->redis_done) {
        redis_send(ctx);
    }
}

void on_redis(void *data, const RedisReply *reply, const char *error)
{
    auto *ctx = static_cast<HealthCtx *>(data);

    ctx->redis_job = nullptr;

    try {
        redis_step(ctx, reply, error);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, ctx->r->connection->log, 0,
                      "session_cache: health: %s", e.what());
        ctx->report.redis.error = "internal error";
        ctx->redis_done = true;
    }

    maybe_respond(ctx);
}

/*
 * postgres.hosts (SPEC §11): where this worker's pools are, primary or
 * standby, and the replication lag the probe measured on its server.
 */
static void pg_hosts(health::Postgres *P, const PgRow *row)
{
    PgPool *pg = pg_pool();

    if (pg == nullptr) {
        return;
    }

    bool lag_shown = false;

    for (const PgHostFigure &f : pg->hosts()) {
        health::PgHostReport h;
        h.pool = f.pool;
        h.host = f.host;
        h.port = f.port;
        h.role = f.role;
        h.connections = f.connections;

        if (row != nullptr && row->has_lag && !lag_shown && h.pool == "main"
            && h.host == row->host && h.port == row->port)
        {
            h.lag_ms = row->lag_ms;
            lag_shown = true;
        }

        P->hosts.push_back(std::move(h));
    }
}

void on_postgres(void *data, const PgRow *row, const char *error)
{
    auto             *ctx = static_cast<HealthCtx *>(data);
    health::Postgres &P = ctx->report.postgres;

    ctx->pg_waiter = nullptr;
    ctx->pg_done = true;

    try {
        if (error != nullptr) {
            P.error = error;
        } else if (row == nullptr) {
            P.error = "SELECT 1 returned no row";
        } else {
            P.connected = true;
            P.query_ms = now_ms() - ctx->pg_sent;
            std::string v = health::short_version(row->server_version);
            if (!v.empty()) {
                P.version = v;
            }
            /* the session query refused on the probe's connection */
            P.query_error = std::string(row->query_error);
        }

        pg_hosts(&P, error == nullptr ? row : nullptr);
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, ctx->r->connection->log, 0,
                      "session_cache: health: %s", e.what());
        P.error = "internal error";
    }

    maybe_respond(ctx);
}

/* The directive's timeout: answer with what is known. */
void on_timeout(ngx_event_t *ev)
{
    auto *ctx = static_cast<HealthCtx *>(ev->data);

    try {
        std::string why = "probe timed out after "
                          + std::to_string(ctx->slcf->health_timeout) + "ms";

        if (!ctx->redis_done) {
            health::Redis &R = ctx->report.redis;
            R.error = R.connected
                          ? std::string(step_name(ctx->step)) + ": " + why
                          : why;
            ctx->redis_done = true;
        }

        if (!ctx->pg_done) {
            ctx->report.postgres.error = why;
            ctx->pg_done = true;
        }

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, ev->log, 0, "session_cache: health: %s",
                      e.what());
        ctx->redis_done = true;
        ctx->pg_done = true;
    }

    maybe_respond(ctx);
}

ngx_int_t start(ngx_http_request_t *r)
{
    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    ngx_int_t rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    auto *ctx = new HealthCtx();
    ngx_memzero(&ctx->timer, sizeof(ngx_event_t));
    ctx->r = r;
    ctx->smcf = static_cast<ngx_http_session_cache_main_conf_t *>(
        ngx_http_get_module_main_conf(r, ngx_http_session_cache_module));
    ctx->slcf = static_cast<ngx_http_session_cache_loc_conf_t *>(
        ngx_http_get_module_loc_conf(r, ngx_http_session_cache_module));

    cln->handler = cleanup;
    cln->data = ctx;

    ngx_str_t format;
    ctx->prometheus = ngx_http_arg(r, (u_char *) "format", 6, &format) == NGX_OK
                      && format.len == 10
                      && ngx_strncmp(format.data, "prometheus", 10) == 0;

    if (RedisPool *redis = redis_pool()) {
        (void) redis;
        static ngx_uint_t seq;
        std::string n = std::to_string(ngx_pid) + ":" + std::to_string(++seq);
        ctx->probe_key =
            std::string(view(ctx->smcf->key_prefix))
            /* a cluster: one slot, so that every probe asks one node */
            + (redis_cluster() ? "{health-probe}:" : "health-probe:") + n;
        ctx->probe_value = "ngx_session_cache health probe " + n;
        ctx->redis_done = false;
        redis_send(ctx);

    } else if (ctx->smcf->redis.backend.configured) {
        ctx->report.redis.error = "no pool in this worker";
    }

    if (PgPool *pg = pg_pool()) {
        const char *error = "no connection";
        ctx->pg_sent = now_ms();
        ctx->pg_waiter = pg->submit_probe(on_postgres, ctx, &error);

        if (ctx->pg_waiter == nullptr) {
            ctx->report.postgres.error = error;
        } else {
            ctx->pg_done = false;
        }

    } else if (ctx->smcf->pg.backend.configured) {
        ctx->report.postgres.error = "no pool in this worker";
    }

    if (ctx->redis_done && ctx->pg_done) {
        /* nothing to wait for: no backend, or none could be reached */
        return send(ctx);
    }

    ctx->timer.handler = on_timeout;
    ctx->timer.data = ctx;
    ctx->timer.log = r->connection->log;
    ngx_add_timer(&ctx->timer, ctx->slcf->health_timeout);

    ctx->waiting = true;
    r->main->count++;

    return NGX_DONE;
}

} // namespace

} // namespace session_cache

extern "C" ngx_int_t
ngx_http_session_cache_health_handler(ngx_http_request_t *r)
{
    try {
        return session_cache::start(r);

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "session_cache: health: %s", e.what());
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}
