/*
 * The access-phase check (SPEC §4), one request at a time:
 *
 *   token -> plausible? -- no --> 401 REJECTED, no I/O
 *         -> Redis GET  -- session --> allow HIT
 *                       -- negative --> 401 NEGATIVE
 *                       -- miss, expired, unreadable --> Postgres (MISS)
 *                       -- error, timeout, refused --> Postgres (BYPASS)
 *         -> Postgres   -- row --> allow, fill the cache (not waited for)
 *                       -- none --> 401, negative entry (not waited for)
 *                       -- error --> 503 + Retry-After, or FAIL_OPEN
 *                       -- query refused by Postgres --> 500, always
 *
 * With session_cache_l1, L1 (shared memory) is asked first while it is
 * usable: an entry answers HIT or NEGATIVE with no I/O; answers read from
 * Redis or Postgres fill it (l1/l1_zone.h), subject to the GET race's mark
 * taken before the GET.
 *
 * The handler returns NGX_AGAIN while a backend works; the completion
 * callback records the outcome and restarts the phase engine, which calls
 * the handler again to collect it.
 *
 * Each check's duration, from the handler's first call to the outcome, is
 * counted in the latency histogram (metrics.h) under the layer that
 * answered: redis, postgres, or none (refused before any lookup, or no
 * store answered).
 *
 * Every step is traced at debug level (NGX_LOG_DEBUG_HTTP) on the
 * request's log, so that debug_connection follows one request from its
 * token (its length only, never its bytes) to its outcome.
 */
#include "nginx_cpp.h"

#include <new>
#include <string>

#include "l1/l1_zone.h"
#include "metrics/metrics.h"
#include "pg/pg_listener.h"
#include "redis/resp.h"
#include "check/fill_tracker.h"
#include "check/session_value.h"
#include "check/token.h"
#include "worker.h"

namespace session_cache {

/* Retry-After on 503: a store outage is not over in less; with the
 * Postgres breaker open, the time until its next trial. */
static const time_t kRetryAfter = 5;

struct Ctx {
    ngx_http_session_cache_result_t           result; /* first: see below */
    ngx_http_request_t                       *r;
    const ngx_http_session_cache_main_conf_t *smcf;
    const ngx_http_session_cache_loc_conf_t  *slcf;
    ngx_str_t                                 token;
    ngx_str_t                                 key; /* prefix + token */
    RedisJob                                 *redis_job;
    PgWaiter                                 *pg_waiter;
    std::uint64_t                             get_seq;    /* 0: no GET */
    std::uint64_t                             started_ns; /* monotonic */
    Layer                                     layer;      /* who answered */
    l1::Mark                                  l1_mark;    /* before the GET */
    ngx_int_t                                 rc;
    bool                                      done;
    bool                                      redis_failed;
};

// clang-format off
#define STATUS(s) ngx_str_t{ sizeof(s) - 1, (u_char *) (s) }
// clang-format on

static const ngx_str_t kHit = STATUS("HIT");
static const ngx_str_t kMiss = STATUS("MISS");
static const ngx_str_t kNegative = STATUS("NEGATIVE");
static const ngx_str_t kBypass = STATUS("BYPASS");
static const ngx_str_t kRejected = STATUS("REJECTED");
static const ngx_str_t kFailOpen = STATUS("FAIL_OPEN");
static const ngx_str_t kError = STATUS("ERROR");

/* $session_cache_layer: which store answered, by Layer */
static const ngx_str_t kLayerNames[] = {STATUS("l1"), STATUS("redis"),
                                        STATUS("postgres")};

static_assert(static_cast<int>(Layer::L1) == 0
                  && static_cast<int>(Layer::Redis) == 1
                  && static_cast<int>(Layer::Postgres) == 2,
              "kLayerNames follows Layer");

/* A store answered: the latency histogram's layer and
 * $session_cache_layer say which. */
static void answered_by(Ctx *ctx, Layer layer)
{
    ctx->layer = layer;
    ctx->result.layer = kLayerNames[static_cast<int>(layer)];
}

/* The counter for an outcome: statuses are always the constants above, so
 * their addresses tell them apart without comparing text. */
static Counter counter_of(const ngx_str_t &status)
{
    if (status.data == kHit.data) {
        return Counter::Hits;
    }
    if (status.data == kMiss.data) {
        return Counter::Misses;
    }
    if (status.data == kNegative.data) {
        return Counter::Negatives;
    }
    if (status.data == kBypass.data) {
        return Counter::Bypasses;
    }
    if (status.data == kRejected.data) {
        return Counter::Rejected;
    }
    return Counter::Errors;
}

/* The request's pool is destroyed (nginx calls this). */
static void cleanup(void *data)
{
    auto *ctx = static_cast<Ctx *>(data);

    try {
        /* the request went away while a backend was still working for it
         * (the connection and its log outlive the request's pool) */
        if (ctx->redis_job && redis_pool()) {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ctx->r->connection->log, 0,
                           "session_cache: request gone, "
                           "its redis GET dropped");
            /* the pool it runs on: a cluster's node, maybe redirected */
            RedisPool::of(ctx->redis_job)->cancel(ctx->redis_job);
        }

        if (ctx->pg_waiter && pg_pool()) {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ctx->r->connection->log, 0,
                           "session_cache: request gone, "
                           "its postgres query dropped");
            pg_pool()->cancel(ctx->pg_waiter);
        }

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "session_cache: request cleanup: %s", e.what());
    } catch (...) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "session_cache: request cleanup: unknown exception");
    }

    ctx->redis_job = nullptr;
    ctx->pg_waiter = nullptr;
    ctx->r = nullptr;
}

