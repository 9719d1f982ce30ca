/*
 * The revocation listener: see pg_listener.h. The rules (channel names,
 * payloads, the heartbeat's figures) are pg/revocation.h's.
 *
 * Where the lease lives: a small shared zone of its own,
 * "session_cache_revocation", made only when the directive is on. Not
 * the L1 zone: revocation works without L1 (Redis and Postgres only),
 * and the L1 zone is sized and dropped by session_cache_l1 alone. Not
 * the metrics zone: that one is laid out in per-worker slots by
 * metrics.cpp and has no lock of its own to share. The revocation zone
 * also holds what every worker must see for the health document (the
 * listener's state and counters), since one worker listens and any
 * worker answers /health. Its lease is an l1::LeaseSlot like the L1
 * listener's: the same rules, a lease of its own.
 *
 * States of the connection (per worker; only the lease holder has one),
 * one dispatch (on_event) and one timer (on_tick, every second, in every
 * worker):
 *
 *   Closed --tick, lease held, backoff over--> Connecting (PQconnectPoll)
 *   Connecting --PGRES_POLLING_OK--> Subscribing (LISTEN "<channel>")
 *   Subscribing --LISTEN's answer--> Listening (L1 dropped if it had been
 *              lost, or taken over from another worker)
 *   Listening: an empty query each tick; notifications at any time
 *   any error, close, refusal or silence --> Closed
 *
 * Reading (TLS): libpq may hold decrypted bytes that the socket no longer
 * signals, so after each PQconsumeInput every result and notification
 * libpq holds is taken, and PQconsumeInput is called again while that
 * gave anything or OpenSSL still holds decrypted bytes (SSL_pending);
 * past a budget the read event is posted for the next turn of the event
 * loop rather than waited for.
 */
#include "pg/pg_listener.h"

#include <cstring>
#include <deque>
#include <string_view>
#include <vector>

#include <libpq-fe.h>

#include "guarded.h"
#include "l1/l1_zone.h"
#include "l1/lease_slot.h"
#include "pg/pg_conninfo.h"
#include "pg/pg_socket.h"
#include "pg/revocation.h"
#include "worker.h"

namespace session_cache {

namespace {

enum class State : ngx_atomic_uint_t {
    Closed,
    Connecting,
    Subscribing,
    Listening
};

const char *state_name(State s)
{
    switch (s) {
    case State::Closed:
        return "closed";
    case State::Connecting:
        return "connecting";
    case State::Subscribing:
        return "subscribing";
    case State::Listening:
        break;
    }
    return "listening";
}

/* In the zone: the lease, and what the health document shows. */
struct Shared {
    l1::Lease     lease;
    ngx_atomic_t  generations;
    ngx_atomic_t  state;   /* State, written by the holder */
    ngx_atomic_t  last_ok; /* ngx_current_msec of its last answer */
    std::uint64_t notifications;
    std::uint64_t revoked;
    std::uint64_t flushes;
    std::uint64_t ignored;
    std::uint64_t reconnects;
    char          reason[160];

