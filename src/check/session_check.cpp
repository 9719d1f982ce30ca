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
 *
 * The handler returns NGX_AGAIN while a backend works; the completion
 * callback records the outcome and restarts the phase engine, which calls
 * the handler again to collect it.
 */
#include "nginx_cpp.h"

#include <new>
#include <string>
#include <deque>
#include <unordered_map>

#include "metrics/metrics.h"
#include "redis/resp.h"
#include "check/session_value.h"
#include "check/token.h"
#include "worker.h"

namespace session_cache {

/* Retry-After on 503: a store outage is not over in less; with the
 * Postgres breaker open, the time until its next trial. */
static const time_t kRetryAfter = 5;

struct Ctx {
    ngx_http_session_cache_result_t            result;  /* first: see below */
    ngx_http_request_t                        *r;
    const ngx_http_session_cache_main_conf_t  *smcf;
    const ngx_http_session_cache_loc_conf_t   *slcf;
    ngx_str_t                                  token;
    ngx_str_t                                  key;     /* prefix + token */
    RedisJob                                  *redis_job;
    PgJob                                     *pg_job;
    std::uint64_t                              get_seq; /* 0: no GET */
    ngx_int_t                                  rc;
    bool                                       done;
    bool                                       redis_failed;
};

#define STATUS(s) ngx_str_t{ sizeof(s) - 1, (u_char *) (s) }

static const ngx_str_t kHit = STATUS("HIT");
static const ngx_str_t kMiss = STATUS("MISS");
static const ngx_str_t kNegative = STATUS("NEGATIVE");
static const ngx_str_t kBypass = STATUS("BYPASS");
static const ngx_str_t kRejected = STATUS("REJECTED");
static const ngx_str_t kFailOpen = STATUS("FAIL_OPEN");
static const ngx_str_t kError = STATUS("ERROR");

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

static void cleanup(void *data)
{
    auto *ctx = static_cast<Ctx *>(data);

    /* the request went away while a backend was still working for it */
    if (ctx->redis_job && redis_pool()) {
        redis_pool()->cancel(ctx->redis_job);
    }

    if (ctx->pg_job && pg_pool()) {
        pg_pool()->cancel(ctx->pg_job);
    }

    ctx->redis_job = nullptr;
    ctx->pg_job = nullptr;
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

static ngx_int_t allow(Ctx *ctx, const ngx_str_t &status,
                       std::string_view user_id, bool has_expiry,
                       std::int64_t expires_at)
{
    ngx_http_request_t *r = ctx->r;

    ctx->result.status = status;
    count(counter_of(status));

    u_char *p = static_cast<u_char *>(ngx_pnalloc(r->pool, user_id.size()));
    if (p == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_memcpy(p, user_id.data(), user_id.size());
    ctx->result.user_id.data = p;
    ctx->result.user_id.len = user_id.size();

    if (has_expiry) {
        p = static_cast<u_char *>(ngx_pnalloc(r->pool, NGX_INT64_LEN));
        if (p == nullptr) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        ctx->result.expires_at.data = p;
        ctx->result.expires_at.len = ngx_sprintf(p, "%L", expires_at) - p;
    }

    return NGX_OK;
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

    ngx_table_elt_t *h = static_cast<ngx_table_elt_t *>(
        ngx_list_push(&r->headers_out.headers));
    if (h == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    time_t after = kRetryAfter;
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

/*
 * Postgres answers on their way into the cache, per worker. A request for
 * the same token whose GET missed because it ran before the SET landed
 * takes this answer instead of asking Postgres again: with PgPool's single
 * flight, one query per token per worker. That is every GET answered
 * while the SET is unacknowledged, and every GET sent before the
 * acknowledgement (numbered by gets): Redis runs commands in order, so a
 * GET sent after it that misses means the key went away (deleted by the
 * application, expired), and Postgres is asked. An acknowledged entry is
 * dropped once no GET sent before it can still be waiting.
 */
struct Fill {
    std::string   user_id;      /* empty: no such session */
    bool          has_expiry = false;
    std::int64_t  expires_at = 0;
    ngx_uint_t    writes = 0;   /* SETs not yet acknowledged */
    std::uint64_t acked = 0;    /* gets + 1 when the last SET was acked */
    ngx_msec_t    acked_at = 0;
};

using Fills = std::unordered_map<std::string, Fill>;

static Fills fills;
static std::deque<std::pair<ngx_msec_t, std::string>> acked;
static std::uint64_t gets;
static ngx_msec_t get_timeout;      /* no GET waits longer */

static void sweep_fills()
{
    while (!acked.empty()
           && ngx_current_msec - acked.front().first > get_timeout)
    {
        auto it = fills.find(acked.front().second);

        if (it != fills.end() && it->second.writes == 0
            && it->second.acked_at == acked.front().first)
        {
            fills.erase(it);
        }
        acked.pop_front();
    }
}

static void on_cache_written(void *data, const RedisReply *reply,
                             const char *error)
{
    auto *entry = static_cast<Fills::value_type *>(data);
    Fill &f = entry->second;

    if (--f.writes > 0) {
        return;
    }

    if (error != nullptr || reply == nullptr
        || reply->type == REDIS_REPLY_ERROR)
    {
        /* the cache does not hold it: nothing to bridge */
        fills.erase(fills.find(entry->first));
        return;
    }

    f.acked = gets + 1;
    f.acked_at = ngx_current_msec;
    acked.emplace_back(f.acked_at, entry->first);
}

/* Write to the cache without waiting for the answer. s: the session,
 * nullptr for a negative entry. */
static void cache_write(Ctx *ctx, std::string_view value,
                        std::int64_t seconds, const Session *s)
{
    RedisPool *redis = redis_pool();

    if (redis == nullptr || ctx->redis_failed || seconds <= 0) {
        return;
    }

    get_timeout = ctx->smcf->redis.backend.timeout;
    sweep_fills();

    auto [it, fresh] = fills.try_emplace(std::string(view(ctx->token)));
    auto *entry = &*it;
    Fill &f = entry->second;

    /* the callers that shared one Postgres query (single flight) all get
     * here with the same answer: one SET of it is enough */
    if (!fresh && f.writes > 0
        && (s ? f.user_id == s->user_id && f.has_expiry == s->has_expiry
                    && f.expires_at == s->expires_at
              : f.user_id.empty()))
    {
        return;
    }

    if (s) {
        f.user_id = s->user_id;
        f.has_expiry = s->has_expiry;
        f.expires_at = s->expires_at;
    } else {
        f.user_id.clear();
    }

    f.writes++;

    const char *error = nullptr;
    if (redis->submit({"SET", view(ctx->key), value, "EX",
                       std::to_string(seconds)}, on_cache_written, entry,
                      &error) == nullptr)
    {
        on_cache_written(entry, nullptr, error);
    }
}

static void on_postgres(void *data, const PgRow *row, const char *error);

static ngx_int_t ask_postgres(Ctx *ctx)
{
    PgPool *pg = pg_pool();

    if (pg == nullptr) {
        /* Redis alone: it is the source of truth */
        return ctx->redis_failed ? unavailable(ctx) : deny(ctx, kMiss);
    }

    auto fill = fills.find(std::string(view(ctx->token)));

    if (fill != fills.end()
        && (fill->second.writes > 0
            || (!ctx->redis_failed && ctx->get_seq != 0
                && ctx->get_seq < fill->second.acked)))
    {
        const Fill &f = fill->second;
        const ngx_str_t &status = ctx->redis_failed ? kBypass : kMiss;

        if (f.user_id.empty()) {
            return deny(ctx, status);
        }

        if (!f.has_expiry || f.expires_at > ngx_time()) {
            return allow(ctx, status, f.user_id, f.has_expiry, f.expires_at);
        }
    }

    const char *error = nullptr;
    ctx->pg_job = pg->submit(view(ctx->token), on_postgres, ctx, &error);

    if (ctx->pg_job == nullptr) {
        return unavailable(ctx);
    }

    return NGX_AGAIN;
}

static ngx_int_t redis_answered(Ctx *ctx, const RedisReply *reply,
                                const char *error)
{
    if (error != nullptr) {
        ctx->redis_failed = true;
        return ask_postgres(ctx);
    }

    if (reply->type == REDIS_REPLY_NIL) {
        return ask_postgres(ctx);
    }

    if (reply->type != REDIS_REPLY_STRING) {
        if (reply->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, ctx->r->connection->log, 0,
                          "session_cache: redis GET failed: %*s",
                          ngx_min(reply->len, (size_t) 200), reply->str);
        }
        ctx->redis_failed = true;
        return ask_postgres(ctx);
    }

    /* nothing allocated: the user id goes from the reply to user_id, and
     * allow() copies it once into the request's pool */
    SessionView s;
    char user_id[kMaxUserIdLength];

    switch (decode_session(std::string_view(reply->str, reply->len),
                           ngx_time(), &s, user_id))
    {
    case Decoded::Valid:
        return allow(ctx, kHit, s.user_id, s.has_expiry, s.expires_at);

    case Decoded::Negative:
        return deny(ctx, kNegative);

    case Decoded::Malformed:
        count(Counter::Invalidations);
        ngx_log_error(NGX_LOG_WARN, ctx->r->connection->log, 0,
                      "session_cache: unreadable cached session value, "
                      "asking postgres");
        return ask_postgres(ctx);

    case Decoded::Expired:
        count(Counter::Invalidations);
        break;
    }

    return ask_postgres(ctx);
}

static ngx_int_t postgres_answered(Ctx *ctx, const PgRow *row,
                                   const char *error)
{
    if (error != nullptr) {
        return unavailable(ctx);
    }

    const ngx_str_t &status = ctx->redis_failed ? kBypass : kMiss;

    if (row == nullptr) {
        if (ctx->smcf->negative_ttl > 0) {
            cache_write(ctx, negative_marker(), ctx->smcf->negative_ttl,
                        nullptr);
        }
        return deny(ctx, status);
    }

    if (!user_id_acceptable(row->user_id)) {
        ngx_log_error(NGX_LOG_ERR, ctx->r->connection->log, 0,
                      "session_cache: postgres returned a user id that is "
                      "empty, too long or holds control characters");
        return deny(ctx, status);
    }

    Session s;
    s.user_id.assign(row->user_id.data(), row->user_id.size());
    s.has_expiry = row->has_expiry;
    s.expires_at = row->expires_at;

    std::string value;
    if (encode_session(s, &value)) {
        cache_write(ctx, value, cache_seconds(ctx->smcf->ttl, s, ngx_time()),
                    &s);
    }

    return allow(ctx, status, row->user_id, row->has_expiry,
                 row->expires_at);
}

/* The outcome is known: hand the request back to the phase engine. */
static void resume(Ctx *ctx, ngx_int_t rc)
{
    if (rc == NGX_AGAIN) {
        return;
    }

    ngx_http_request_t *r = ctx->r;
    ngx_connection_t *c = r->connection;

    ctx->rc = rc;
    ctx->done = true;

    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;

    ngx_http_core_run_phases(r);
    ngx_http_run_posted_requests(c);
}

/* A backend answered: take the next step, and resume if it was the last. */
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
    }

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

    ctx->pg_job = nullptr;
    answered(ctx, [&] { return postgres_answered(ctx, row, error); });
}

static ngx_int_t start(ngx_http_request_t *r,
                       const ngx_http_session_cache_main_conf_t *smcf,
                       const ngx_http_session_cache_loc_conf_t *slcf)
{
    ngx_str_t token;

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

    /* the Redis key, built once, from the request pool */
    const ngx_str_t &prefix = smcf->key_prefix;
    ctx->key.len = prefix.len + token.len;
    ctx->key.data = static_cast<u_char *>(ngx_pnalloc(r->pool, ctx->key.len));
    if (ctx->key.data == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_memcpy(ngx_cpymem(ctx->key.data, prefix.data, prefix.len),
               token.data, token.len);

    cln->handler = cleanup;
    cln->data = ctx;

    ngx_http_set_ctx(r, ctx, ngx_http_session_cache_module);

    ngx_int_t rc;

    if (!token_plausible(token.data, token.len)) {
        rc = deny(ctx, kRejected);

    } else if (RedisPool *redis = redis_pool()) {
        const char *error = nullptr;
        ctx->redis_job = redis->submit({"GET", view(ctx->key)}, on_redis, ctx,
                                       &error);

        if (ctx->redis_job != nullptr) {
            ctx->get_seq = ++gets;
            rc = NGX_AGAIN;
        } else {
            ctx->redis_failed = true;
            rc = ask_postgres(ctx);
        }

    } else {
        rc = ask_postgres(ctx);
    }

    if (rc == NGX_AGAIN) {
        /* notice a client that gives up while we wait */
        r->read_event_handler = ngx_http_test_reading;
        r->write_event_handler = ngx_http_request_empty_handler;
        return NGX_AGAIN;
    }

    ctx->rc = rc;
    ctx->done = true;
    return rc;
}

}  // namespace session_cache

extern "C" ngx_int_t
ngx_http_session_cache_check(ngx_http_request_t *r,
    ngx_http_session_cache_main_conf_t *smcf,
    ngx_http_session_cache_loc_conf_t *slcf)
{
    using namespace session_cache;

    try {
        Ctx *ctx = get_ctx(r);

        if (ctx != nullptr) {
            return ctx->done ? ctx->rc : NGX_AGAIN;
        }

        return start(r, smcf, slcf);

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "session_cache: %s", e.what());
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}

extern "C" ngx_http_session_cache_result_t *
ngx_http_session_cache_result(ngx_http_request_t *r)
{
    session_cache::Ctx *ctx = session_cache::get_ctx(r);

    return ctx ? &ctx->result : nullptr;
}
