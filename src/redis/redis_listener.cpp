/*
 * The invalidation listener: see redis_listener.h.
 *
 * States of the connection, one dispatch (on_event) and one timer
 * (on_tick, every second, in every worker):
 *
 *   Closed --tick, lease held--> Connecting --writable--> Handshake
 *   Handshake: AUTH/SELECT (+OK each), CLIENT ID (:id), then CLIENT
 *              TRACKING (+OK) and SUBSCRIBE (the confirmation) --> Armed
 *   Armed: PING each tick; ["pong", ""] renews the heartbeat;
 *          ["message", channel, [keys]] drops keys; [.., nil] flushes
 *   any error, close, refusal or silence --> Closed (retried on a tick)
 *
 * Replies are parsed by hiredis's own reader (the reply objects it builds
 * are this connection's only allocation per message): an invalidation may
 * name thousands of keys in one array, far beyond the data connections'
 * ReplyReader bounds. Its own bound: kMaxBuffered bytes not yet parsed.
 */
#include "redis/redis_listener.h"

#include <deque>
#include <string>
#include <string_view>

#include <hiredis/hiredis.h>

#include "guarded.h"
#include "l1/l1_zone.h"
#include "l1/lease_slot.h"
#include "redis/resp.h"
#include "redis/sentinel.h"

namespace session_cache {

namespace {

enum class State { Closed, Connecting, Handshake, Armed };

/* what the next reply answers, in order */
enum class Expect { Handshake, ClientId, Tracking, Subscribe, Pong };

constexpr std::size_t kMaxBuffered = 64 * 1024 * 1024;
constexpr std::size_t kReadChunk = 16 * 1024;
constexpr std::size_t kReadBudget = 1024 * 1024;
constexpr char        kChannel[] = "__redis__:invalidate";

/* after a refusal (ACL, managed Redis), ask again this seldom */
constexpr ngx_msec_t kRefusedRetry = 10000;

struct Listener {
    const ngx_http_session_cache_main_conf_t *smcf = nullptr;
    ngx_log_t                                *log = nullptr;
    ngx_event_t                               tick{};
    ngx_peer_connection_t                     peer{};
    State                                     state = State::Closed;
    redisReader                              *reader = nullptr;
    std::string                               out;
    std::deque<Expect>                        expect;
    bool                                      holder = false;
    bool                                      lost = false; /* was armed */
    bool                                      ping_out = false;
    ngx_msec_t                                ping_sent = 0;
    ngx_msec_t                                started = 0;
    ngx_msec_t                                next_connect = 0;
    ngx_uint_t  failures = 0; /* connections lost since last armed */
    std::string refused;      /* logged once */
};

Listener *self;

const char *state_name(State s)
{
    switch (s) {
    case State::Closed:
        return "closed";
    case State::Connecting:
        return "connecting";
    case State::Handshake:
        return "handshake";
    case State::Armed:
        break;
    }
    return "armed";
}

void set_state(Listener *l, State s)
{
    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, l->log, 0,
                   "session_cache: l1 listener %s -> %s", state_name(l->state),
                   state_name(s));
    l->state = s;
}

void close_connection(Listener *l)
{
    if (l->peer.connection != nullptr) {
        ngx_close_connection(l->peer.connection);
        l->peer.connection = nullptr;
    }

    if (l->reader != nullptr) {
        redisReaderFree(l->reader);
        l->reader = nullptr;
    }

    l->out.clear();
    l->expect.clear();
    l->ping_out = false;

    if (l->state != State::Closed) {
        set_state(l, State::Closed);
    }
}

/* The connection is over: why, and whether L1 must go. */
void fail(Listener *l, const char *why, l1::FlushReason reason, bool logged)
{
    bool was_armed = l->state == State::Armed;

    if (was_armed) {
        l1::set_armed(ngx_pid, false);
        l1::flush(reason, l->log);
        l->lost = true;
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, l->log, 0,
                       "session_cache: l1 listener disarmed: %s", why);
        if (!logged) {
            ngx_log_error(NGX_LOG_WARN, l->log, 0,
                          "session_cache: l1 listener lost (%s), "
                          "L1 dropped and bypassed until it is back",
                          why);
        }
    }