/*
 * An internal redirect (error_page 401 = @login) clears the module ctx;
 * the pool cleanup still holds it, so the outcome and the variables
 * survive, as in the realip module.
 */
static Ctx *get_ctx(ngx_http_request_t *r)
{
    auto *ctx = static_cast<Ctx *>(
        ngx_http_get_module_ctx(r, ngx_http_session_cache_module));

    if (ctx != nullptr || !r->internal) {
        return ctx;
    }

    for (ngx_pool_cleanup_t *cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == cleanup) {
            ctx = static_cast<Ctx *>(cln->data);
            ngx_http_set_ctx(r, ctx, ngx_http_session_cache_module);
            return ctx;
        }
    }

    return nullptr;
}

static_assert(kMaxAttrs == NGX_HTTP_SESSION_CACHE_MAX_ATTRS,
              "one bound on attributes");

/* A valid session: its user id and attributes copied into the request's
 * pool, in one allocation, for the variables. */
static ngx_int_t allow(Ctx *ctx, const ngx_str_t &status,
                       std::string_view user_id, bool has_expiry,
                       std::int64_t expires_at, const AttrView *attrs,
                       std::size_t nattrs)
{
    ngx_http_request_t              *r = ctx->r;
    ngx_http_session_cache_result_t &res = ctx->result;

    res.status = status;
    count(counter_of(status));

    std::size_t size = user_id.size();
    for (std::size_t i = 0; i < nattrs; i++) {
        size += attrs[i].name.size() + attrs[i].value.size();
    }

    u_char *p = static_cast<u_char *>(ngx_pnalloc(r->pool, size));
    if (p == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    auto put = [&p](ngx_str_t *to, std::string_view from) {
        to->data = p;
        to->len = from.size();
        p = ngx_cpymem(p, from.data(), from.size());
    };

    put(&res.user_id, user_id);

    for (std::size_t i = 0; i < nattrs; i++) {
        put(&res.attr_name[i], attrs[i].name);
        put(&res.attr_value[i], attrs[i].value);
    }
    res.nattrs = nattrs;

    if (has_expiry) {
        p = static_cast<u_char *>(ngx_pnalloc(r->pool, NGX_INT64_LEN));
        if (p == nullptr) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        res.expires_at.data = p;
        res.expires_at.len = ngx_sprintf(p, "%L", expires_at) - p;
    }

    return NGX_OK;
}

/* The same for a session held in full (a cache fill on its way). */
static ngx_int_t allow(Ctx *ctx, const ngx_str_t &status, const Session &s)
{
    AttrView    attrs[kMaxAttrs];
    std::size_t n = s.attrs.size() < kMaxAttrs ? s.attrs.size() : kMaxAttrs;

    for (std::size_t i = 0; i < n; i++) {
        attrs[i].name = s.attrs[i].name;
        attrs[i].value = s.attrs[i].value;
    }

    return allow(ctx, status, s.user_id, s.has_expiry, s.expires_at, attrs, n);
}

static ngx_int_t deny(Ctx *ctx, const ngx_str_t &status)
{
    ctx->result.status = status;
    count(counter_of(status));

    ngx_log_error(NGX_LOG_INFO, ctx->r->connection->log, 0,
                  "session_cache: session refused (%V)", &status);

    return NGX_HTTP_UNAUTHORIZED;
}

/* No store could answer (SPEC §4.5). */
static ngx_int_t unavailable(Ctx *ctx)
{
    ngx_http_request_t *r = ctx->r;

    count(Counter::Errors);

    if (ctx->slcf->fail == NGX_HTTP_SESSION_CACHE_FAIL_OPEN) {
        ctx->result.status = kFailOpen;
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "session_cache: no store answered, "
                      "request let through (auth_session_fail open)");
        return NGX_OK;
    }

    ctx->result.status = kError;

    ngx_table_elt_t *h =
        static_cast<ngx_table_elt_t *>(ngx_list_push(&r->headers_out.headers));
    if (h == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    time_t     after = kRetryAfter;
    ngx_msec_t wait = breaker_wait(Backend::Postgres);
    if (wait > 0) {
        after = (wait + 999) / 1000;
    }

    u_char *p = static_cast<u_char *>(ngx_pnalloc(r->pool, NGX_TIME_T_LEN));
    if (p == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Retry-After");
    h->value.data = p;
    h->value.len = ngx_sprintf(p, "%T", after) - p;
    h->lowcase_key = (u_char *) "retry-after";

    return NGX_HTTP_SERVICE_UNAVAILABLE;
}

/* Postgres answers on their way into the cache: see fill_tracker.h. */
static FillTracker fills;

static bool fill_stored(const RedisReply *reply, const char *error)
{
    return error == nullptr && reply != nullptr
           && reply->type != REDIS_REPLY_ERROR;
}

/* The SET's reply, or its failure: nginx calls this through the pool. */
static void on_cache_written(void *data, const RedisReply *reply,
                             const char *error)
{
    try {
        fills.write_acked(static_cast<FillTracker::Fill *>(data),
                          fill_stored(reply, error), ngx_current_msec);

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "session_cache: cache fill: %s", e.what());
    } catch (...) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "session_cache: cache fill: unknown exception");
    }
}