    /* When a notification last revoked a token of each race bucket (the
     * L1 buckets: l1::race_bucket), and every token ("*", or listening
     * again after a loss): ngx_current_msec, which every worker reads off
     * the same monotonic clock. See revoked_since(). */
    ngx_atomic_t revoked_at[l1::kRaceBuckets];
    ngx_atomic_t revoked_all_at;
};

/* the query in flight on the connection */
enum class Query { None, Listen, Heartbeat };

/* a token to drop once more, later: see again() */
struct Again {
    ngx_msec_t  due;
    std::string token;
};

constexpr char        kApplicationName[] = "ngx_session_cache_listen";
constexpr std::size_t kAgainMax = 65536; /* tokens waiting for again() */
constexpr int         kReadRounds = 16;
constexpr std::size_t kReasonMax = sizeof(Shared::reason) - 1;

struct Listener {
    const ngx_http_session_cache_main_conf_t *smcf = nullptr;
    ngx_log_t                                 log{};
    ngx_event_t                               tick{};
    ngx_slab_pool_t                          *shpool = nullptr;
    Shared                                   *sh = nullptr;
    PGconn                                   *pg = nullptr;
    PgSocket                                  sock;
    State                                     state = State::Closed;
    Query                                     out = Query::None;
    std::string                               query_error; /* its answer */
    bool                                      flushing = false;
    bool                                      holder = false;
    bool        lost = false; /* notifications may have been missed */
    ngx_msec_t  sent = 0;
    ngx_msec_t  started = 0;
    ngx_msec_t  next_connect = 0;
    unsigned    failures = 0; /* attempts failed since last listening */
    std::string listen_sql;
    std::string prefix; /* session_cache_key_prefix */
    std::vector<const char *> keywords, values;
    PgConninfo                conninfo; /* for pg_message() */
    std::deque<Again>         again;    /* in the order they are due */
    ngx_msec_t                again_delay = 0;
};

Listener *self;

/* this worker's view of the zone, for revocation_figures() */
const ngx_http_session_cache_revocation_conf_t *zone_conf;

l1::LeaseSlot slot(const Listener *l)
{
    l1::LeaseSlot s;
    s.mutex = &l->shpool->mutex;
    s.lease = &l->sh->lease;
    s.generation = l->smcf->revocation.generation;
    return s;
}

void count(std::uint64_t *counter)
{
    __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
}

/* libpq's words, as the pool filters them (pg_message): never the
 * password, nothing the configuration does not already show. */
std::string said(const Listener *l, const char *msg)
{
    try {
        return pg_message(msg ? msg : "", l->conninfo, l->listen_sql);
    } catch (...) {
        return "unknown error";
    }
}

/* The state and the reason in the zone: the holder's only. */
void publish(Listener *l, State s, std::string_view reason)
{
    std::size_t n = ngx_min(reason.size(), kReasonMax);

    slot(l).if_holder(ngx_pid, [&] {
        l->sh->state = static_cast<ngx_atomic_uint_t>(s);
        if (s == State::Listening) {
            l->sh->last_ok = ngx_current_msec;
        }
        ngx_memcpy(l->sh->reason, reason.data(), n);
        l->sh->reason[n] = '\0';
    });
}

void set_state(Listener *l, State s, std::string_view reason)
{
    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, &l->log, 0,
                   "session_cache: revocation listener %s -> %s",
                   state_name(l->state), state_name(s));
    l->state = s;
    publish(l, s, reason);
}

/* The nginx side goes, then libpq closes the socket. */
void close_connection(Listener *l)
{
    l->sock.release();

    if (l->pg != nullptr) {
        PQfinish(l->pg);
        l->pg = nullptr;
    }

    l->out = Query::None;
    l->flushing = false;
    l->query_error.clear();
    l->state = State::Closed;
}

/* The connection is over: why. L1 is dropped when it listens again. */
void fail(Listener *l, const std::string &why)
{
    bool was_listening = l->state == State::Listening;

    close_connection(l);

    if (was_listening) {
        l->lost = true;
        ngx_log_error(NGX_LOG_WARN, &l->log, 0,
                      "session_cache: revocation listener lost (%s); L1 "
                      "will be dropped once it listens again",
                      why.c_str());

    } else if (l->failures == 0) {
        /* said once until it listens again */
        ngx_log_error(NGX_LOG_ERR, &l->log, 0,
                      "session_cache: revocation listener: %s", why.c_str());
    } else {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &l->log, 0,
                       "session_cache: revocation listener: %s", why.c_str());
    }

    set_state(l, State::Closed, why);

    l->next_connect =
        ngx_current_msec + revocation::reconnect_delay(l->failures);
    l->failures++;
}

void on_event(ngx_event_t *ev);

/* Send what libpq holds; false: the connection failed. */
bool flush_out(Listener *l)
{
    int rv = PQflush(l->pg);

    if (rv == -1) {
        fail(l, said(l, PQerrorMessage(l->pg)));
        return false;
    }

    l->flushing = (rv == 1);

    if (!l->sock.want_write(l->flushing)) {
        fail(l, "cannot watch the socket");
        return false;
    }

    return true;
}