    l1::set_reason(std::string("listener: ") + why);
    close_connection(l);

    /* again in 1 s, backing off to 8 s while Redis stays away: a
     * listener that cannot connect is not worth a log line a second */
    ngx_msec_t delay = l1::kPingInterval << ngx_min(l->failures, 3);
    l->failures++;
    l->next_connect = ngx_current_msec + delay;
}

/* Redis refused tracking: L1 stays unused; said once at error. */
void refuse(Listener *l, const char *step, std::string_view text)
{
    std::string why = std::string(step) + " refused by redis: "
                      + std::string(redis_error_code(text));

    if (why != l->refused) {
        ngx_log_error(NGX_LOG_ERR, l->log, 0,
                      "session_cache: l1 tracking unavailable, L1 unused: %s",
                      why.c_str());
        l->refused = why;
    }

    fail(l, why.c_str(), l1::FlushReason::ListenerLost, true);
    l->next_connect = ngx_current_msec + kRefusedRetry;
}

void post_write(Listener *l)
{
    if (l->peer.connection != nullptr) {
        ngx_post_event(l->peer.connection->write, &ngx_posted_events);
    }
}

void send_command(Listener *l, std::initializer_list<std::string_view> args,
                  Expect e)
{
    resp_append(&l->out, args);
    l->expect.push_back(e);
    post_write(l);
}

bool is(const redisReply *r, std::string_view s)
{
    return r != nullptr
           && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)
           && std::string_view(r->str, r->len) == s;
}

/* ["message", channel, keys | nil], ["pong", ""], the SUBSCRIBE
 * confirmation; false: the connection is to be dropped (done). */
bool pushed(Listener *l, const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2) {
        return false;
    }

    const redisReply *kind = r->element[0];

    if (is(kind, "pong")) {
        if (!l->expect.empty() && l->expect.front() == Expect::Pong) {
            l->expect.pop_front();
        }
        l->ping_out = false;
        l1::pong(ngx_pid);
        return true;
    }

    if (!is(kind, "message") || r->elements != 3
        || !is(r->element[1], kChannel)) {
        return false;
    }

    const redisReply *keys = r->element[2];

    if (keys->type == REDIS_REPLY_NIL) {
        /* FLUSHALL, FLUSHDB */
        l1::flush(l1::FlushReason::Flush, l->log);
        return true;
    }

    if (keys->type != REDIS_REPLY_ARRAY) {
        return false;
    }

    std::string_view prefix = view(l->smcf->key_prefix);

    for (std::size_t i = 0; i < keys->elements; i++) {
        const redisReply *k = keys->element[i];

        if (k->type != REDIS_REPLY_STRING) {
            continue;
        }

        std::string_view key(k->str, k->len);

        if (key.substr(0, prefix.size()) == prefix) {
            l1::invalidate(key.substr(prefix.size()));
        }
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, l->log, 0,
                   "session_cache: l1 invalidation of %uz keys",
                   keys->elements);
    return true;
}

void arm(Listener *l)
{
    set_state(l, State::Armed);

    if (l->lost) {
        /* whatever passed while it was away is unknown */
        l1::flush(l1::FlushReason::Reconnect, l->log);
        l->lost = false;
    }

    l1::set_reason("");
    l1::set_armed(ngx_pid, true);
    l->failures = 0;
    l->refused.clear();

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, l->log, 0,
                   "session_cache: l1 listener armed");
}