#if (NGX_DEBUG)

/*
 * A cache fill sent for a traced request (debug_connection, or a debug
 * error_log). Its reply comes after the request may be gone, so it is
 * traced on a copy of the cycle's log under the connection's number, at
 * the level debug_connection gives that connection.
 */
struct TracedFill {
    FillTracker::Fill *fill;
    ngx_atomic_uint_t  connection;
};

static void on_traced_cache_written(void *data, const RedisReply *reply,
                                    const char *error)
{
    /* nothing here throws: on_cache_written() guards the rest */
    auto     *t = static_cast<TracedFill *>(data);
    ngx_log_t log = *ngx_cycle->log;

    log.log_level = NGX_LOG_DEBUG_CONNECTION | NGX_LOG_DEBUG_ALL;
    log.connection = t->connection;
    log.handler = nullptr;
    log.data = nullptr;
    log.action = nullptr;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &log, 0,
                   "session_cache: cache fill acknowledged: %s",
                   fill_stored(reply, error) ? "stored" : "failed");

    FillTracker::Fill *fill = t->fill;
    delete t;

    on_cache_written(fill, reply, error);
}

#endif

/* Send the SET, not waited for; a fill that cannot go is acknowledged as
 * failed at once. */
static void send_fill(Ctx *ctx, FillTracker::Fill *fill, std::string_view value,
                      std::int64_t seconds)
{
    RedisDone   done = on_cache_written;
    void       *data = fill;
    const char *error = nullptr;
    RedisJob   *job = nullptr;

    try {
#if (NGX_DEBUG)
        ngx_connection_t *c = ctx->r->connection;

        if (c->log->log_level & NGX_LOG_DEBUG_HTTP) {
            data = new TracedFill{fill, c->number};
            done = on_traced_cache_written;
        }
#endif

        if (RedisPool *pool = redis_pool_for(view(ctx->key))) {
            job = pool->submit(
                {"SET", view(ctx->key), value, "EX", std::to_string(seconds)},
                done, data, &error);
        } else {
            error = "no reachable redis node serves the key's slot";
        }

    } catch (const std::exception &e) {
        /* not sent, as if it had failed */
        error = e.what();
    }

    if (job != nullptr) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ctx->r->connection->log, 0,
                       "session_cache: cache fill: SET sent, "
                       "expires in %Ls",
                       seconds);
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ctx->r->connection->log, 0,
                   "session_cache: cache fill not sent: %s",
                   error ? error : "unknown");