bool send_query(Listener *l, const char *sql, Query q)
{
    if (!PQsendQuery(l->pg, sql)) {
        fail(l, said(l, PQerrorMessage(l->pg)));
        return false;
    }

    l->out = q;
    l->sent = ngx_current_msec;
    l->query_error.clear();

    if (!flush_out(l)) {
        return false;
    }

    /* PQflush may have read what the server sent meanwhile (it reads
     * when it cannot write): have consume() look, this turn of the
     * event loop, rather than wait for a socket that may not signal */
    ngx_post_event(l->sock.c->read, &ngx_posted_events);
    return true;
}

/* A revocation at this moment, of token's bucket or (token empty) of
 * every token: cache fills read before it are not written. */
void revoked_now(Listener *l, std::string_view token)
{
    ngx_atomic_t *at =
        token.empty() ? &l->sh->revoked_all_at
                      : &l->sh->revoked_at[l1::race_bucket(l1::hash(token))];

    __atomic_store_n(at, ngx_current_msec, __ATOMIC_RELEASE);
}

/* LISTEN answered: notifications flow from here on. */
void listening(Listener *l)
{
    bool lost = l->lost;

    if (lost) {
        revoked_now(l, {});
        /* whatever was revoked while it was away is unknown */
        l1::flush(l1::FlushReason::RevocationLost, &l->log);
        count(&l->sh->reconnects);
        l->lost = false;
    }

    /* after the drop and its count: a health document that shows the
     * listener listening again shows them too */
    set_state(l, State::Listening, "");

    if (lost) {
        ngx_log_error(NGX_LOG_NOTICE, &l->log, 0,
                      "session_cache: revocation listener listens again on "
                      "\"%s\", L1 dropped",
                      l->smcf->revocation.channel.data);
    } else {
        ngx_log_error(NGX_LOG_INFO, &l->log, 0,
                      "session_cache: revocation listener listens on \"%s\"",
                      l->smcf->revocation.channel.data);
    }

    l->failures = 0;
}

/* A query's results are all in (PQgetResult gave nullptr); false: the
 * connection failed. */
bool completed(Listener *l)
{
    Query q = l->out;
    l->out = Query::None;

    if (!l->query_error.empty()) {
        fail(l, (q == Query::Listen ? "LISTEN refused: " : "heartbeat: ")
                    + l->query_error);
        return false;
    }

    if (q == Query::Listen) {
        listening(l);
    } else if (q == Query::Heartbeat) {
        publish(l, State::Listening, "");
    }

    return true;
}

/* A token's L1 entry goes, and DEL <prefix><token> is sent through this
 * worker's Redis pool. */
void drop(Listener *l, std::string_view token)
{
    l1::invalidate(token);

    std::string key = l->prefix;
    key.append(token);

    /* with redis-cluster://, the pool of the master serving the key */
    if (RedisPool *redis = redis_pool_for(key)) {
        const char *error = nullptr;

        /* nobody waits: a DEL repeated by every edge is harmless */
        if (redis->submit({"DEL", key}, nullptr, nullptr, &error) == nullptr) {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &l->log, 0,
                           "session_cache: revocation: DEL not sent: %s",
                           error ? error : "unknown");
        }
    }
}

/*
 * The second drop of each revoked token. A request that read the session
 * from Postgres before the commit writes it to Redis (the cache fill)
 * when the answer comes, which may be after the notification's DEL: the
 * revoked session would then be cached again, for session_cache_ttl. Its
 * query was sent before the commit, so its answer came within the
 * Postgres timeout of it and its SET within the Redis timeout of that:
 * a DEL that late (from the notification, which follows the commit)
 * removes it. Called every tick: at most a second later still.
 */
void again(Listener *l)
{
    ngx_msec_t now = ngx_current_msec;

    while (!l->again.empty()
           && static_cast<ngx_msec_int_t>(now - l->again.front().due) >= 0)
    {
        drop(l, l->again.front().token);
        l->again.pop_front();
    }
}