/* One reply; false: the connection is gone. */
bool reply(Listener *l, const redisReply *r)
{
    if (l->state == State::Armed) {
        if (r->type == REDIS_REPLY_ERROR) {
            fail(l, "error reply", l1::FlushReason::ListenerLost, false);
            return false;
        }
        if (!pushed(l, r)) {
            fail(l, "unexpected message", l1::FlushReason::ListenerLost, false);
            return false;
        }
        return true;
    }

    if (l->expect.empty()) {
        fail(l, "unexpected reply", l1::FlushReason::ListenerLost, false);
        return false;
    }

    Expect e = l->expect.front();
    l->expect.pop_front();
    std::string_view text = r->type == REDIS_REPLY_ERROR
                                ? std::string_view(r->str, r->len)
                                : std::string_view();

    switch (e) {
    case Expect::Handshake:
        if (r->type == REDIS_REPLY_ERROR) {
            refuse(l, "AUTH/SELECT", text);
            return false;
        }
        return true;

    case Expect::ClientId: {
        if (r->type != REDIS_REPLY_INTEGER) {
            refuse(l, "CLIENT ID", text);
            return false;
        }

        std::string id = std::to_string(r->integer);
        send_command(l,
                     {"CLIENT", "TRACKING", "on", "REDIRECT", id, "BCAST",
                      "PREFIX", view(l->smcf->key_prefix)},
                     Expect::Tracking);
        send_command(l, {"SUBSCRIBE", kChannel}, Expect::Subscribe);
        return true;
    }

    case Expect::Tracking:
        if (r->type == REDIS_REPLY_ERROR) {
            refuse(l, "CLIENT TRACKING", text);
            return false;
        }
        return true;

    case Expect::Subscribe:
        if (r->type == REDIS_REPLY_ERROR) {
            refuse(l, "SUBSCRIBE", text);
            return false;
        }
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 3
            || !is(r->element[0], "subscribe"))
        {
            fail(l, "unexpected SUBSCRIBE reply", l1::FlushReason::ListenerLost,
                 false);
            return false;
        }
        arm(l);
        return true;

    case Expect::Pong:
        break;
    }

    fail(l, "unexpected reply", l1::FlushReason::ListenerLost, false);
    return false;
}

void do_read(Listener *l)
{
    ngx_connection_t *c = l->peer.connection;
    char              buf[kReadChunk];
    std::size_t       budget = kReadBudget;

    while (budget > 0) {
        ssize_t n = c->recv(c, reinterpret_cast<u_char *>(buf), sizeof(buf));

        if (n == NGX_AGAIN) {
            if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
                fail(l, "cannot wait for the socket",
                     l1::FlushReason::ListenerLost, false);
            }
            return;
        }

        if (n == 0 || n == NGX_ERROR) {
            fail(l, n == 0 ? "connection closed by redis" : "recv failed",
                 l1::FlushReason::ListenerLost, false);
            return;
        }

        budget -= ngx_min(budget, static_cast<std::size_t>(n));

        if (redisReaderFeed(l->reader, buf, n) != REDIS_OK
            || l->reader->len - l->reader->pos > kMaxBuffered)
        {
            fail(l, "reply too large", l1::FlushReason::ListenerLost, false);
            return;
        }

        for (;;) {
            void *obj = nullptr;

            if (redisReaderGetReply(l->reader, &obj) != REDIS_OK) {
                fail(l, "protocol error", l1::FlushReason::ListenerLost, false);
                return;
            }

            if (obj == nullptr) {
                break;
            }

            bool alive = reply(l, static_cast<redisReply *>(obj));
            freeReplyObject(obj);

            if (!alive) {
                return;
            }
        }
    }

    ngx_post_event(c->read, &ngx_posted_next_events);
}

void do_write(Listener *l)
{
    ngx_connection_t *c = l->peer.connection;

    while (!l->out.empty()) {
        ssize_t n = c->send(c, reinterpret_cast<u_char *>(l->out.data()),
                            l->out.size());

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR) {
            fail(l, "send failed", l1::FlushReason::ListenerLost, false);
            return;
        }

        l->out.erase(0, n);
    }

    if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
        fail(l, "cannot wait for the socket", l1::FlushReason::ListenerLost,
             false);
    }
}