#if (NGX_DEBUG)
    if (data != fill) {
        delete static_cast<TracedFill *>(data);
    }
#endif

    fills.write_acked(fill, false, ngx_current_msec);
}

/* Write to the cache without waiting for the answer. s: the session,
 * nullptr for a negative entry. */
static void cache_write(Ctx *ctx, std::string_view value, std::int64_t seconds,
                        const Session *s)
{
    if (redis_pool() == nullptr || ctx->redis_failed || seconds <= 0) {
        return;
    }

    fills.sweep(ngx_current_msec, ctx->smcf->redis.backend.timeout);

    FillTracker::Fill *fill;

    try {
        fill = fills.write_started(view(ctx->token), s);

    } catch (const std::bad_alloc &) {
        /* the answer stands; only its way into the cache is lost */
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ctx->r->connection->log, 0,
                       "session_cache: cache fill not sent: out of memory");
        return;
    }

    if (fill == nullptr) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ctx->r->connection->log, 0,
                       "session_cache: cache fill: the same answer is "
                       "already on its way");
        return;
    }

    send_fill(ctx, fill, value, seconds);
}

/*
 * L1 first (SPEC §8): NGX_DECLINED when it has no answer, after taking
 * the mark that decides whether the answer found further on may be stored.
 */
static ngx_int_t from_l1(Ctx *ctx)
{
    if (!l1::usable()) {
        return NGX_DECLINED;
    }

    ngx_str_t value;

    switch (l1::lookup(view(ctx->token), ctx->r->pool, &value)) {
    case l1::Found::Negative:
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ctx->r->connection->log, 0,
                       "session_cache: l1 answer: negative entry");
        answered_by(ctx, Layer::L1);
        l1::count_answer(true);
        return deny(ctx, kNegative);

    case l1::Found::Session: {
        SessionView sv;
        char        user_id[kMaxUserIdLength];
        char        attrs[kAttrBufferSize];

        if (decode_session(view(value), ngx_time(), &sv, user_id, attrs)
            == Decoded::Valid)
        {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ctx->r->connection->log, 0,
                           "session_cache: l1 answer: session");
            answered_by(ctx, Layer::L1);
            l1::count_answer(false);
            return allow(ctx, kHit, sv.user_id, sv.has_expiry, sv.expires_at,
                         sv.attrs, sv.nattrs);
        }
        break;
    }

    case l1::Found::None:
        break;
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ctx->r->connection->log, 0,
                   "session_cache: l1 has no answer");
    ctx->l1_mark = l1::mark(view(ctx->token));
    return NGX_DECLINED;
}

/* An answer from Redis or Postgres into L1, if the mark still holds. */
static void l1_fill(Ctx *ctx, bool negative, std::string_view value,
                    bool has_expiry, std::int64_t expires_at)
{
    l1::store(view(ctx->token), ctx->l1_mark, negative, value, has_expiry,
              expires_at);
}

static void on_postgres(void *data, const PgRow *row, const char *error);