void notified(Listener *l, const PGnotify *n)
{
    std::string_view payload(n->extra ? n->extra : "");

    count(&l->sh->notifications);

    switch (revocation::classify(payload)) {
    case revocation::Payload::Token: {
        count(&l->sh->revoked);
        revoked_now(l, payload); /* before the DEL: no fill after it */
        drop(l, payload);

        /* once more later, for a Postgres answer read before the commit
         * whose cache fill lands after this DEL */
        if (redis_pool() != nullptr && l->again.size() < kAgainMax) {
            l->again.push_back(
                {ngx_current_msec + l->again_delay, std::string(payload)});
        }

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &l->log, 0,
                       "session_cache: revocation of a token (%uz bytes)",
                       payload.size());
        return;
    }

    case revocation::Payload::All:
        count(&l->sh->flushes);
        revoked_now(l, {});
        l1::flush(l1::FlushReason::Revocation, &l->log);
        ngx_log_error(NGX_LOG_INFO, &l->log, 0,
                      "session_cache: revocation of every session (\"*\"): "
                      "L1 dropped");
        return;

    case revocation::Payload::Ignored:
        break;
    }

    /* never the payload: it may be a secret, or a mistake holding one */
    count(&l->sh->ignored);
    ngx_log_error(NGX_LOG_WARN, &l->log, 0,
                  "session_cache: revocation: notification ignored, its "
                  "payload (%uz bytes) is not a token",
                  payload.size());
}

/* Over TLS, decrypted bytes OpenSSL holds that libpq has not read yet:
 * the socket will not signal them. */
bool tls_pending(Listener *l)
{
#if (NGX_SSL)
    if (PQsslInUse(l->pg)) {
        auto *ssl = static_cast<SSL *>(PQsslStruct(l->pg, "OpenSSL"));
        return ssl != nullptr && SSL_pending(ssl) > 0;
    }
#endif
    (void) l;
    return false;
}

/*
 * Take everything libpq holds and read again while that gave anything or
 * TLS holds more (see the top of the file); false: the connection failed.
 */
bool consume(Listener *l)
{
    for (int round = 0;; round++) {
        if (!PQconsumeInput(l->pg)) {
            fail(l, said(l, PQerrorMessage(l->pg)));
            return false;
        }

        bool got = false;

        while (!PQisBusy(l->pg)) {
            PGresult *res = PQgetResult(l->pg);

            if (res == nullptr) {
                if (l->out == Query::None) {
                    break;
                }
                got = true;
                if (!completed(l)) {
                    return false;
                }
                continue;
            }

            got = true;
            ExecStatusType st = PQresultStatus(res);

            if ((st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE
                 || st == PGRES_NONFATAL_ERROR)
                && l->query_error.empty())
            {
                l->query_error = said(l, PQresultErrorMessage(res));
                if (l->query_error.empty()) {
                    l->query_error = "error";
                }
            }

            PQclear(res);
        }

        while (PGnotify *n = PQnotifies(l->pg)) {
            got = true;
            try {
                notified(l, n);
            } catch (...) {
                PQfreemem(n);
                throw;
            }
            PQfreemem(n);
        }

        if (PQstatus(l->pg) != CONNECTION_OK) {
            fail(l, "connection lost");
            return false;
        }

        if (!got && !tls_pending(l)) {
            return true;
        }

        if (round + 1 >= kReadRounds) {
            ngx_post_event(l->sock.c->read, &ngx_posted_next_events);
            return true;
        }
    }
}

void connecting(Listener *l)
{
    PostgresPollingStatusType st = PQconnectPoll(l->pg);

    /* libpq may have moved to another socket (next host, SSL or GSS
     * fallback): follow it, even when the fd number was reused */
    if (l->sock.moved(l->pg)) {
        l->sock.release();

        if (!l->sock.wrap(l->pg, &l->log, l, on_event)) {
            fail(l, "cannot watch the socket");
            return;
        }
    }

    switch (st) {
    case PGRES_POLLING_FAILED:
        fail(l, said(l, PQerrorMessage(l->pg)));
        return;

    case PGRES_POLLING_WRITING:
        if (!l->sock.want_write(true)) {
            fail(l, "cannot watch the socket");
        }
        return;

    case PGRES_POLLING_READING:
        if (!l->sock.want_write(false)) {
            fail(l, "cannot watch the socket");
        }
        return;

    case PGRES_POLLING_OK:
        break;

    default:
        return;
    }

    set_state(l, State::Subscribing, "listener: subscribing");
    send_query(l, l->listen_sql.c_str(), Query::Listen);
}