/* The socket is writable for the first time: connected, or refused. */
bool connected(Listener *l)
{
    ngx_connection_t *c = l->peer.connection;
    int               err = 0;
    socklen_t         len = sizeof(err);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1) {
        err = ngx_socket_errno;
    }

    if (err != 0) {
        /* said once until the listener is armed again */
        ngx_uint_t level = l->failures ? NGX_LOG_DEBUG : NGX_LOG_ERR;
        ngx_log_error(level, l->log, err,
                      "session_cache: l1 listener: connect() to redis failed");
        fail(l, "connect failed", l1::FlushReason::ListenerLost, true);
        return false;
    }

    set_state(l, State::Handshake);

    /* the handshake: AUTH and SELECT, as the pool sends them */
    std::string_view hs = view(l->smcf->redis.handshake);

    while (!hs.empty()) {
        std::size_t size = 0;
        resp_first_command(hs, &size);
        if (size == 0) {
            break;
        }
        l->expect.push_back(Expect::Handshake);
        hs.remove_prefix(size);
    }

    l->out.append(reinterpret_cast<const char *>(l->smcf->redis.handshake.data),
                  l->smcf->redis.handshake.len);
    resp_append(&l->out, {"CLIENT", "ID"});
    l->expect.push_back(Expect::ClientId);
    return true;
}

void on_event(ngx_event_t *ev)
{
    Listener *l = self;

    bool ok = guarded(ngx_cycle->log, "l1 listener", [&] {
        if (l == nullptr || l->peer.connection == nullptr) {
            return;
        }

        if (l->state == State::Connecting) {
            if (!ev->write) {
                return;
            }
            if (!connected(l)) {
                return;
            }
        }

        if (ev->write) {
            do_write(l);
        } else {
            do_read(l);
        }
    });

    if (!ok && self && self->peer.connection) {
        fail(self, "internal error", l1::FlushReason::ListenerLost, true);
    }
}

void connect(Listener *l)
{
    const ngx_http_session_cache_redis_conf_t *rcf = &l->smcf->redis;

    /* sentinel://: the master the pool uses, once one is known */
    const ngx_addr_t *addr =
        rcf->sentinel != nullptr ? sentinel::master() : &rcf->addrs[0];

    if (addr == nullptr) {
        l1::set_reason("listener: no redis master known yet (sentinel)");
        return;
    }

    l->reader = redisReaderCreate();
    if (l->reader == nullptr) {
        return;
    }

    ngx_peer_connection_t *pc = &l->peer;

    ngx_memzero(pc, sizeof(*pc));
    pc->sockaddr = addr->sockaddr;
    pc->socklen = addr->socklen;
    pc->name = const_cast<ngx_str_t *>(&addr->name);
    pc->get = ngx_event_get_peer;
    pc->log = l->log;
    pc->log_error = NGX_ERROR_ERR;

    set_state(l, State::Connecting);
    l->started = ngx_current_msec;
    l1::set_reason("listener: connecting to redis");

    ngx_int_t rv = ngx_event_connect_peer(pc);

    if (rv != NGX_OK && rv != NGX_AGAIN) {
        pc->connection = nullptr;
        fail(l, "connect failed", l1::FlushReason::ListenerLost, true);
        return;
    }

    ngx_connection_t *c = pc->connection;
    c->data = l;
    c->read->handler = on_event;
    c->write->handler = on_event;
    c->log = l->log;
    c->read->log = l->log;
    c->write->log = l->log;

    if (rv == NGX_OK) {
        ngx_post_event(c->write, &ngx_posted_events);
    }
}