static ngx_int_t ask_postgres(Ctx *ctx)
{
    PgPool *pg = pg_pool();

    if (pg == nullptr) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ctx->r->connection->log, 0,
                       "session_cache: no postgres: redis alone decides");

        /* Redis alone: it is the source of truth */
        if (ctx->redis_failed) {
            return unavailable(ctx);
        }
        answered_by(ctx, Layer::Redis);
        return deny(ctx, kMiss);
    }

    if (const Session *f = fills.lookup(view(ctx->token), ctx->get_seq,
                                        ctx->redis_failed, ngx_time()))
    {
        const ngx_str_t &status = ctx->redis_failed ? kBypass : kMiss;

        /* Postgres's answer, on its way into the cache */
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ctx->r->connection->log, 0,
                       "session_cache: answer taken from the cache fill "
                       "on its way: %s",
                       f->user_id.empty() ? "no such session" : "session");

        answered_by(ctx, Layer::Postgres);

        if (f->user_id.empty()) {
            return deny(ctx, status);
        }

        return allow(ctx, status, *f);
    }

    const char *error = nullptr;
    ctx->pg_waiter = pg->submit(view(ctx->token), on_postgres, ctx, &error);

    if (ctx->pg_waiter == nullptr) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ctx->r->connection->log, 0,
                       "session_cache: postgres query not sent: %s",
                       error ? error : "unknown");
        return unavailable(ctx);
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ctx->r->connection->log, 0,
                   "session_cache: postgres asked");

    return NGX_AGAIN;
}

/* What Redis said, for the trace (never the value: it holds the user). */
static void trace_redis(Ctx *ctx, const char *what)
{
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ctx->r->connection->log, 0,
                   "session_cache: redis answer: %s", what);
}

static ngx_int_t redis_answered(Ctx *ctx, const RedisReply *reply,
                                const char *error)
{
    if (error != nullptr) {
        /* the peer's words are in the pool's error line, not here */
        trace_redis(ctx, "failed");
        ctx->redis_failed = true;
        return ask_postgres(ctx);
    }

    if (reply->type == REDIS_REPLY_NIL) {
        trace_redis(ctx, "nil (a miss)");
        return ask_postgres(ctx);
    }

    if (reply->type != REDIS_REPLY_STRING) {
        trace_redis(ctx, "not a string");
        if (reply->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, ctx->r->connection->log, 0,
                          "session_cache: redis GET failed: %*s",
                          ngx_min(reply->len, (size_t) 200), reply->str);
        }
        ctx->redis_failed = true;
        return ask_postgres(ctx);
    }

    /* nothing allocated: the user id and the attributes go from the reply
     * to these buffers, and allow() copies them once into the request's
     * pool */
    SessionView s;
    char        user_id[kMaxUserIdLength];
    char        attrs[kAttrBufferSize];

    switch (decode_session(std::string_view(reply->str, reply->len), ngx_time(),
                           &s, user_id, attrs))
    {
    case Decoded::Valid:
        trace_redis(ctx, "session");
        answered_by(ctx, Layer::Redis);
        l1_fill(ctx, false, std::string_view(reply->str, reply->len),
                s.has_expiry, s.expires_at);
        return allow(ctx, kHit, s.user_id, s.has_expiry, s.expires_at, s.attrs,
                     s.nattrs);

    case Decoded::Negative:
        trace_redis(ctx, "negative entry");
        answered_by(ctx, Layer::Redis);
        l1_fill(ctx, true, std::string_view(), false, 0);
        return deny(ctx, kNegative);

    case Decoded::Malformed:
        trace_redis(ctx, "unreadable value");
        count(Counter::Invalidations);
        ngx_log_error(NGX_LOG_WARN, ctx->r->connection->log, 0,
                      "session_cache: unreadable cached session value, "
                      "asking postgres");
        return ask_postgres(ctx);

    case Decoded::Expired:
        trace_redis(ctx, "expired session");
        count(Counter::Invalidations);
        break;
    }

    return ask_postgres(ctx);
}