void drive(Listener *l, ngx_event_t *ev)
{
    if (l->state == State::Connecting) {
        connecting(l);
        return;
    }

    if (ev->write && l->flushing && !flush_out(l)) {
        return;
    }

    consume(l);
}

/* Called by nginx: nothing may escape. */
void on_event(ngx_event_t *ev)
{
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    auto *l = static_cast<Listener *>(c->data);

    bool ok = guarded(&l->log, "revocation listener", [&] {
        if (l != self || l->pg == nullptr) {
            return;
        }
        drive(l, ev);
    });

    if (!ok && self && self->pg) {
        fail(self, "internal error");
    }
}

void connect(Listener *l)
{
    l->started = ngx_current_msec;
    l->pg = PQconnectStartParams(l->keywords.data(), l->values.data(), 0);

    if (l->pg == nullptr) {
        fail(l, "out of memory");
        return;
    }

    if (PQstatus(l->pg) == CONNECTION_BAD) {
        fail(l, said(l, PQerrorMessage(l->pg)));
        return;
    }

    /* server notices (a FATAL as the backend is terminated): the error
     * log at info, never stderr */
    PQsetNoticeProcessor(
        l->pg,
        [](void *arg, const char *message) {
            auto *ls = static_cast<Listener *>(arg);
            try {
                ngx_log_error(NGX_LOG_INFO, &ls->log, 0,
                              "session_cache: revocation listener: postgres "
                              "says: %s",
                              said(ls, message).c_str());
            } catch (...) {
                /* a C callback: nothing may escape */
            }
        },
        l);

    if (PQsetnonblocking(l->pg, 1) != 0
        || !l->sock.wrap(l->pg, &l->log, l, on_event))
    {
        fail(l, "cannot watch the socket");
        return;
    }

    set_state(l, State::Connecting, "listener: connecting to postgres");
}

/* Every second, in every worker. */
void tick(Listener *l)
{
    ngx_pid_t me = ngx_pid;

    again(l);

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        if (l->holder) {
            close_connection(l);
            slot(l).release(me, [l] {
                l->sh->state = static_cast<ngx_atomic_uint_t>(State::Closed);
            });
            l->holder = false;
        }
        return;
    }

    std::int64_t    previous = 0;
    l1::LeaseAction a = slot(l).step(me, &previous, [l](std::int64_t) {
        l->sh->state = static_cast<ngx_atomic_uint_t>(State::Closed);
    });

    if (a == l1::LeaseAction::Wait) {
        if (l->holder) {
            /* taken over (the lease was not renewed in time) */
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, &l->log, 0,
                           "session_cache: revocation listener lease lost");
            close_connection(l);
            l->holder = false;
        }
        ngx_add_timer(&l->tick, revocation::kHeartbeatInterval);
        return;
    }

    if (a == l1::LeaseAction::Take) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &l->log, 0,
                       "session_cache: revocation listener lease taken "
                       "(from pid %L)",
                       previous);
        close_connection(l);
        /* taken from another worker (it died, or a reload retired it):
         * what it may have missed is unknown */
        l->lost = previous != 0;
        l->next_connect = 0;
        l->failures = 0;
    }

    l->holder = true;
    ngx_msec_t now = ngx_current_msec;

    switch (l->state) {
    case State::Closed:
        if (now >= l->next_connect) {
            connect(l);
        }
        break;

    case State::Connecting:
    case State::Subscribing:
        if (now - l->started > l->smcf->pg.backend.connect_timeout
                                   + revocation::kHeartbeatTimeout)
        {
            fail(l, "connect timed out");
        }
        break;

    case State::Listening:
        if (l->out != Query::None) {
            if (now - l->sent >= revocation::kHeartbeatTimeout) {
                fail(l, "heartbeat unanswered");
            }
            break;
        }
        /* an empty query: the cheapest round trip there is */
        send_query(l, "", Query::Heartbeat);
        break;
    }

    ngx_add_timer(&l->tick, revocation::kHeartbeatInterval);
}