/* Every second, in every worker. */
void tick(Listener *l)
{
    ngx_pid_t me = ngx_pid;

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        if (l->holder) {
            close_connection(l);
            l1::lease_release(me);
            l->holder = false;
        }
        return;
    }

    l1::LeaseAction a = l1::lease_tick(me, l->log);

    if (a == l1::LeaseAction::Wait) {
        if (l->holder) {
            /* taken over (the lease was not renewed in time) */
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, l->log, 0,
                           "session_cache: l1 listener lease lost");
            close_connection(l);
            l->holder = false;
        }
        ngx_add_timer(&l->tick, l1::kPingInterval);
        return;
    }

    if (a == l1::LeaseAction::Take) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, l->log, 0,
                       "session_cache: l1 listener takeover: this worker "
                       "listens");
        close_connection(l);
        l->lost = false;
        l->next_connect = 0;
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
    case State::Handshake:
        if (now - l->started
            > l->smcf->redis.backend.connect_timeout + l1::kHeartbeatTimeout)
        {
            fail(l, "handshake timed out", l1::FlushReason::ListenerLost,
                 false);
        }
        break;

    case State::Armed:
        if (l->ping_out && now - l->ping_sent >= l1::kHeartbeatTimeout) {
            ngx_log_error(NGX_LOG_WARN, l->log, 0,
                          "session_cache: l1 listener: PING unanswered for "
                          "%Mms, L1 dropped",
                          now - l->ping_sent);
            fail(l, "PING unanswered", l1::FlushReason::Heartbeat, true);
            break;
        }
        if (!l->ping_out) {
            send_command(l, {"PING"}, Expect::Pong);
            l->ping_out = true;
            l->ping_sent = now;
        }
        break;
    }

    ngx_add_timer(&l->tick, l1::kPingInterval);
}

void on_tick(ngx_event_t *ev)
{
    guarded(ev->log, "l1 listener", [] {
        if (self != nullptr) {
            tick(self);
        }
    });

    l1::keep_ticking(self ? &self->tick : nullptr, l1::kPingInterval);
}

/*
 * sentinel://: another master. The listener leaves the old one at once
 * and listens on the new one (L1 is disarmed until then, and the
 * sentinel code drops it: topology).
 */
void master_changed(void *data)
{
    auto *l = static_cast<Listener *>(data);

    if (!l->holder) {
        return;
    }

    if (l->state == State::Armed) {
        l1::set_armed(ngx_pid, false);
    }

    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, l->log, 0,
                   "session_cache: l1 listener follows the new redis master");

    close_connection(l);
    l->lost = false; /* the topology flush covers what passed */
    l->failures = 0;
    l->next_connect = 0;
    connect(l);
}

} // namespace

void listener_start(ngx_cycle_t                              *cycle,
                    const ngx_http_session_cache_main_conf_t *smcf)
{
    if (smcf->l1.enabled != 1 || smcf->l1.tracking != 1
        || !smcf->redis.backend.configured
        || (smcf->redis.naddrs == 0 && smcf->redis.sentinel == nullptr))
    {
        return;
    }

    /* workers only: not the cache manager or loader */
    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE)
    {
        return;
    }

    self = new Listener();
    self->smcf = smcf;
    self->log = cycle->log;
    self->tick.handler = on_tick;
    self->tick.log = cycle->log;
    self->tick.data = self;
    self->tick.cancelable = 1;

    l1::set_reason("listener: not started yet");
    sentinel::observe(master_changed, self);

    /* the first tick soon, not at once: init_process is no place for I/O */
    ngx_add_timer(&self->tick, 1);
}

void listener_stop()
{
    Listener *l = self;

    if (l == nullptr) {
        return;
    }

    if (l->tick.timer_set) {
        ngx_del_timer(&l->tick);
    }

    if (l->holder) {
        l1::lease_release(ngx_pid);
    }

    sentinel::unobserve(l);
    close_connection(l);
    self = nullptr;
    delete l;
}

} // namespace session_cache