/* What Postgres said, for the trace. */
static void trace_postgres(Ctx *ctx, const char *what)
{
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ctx->r->connection->log, 0,
                   "session_cache: postgres answer: %s", what);
}

static ngx_int_t postgres_answered(Ctx *ctx, const PgRow *row,
                                   const char *error)
{
    if (error == kPgQueryUnprepared) {
        /* a configuration error, not an outage: auth_session_fail open
         * never turns it into a pass (the pool logged the alert) */
        ctx->result.status = kError;
        count(Counter::Errors);
        ngx_log_error(NGX_LOG_ERR, ctx->r->connection->log, 0,
                      "session_cache: session not checked: %s", error);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    const ngx_str_t &status = ctx->redis_failed ? kBypass : kMiss;

    if (error == kPgUnconfirmed) {
        /* a hot standby found no row and no primary could confirm it
         * (SPEC §11): refused, remembered neither in Redis nor in L1 */
        trace_postgres(ctx, "no row on a standby, unconfirmed");
        answered_by(ctx, Layer::Postgres);
        return deny(ctx, status);
    }

    if (error != nullptr) {
        trace_postgres(ctx, "failed");
        return unavailable(ctx);
    }

    answered_by(ctx, Layer::Postgres);

    if (row == nullptr) {
        trace_postgres(ctx, "no row");
        l1_fill(ctx, true, std::string_view(), false, 0);
        if (ctx->smcf->negative_ttl > 0) {
            cache_write(ctx, negative_marker(), ctx->smcf->negative_ttl,
                        nullptr);
        }
        return deny(ctx, status);
    }

    if (!user_id_acceptable(row->user_id)) {
        trace_postgres(ctx, "a row with an unacceptable user id");
        ngx_log_error(NGX_LOG_ERR, ctx->r->connection->log, 0,
                      "session_cache: postgres returned a user id that is "
                      "empty, too long or holds control characters");
        return deny(ctx, status);
    }

    /* a value that may never reach a header: the column is named, the
     * value and the token are not */
    for (std::size_t i = 0; i < row->nattrs; i++) {
        if (!attr_value_acceptable(row->attrs[i].value)) {
            trace_postgres(ctx, "a row with an unacceptable attribute");
            ngx_log_error(NGX_LOG_ERR, ctx->r->connection->log, 0,
                          "session_cache: postgres returned a value for "
                          "the attribute column \"%*s\" that is too long "
                          "or holds control characters",
                          row->attrs[i].name.size(), row->attrs[i].name.data());
            return deny(ctx, status);
        }
    }

    trace_postgres(ctx, "a row");

    Session s;
    s.user_id.assign(row->user_id.data(), row->user_id.size());
    s.has_expiry = row->has_expiry;
    s.expires_at = row->expires_at;
    s.attrs.resize(row->nattrs);
    for (std::size_t i = 0; i < row->nattrs; i++) {
        s.attrs[i].name.assign(row->attrs[i].name);
        s.attrs[i].value.assign(row->attrs[i].value);
    }

    std::string value;

    if (revoked_since(view(ctx->token), row->asked_at)) {
        /* read before a revocation's commit, answered after it (SPEC §9):
         * this request was made before, the caches must not keep it */
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, ctx->r->connection->log, 0,
                       "session_cache: a revocation came since the query "
                       "was sent: the answer is not cached");

    } else if (encode_session(s, &value)) {
        cache_write(ctx, value, cache_seconds(ctx->smcf->ttl, s, ngx_time()),
                    &s);
        l1_fill(ctx, false, value, s.has_expiry, s.expires_at);
    }

    return allow(ctx, status, s);
}

/* The outcome is known: keep it for the handler's next call. */
static void finish(Ctx *ctx, ngx_int_t rc)
{
    ctx->rc = rc;
    ctx->done = true;

    observe(ctx->layer, monotonic_ns() - ctx->started_ns);

#if (NGX_DEBUG)
    static const ngx_str_t none = ngx_string("none");
    const ngx_str_t       *status =
        ctx->result.status.len ? &ctx->result.status : &none;

    if (rc == NGX_OK) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, ctx->r->connection->log, 0,
                       "session_cache: outcome %V: access allowed", status);
    } else {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, ctx->r->connection->log, 0,
                       "session_cache: outcome %V: status %i", status, rc);
    }