void on_tick(ngx_event_t *ev)
{
    guarded(ev->log, "revocation listener", [] {
        if (self != nullptr) {
            tick(self);
        }
    });

    l1::keep_ticking(self ? &self->tick : nullptr,
                     revocation::kHeartbeatInterval);
}

/* The pool's keywords with the listener's own: application_name, and
 * read-write (NOTIFY is delivered on the primary only), whatever the
 * conninfo says. */
void conninfo(Listener *l)
{
    const ngx_http_session_cache_pg_conf_t *pcf = &l->smcf->pg;

    for (const char **k = pcf->keywords, **v = pcf->values; k && *k; k++, v++) {
        l->conninfo.set(*k, *v);

        if (std::strcmp(*k, "target_session_attrs") == 0
            || std::strcmp(*k, "application_name") == 0)
        {
            continue;
        }
        l->keywords.push_back(*k);
        l->values.push_back(*v);
    }

    l->keywords.push_back("target_session_attrs");
    l->values.push_back("read-write");
    l->keywords.push_back("application_name");
    l->values.push_back(kApplicationName);
    l->keywords.push_back(nullptr);
    l->values.push_back(nullptr);
}

/* In the master, for each cycle; the zone and its counters are carried
 * over a reload, its workers take the lease over. */
ngx_int_t init_zone(ngx_shm_zone_t *shm_zone, void *old)
{
    auto *rc =
        static_cast<ngx_http_session_cache_revocation_conf_t *>(shm_zone->data);
    auto *pool = reinterpret_cast<ngx_slab_pool_t *>(shm_zone->shm.addr);

    if (old != nullptr || shm_zone->shm.exists) {
        rc->shared =
            old ? static_cast<ngx_http_session_cache_revocation_conf_t *>(old)
                      ->shared
                : pool->data;
        auto *s = static_cast<Shared *>(rc->shared);
        rc->generation = l1::lease_generation(&s->generations, false);
        return NGX_OK;
    }

    auto *s = static_cast<Shared *>(ngx_slab_calloc(pool, sizeof(Shared)));
    if (s == nullptr) {
        return NGX_ERROR;
    }

    rc->generation = l1::lease_generation(&s->generations, true);
    pool->data = s;
    rc->shared = s;

    return NGX_OK;
}

} // namespace

void revocation_start(ngx_cycle_t                              *cycle,
                      const ngx_http_session_cache_main_conf_t *smcf)
{
    const ngx_http_session_cache_revocation_conf_t *rc = &smcf->revocation;

    if (rc->enabled != 1 || rc->zone == nullptr || rc->shared == nullptr) {
        return;
    }

    zone_conf = rc;

    /* workers only: not the cache manager or loader */
    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE)
    {
        return;
    }

    auto *l = new Listener();

    try {
        l->smcf = smcf;
        l->log = *cycle->log;
        l->log.action = const_cast<char *>("listening for revocations");
        l->shpool = reinterpret_cast<ngx_slab_pool_t *>(rc->zone->shm.addr);
        l->sh = static_cast<Shared *>(rc->shared);
        l->listen_sql = "LISTEN \"" + std::string(view(rc->channel)) + "\"";
        l->prefix = std::string(view(smcf->key_prefix));
        l->again_delay = smcf->pg.backend.timeout + smcf->redis.backend.timeout;
        conninfo(l);
    } catch (...) {
        delete l;
        throw;
    }

    l->tick.handler = on_tick;
    l->tick.log = cycle->log;
    l->tick.data = l;
    l->tick.cancelable = 1;
    self = l;

    /* the first tick soon, not at once: init_process is no place for I/O */
    ngx_add_timer(&l->tick, 1);
}

void revocation_stop()
{
    Listener *l = self;

    zone_conf = nullptr;

    if (l == nullptr) {
        return;
    }

    if (l->tick.timer_set) {
        ngx_del_timer(&l->tick);
    }

    close_connection(l);

    if (l->holder) {
        slot(l).release(ngx_pid, [l] {
            l->sh->state = static_cast<ngx_atomic_uint_t>(State::Closed);
        });
    }

    self = nullptr;
    delete l;
}