#endif
}

/* The outcome is known: hand the request back to the phase engine. */
static void resume(Ctx *ctx, ngx_int_t rc)
{
    if (rc == NGX_AGAIN) {
        return;
    }

    ngx_http_request_t *r = ctx->r;
    ngx_connection_t   *c = r->connection;

    finish(ctx, rc);

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;

    ngx_http_core_run_phases(r);
    ngx_http_run_posted_requests(c);
}

/*
 * A backend answered (nginx calls this through the pool): take the next
 * step, and resume if it was the last. Nothing is thrown past here.
 */
template <class Step>
static void answered(Ctx *ctx, Step step)
{
    ngx_int_t rc;

    try {
        rc = step();
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, ctx->r->connection->log, 0,
                      "session_cache: %s", e.what());
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    } catch (...) {
        ngx_log_error(NGX_LOG_ALERT, ctx->r->connection->log, 0,
                      "session_cache: unknown exception");
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* plain nginx calls, and the handler they call again catches its own */
    resume(ctx, rc);
}

static void on_redis(void *data, const RedisReply *reply, const char *error)
{
    auto *ctx = static_cast<Ctx *>(data);

    ctx->redis_job = nullptr;
    answered(ctx, [&] { return redis_answered(ctx, reply, error); });
}

static void on_postgres(void *data, const PgRow *row, const char *error)
{
    auto *ctx = static_cast<Ctx *>(data);

    ctx->pg_waiter = nullptr;
    answered(ctx, [&] { return postgres_answered(ctx, row, error); });
}

static ngx_int_t start(ngx_http_request_t                       *r,
                       const ngx_http_session_cache_main_conf_t *smcf,
                       const ngx_http_session_cache_loc_conf_t  *slcf)
{
    std::uint64_t started = monotonic_ns();
    ngx_str_t     token;

    if (ngx_http_complex_value(r, slcf->token, &token) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    auto *ctx = static_cast<Ctx *>(ngx_pcalloc(r->pool, sizeof(Ctx)));
    if (ctx == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->r = r;
    ctx->smcf = smcf;
    ctx->slcf = slcf;
    ctx->token = token;
    ctx->started_ns = started;
    ctx->layer = Layer::None;

    /* the Redis key, built once, from the request pool */
    const ngx_str_t &prefix = smcf->key_prefix;
    ctx->key.len = prefix.len + token.len;
    ctx->key.data = static_cast<u_char *>(ngx_pnalloc(r->pool, ctx->key.len));
    if (ctx->key.data == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_memcpy(ngx_cpymem(ctx->key.data, prefix.data, prefix.len), token.data,
               token.len);

    cln->handler = cleanup;
    cln->data = ctx;

    ngx_http_set_ctx(r, ctx, ngx_http_session_cache_module);

    ngx_int_t rc;
    bool      plausible = token_plausible(token.data, token.len);

    /* the token's length only: the token is a secret */
    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "session_cache: token of %uz bytes, %s", token.len,
                   plausible ? "plausible" : "not plausible");

    if (!plausible) {
        rc = deny(ctx, kRejected);

    } else if ((rc = from_l1(ctx)) != NGX_DECLINED) {
        /* L1 answered */

    } else if (redis_pool()) {
        RedisPool  *redis = redis_pool_for(view(ctx->key));
        const char *error = "no reachable redis node serves the key's slot";
        ctx->redis_job = redis ? redis->submit({"GET", view(ctx->key)},
                                               on_redis, ctx, &error)
                               : nullptr;

        if (ctx->redis_job != nullptr) {
            ctx->get_seq = fills.get_sent();

            ngx_log_debug3(
                NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                "session_cache: redis GET #%uL sent%s%s", ctx->get_seq,
                ctx->redis_job->trial ? ", the breaker's trial call" : "",
                ctx->redis_job->waiting ? ", waiting for a connection" : "");
            rc = NGX_AGAIN;

        } else {
            /* the breaker's refusal reads "circuit breaker open" */
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                           "session_cache: redis GET not sent: %s",
                           error ? error : "unknown");
            ctx->redis_failed = true;
            rc = ask_postgres(ctx);
        }

    } else {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "session_cache: no redis: postgres decides");
        rc = ask_postgres(ctx);
    }

    if (rc == NGX_AGAIN) {
        /* notice a client that gives up while we wait */
        r->read_event_handler = ngx_http_test_reading;
        r->write_event_handler = ngx_http_request_empty_handler;
        return NGX_AGAIN;
    }

    finish(ctx, rc);
    return rc;
}