bool revoked_since(std::string_view token, ngx_msec_t asked_at)
{
    const auto *rc = zone_conf;

    if (rc == nullptr || rc->shared == nullptr) {
        return false; /* no revocation listener: nothing is known */
    }

    auto *sh = static_cast<Shared *>(rc->shared);

    ngx_msec_t all = __atomic_load_n(&sh->revoked_all_at, __ATOMIC_ACQUIRE);
    ngx_msec_t one = __atomic_load_n(
        &sh->revoked_at[l1::race_bucket(l1::hash(token))], __ATOMIC_ACQUIRE);

    /* at or after: a revocation in the same millisecond as the query
     * counts (0: never revoked) */
    return (all != 0 && static_cast<ngx_msec_int_t>(all - asked_at) >= 0)
           || (one != 0 && static_cast<ngx_msec_int_t>(one - asked_at) >= 0);
}

RevocationFigures revocation_figures()
{
    RevocationFigures f;
    const auto       *rc = zone_conf;

    if (rc == nullptr || rc->zone == nullptr || rc->shared == nullptr) {
        return f;
    }

    auto *shpool = reinterpret_cast<ngx_slab_pool_t *>(rc->zone->shm.addr);
    auto *sh = static_cast<Shared *>(rc->shared);

    f.configured = true;
    f.channel = std::string(view(rc->channel));

    ngx_shmtx_lock(&shpool->mutex);
    State      s = static_cast<State>(sh->state);
    ngx_msec_t last_ok = sh->last_ok;
    f.listener = sh->lease.owner;
    f.reason.assign(sh->reason, strnlen(sh->reason, sizeof(sh->reason)));
    ngx_shmtx_unlock(&shpool->mutex);

    f.notifications = __atomic_load_n(&sh->notifications, __ATOMIC_RELAXED);
    f.revoked = __atomic_load_n(&sh->revoked, __ATOMIC_RELAXED);
    f.flushes = __atomic_load_n(&sh->flushes, __ATOMIC_RELAXED);
    f.ignored = __atomic_load_n(&sh->ignored, __ATOMIC_RELAXED);
    f.reconnects = __atomic_load_n(&sh->reconnects, __ATOMIC_RELAXED);

    if (f.listener == 0) {
        s = State::Closed;
    }

    /* listening: and its last heartbeat answered within the timeout */
    ngx_msec_t now = ngx_current_msec;
    f.listening = s == State::Listening
                  && (now < last_ok
                      || now - last_ok < revocation::kHeartbeatTimeout
                                             + revocation::kHeartbeatInterval);
    f.state = state_name(s);

    if (!f.listening && f.reason.empty()) {
        f.reason = f.listener == 0 ? "no worker holds the listener yet"
                                   : "the listener's heartbeat is late";
    }
    if (f.listening) {
        f.reason.clear();
    }

    return f;
}

} // namespace session_cache

extern "C" const char *
ngx_http_session_cache_channel_problem(ngx_str_t *channel)
{
    return session_cache::revocation::channel_problem(
        session_cache::view(*channel));
}

extern "C" char *
ngx_http_session_cache_revocation_zone(ngx_conf_t                         *cf,
                                       ngx_http_session_cache_main_conf_t *smcf)
{
    static ngx_str_t name = ngx_string("session_cache_revocation");

    ngx_http_session_cache_revocation_conf_t *rc = &smcf->revocation;

    if (rc->enabled != 1) {
        return NGX_CONF_OK;
    }

    /* the lease, the state, five counters and the revocation times by
     * bucket, with room for the slab allocator's own pages */
    rc->zone = ngx_shared_memory_add(
        cf, &name,
        ngx_align(sizeof(session_cache::Shared), ngx_pagesize)
            + 8 * ngx_pagesize,
        &ngx_http_session_cache_module);
    if (rc->zone == nullptr) {
        return static_cast<char *>(NGX_CONF_ERROR);
    }

    if (rc->zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "session_cache_revocation: zone is duplicate");
        return static_cast<char *>(NGX_CONF_ERROR);
    }

    rc->zone->init = session_cache::init_zone;
    rc->zone->data = rc;

    return NGX_CONF_OK;
}