/* A rule's value: an empty one (an attribute not there, a variable that
 * evaluates to nothing) never matches. */
static bool rule_met(ngx_http_request_t                     *r,
                     const ngx_http_session_cache_require_t *rule,
                     const ngx_str_t &have, ngx_int_t *rc)
{
    if (have.len == 0) {
        return false;
    }

    auto *cv = static_cast<ngx_http_complex_value_t *>(rule->values.elts);

    for (ngx_uint_t i = 0; i < rule->values.nelts; i++) {
        ngx_str_t want;

        if (ngx_http_complex_value(r, &cv[i], &want) != NGX_OK) {
            *rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
            return false;
        }

        if (want.len == have.len
            && ngx_memcmp(want.data, have.data, have.len) == 0) {
            return true;
        }
    }

    return false;
}

/*
 * auth_session_require, after the check let the request through: every
 * rule must be met, else 403. Without a session (auth_session_fail open)
 * no rule is met.
 */
static ngx_int_t require(ngx_http_request_t *r, const Ctx *ctx,
                         const ngx_http_session_cache_loc_conf_t *slcf)
{
    static const ngx_str_t kEmpty = ngx_null_string;

    const ngx_http_session_cache_result_t &res = ctx->result;
    auto                                  *rule =
        static_cast<ngx_http_session_cache_require_t *>(slcf->require->elts);

    for (ngx_uint_t i = 0; i < slcf->require->nelts; i++) {
        const ngx_str_t *have = &kEmpty;

        if (view(rule[i].name) == "user_id") {
            have = &res.user_id;
        } else {
            for (ngx_uint_t a = 0; a < res.nattrs; a++) {
                if (view(res.attr_name[a]) == view(rule[i].name)) {
                    have = &res.attr_value[a];
                    break;
                }
            }
        }

        ngx_int_t rc = NGX_OK;

        if (!rule_met(r, &rule[i], *have, &rc)) {
            if (rc != NGX_OK) {
                return rc;
            }

            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "session_cache: access forbidden by "
                          "auth_session_require: %V",
                          &rule[i].name);
            return NGX_HTTP_FORBIDDEN;
        }
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "session_cache: auth_session_require met");

    return NGX_OK;
}

} // namespace session_cache

extern "C" ngx_int_t
ngx_http_session_cache_check(ngx_http_request_t                 *r,
                             ngx_http_session_cache_main_conf_t *smcf,
                             ngx_http_session_cache_loc_conf_t  *slcf)
{
    using namespace session_cache;

    try {
        Ctx      *ctx = get_ctx(r);
        ngx_int_t rc;

        if (ctx != nullptr) {
            rc = ctx->done ? ctx->rc : NGX_AGAIN;
        } else {
            rc = start(r, smcf, slcf);
            ctx = get_ctx(r);
        }

        /* the location's rules, after any internal redirect too */
        if (rc == NGX_OK && slcf->require != nullptr && ctx != nullptr) {
            rc = require(r, ctx, slcf);
        }

        return rc;

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0, "session_cache: %s",
                      e.what());
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    } catch (...) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "session_cache: unknown exception");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}

/* nginx calls this for the variables; nothing in it throws. */
extern "C" ngx_http_session_cache_result_t *
ngx_http_session_cache_result(ngx_http_request_t *r)
{
    session_cache::Ctx *ctx = session_cache::get_ctx(r);

    return ctx ? &ctx->result : nullptr;
}
