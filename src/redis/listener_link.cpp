/*
 * The L1 invalidation listener's links and lease: see listener_link.h.
 *
 * States of a link, one dispatch (Link::on_event) and its listener's one
 * timer (on_tick, every second, in every worker):
 *
 *   Closed --tick, lease held--> Connecting --writable--> Handshake
 *   (with TLS: Connecting --writable--> Tls --handshake, checked-->
 *   Handshake; nginx's SSL layer holds the events meanwhile: on_tls)
 *   Handshake: AUTH/SELECT (+OK each), CLIENT ID (:id), then CLIENT
 *              TRACKING (+OK) and SUBSCRIBE (the confirmation) --> Armed
 *   Armed: PING each tick; ["pong", ""] renews the heartbeat once every
 *          link has answered; ["message", channel, [keys]] drops keys;
 *          [.., nil] flushes
 *   any error, close, refusal or silence --> Closed (retried on a tick)
 *
 * Replies are parsed by hiredis's own reader (the reply objects it builds
 * are a link's only allocation per message): an invalidation may name
 * thousands of keys in one array, far beyond the data connections'
 * ReplyReader bounds. Its own bound: kMaxBuffered bytes not yet parsed.
 *
 * The deadline of Connecting applies to Tls and Handshake alike: a server
 * that accepts TCP and never answers TLS fails the link at it, on a tick.
 */
#include "redis/listener_link.h"

#include "guarded.h"
#include "l1/l1_zone.h"
#include "l1/lease_slot.h"
#include "redis/read_budget.h"
#include "redis/redis_tls.h"
#include "redis/resp.h"

namespace session_cache::listener {

namespace {

constexpr std::size_t kMaxBuffered = 64 * 1024 * 1024;
constexpr std::size_t kReadChunk = 16 * 1024;
constexpr std::size_t kReadBudget = 1024 * 1024;
constexpr char        kChannel[] = "__redis__:invalidate";

/* after a refusal (ACL, managed Redis), ask again this seldom */
constexpr ngx_msec_t kRefusedRetry = 10000;

const char *state_name(State s)
{
    switch (s) {
    case State::Closed:
        return "closed";
    case State::Connecting:
        return "connecting";
    case State::Tls:
        return "tls";
    case State::Handshake:
        return "handshake";
    case State::Armed:
        break;
    }
    return "armed";
}

bool is(const redisReply *r, std::string_view s)
{
    return r != nullptr
           && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)
           && std::string_view(r->str, r->len) == s;
}

/* word and the node for a cluster's link, "" for the one server */
std::string named(const char *word, const std::string &node)
{
    return node.empty() ? std::string() : std::string(word) + node;
}

void on_tick(ngx_event_t *ev)
{
    auto *self = static_cast<Listener *>(ev->data);

    guarded(ev->log, "l1 listener", [self] {
        if (self != nullptr) {
            self->tick();
        }
    });

    l1::keep_ticking(self ? ev : nullptr, l1::kPingInterval);
}

} // namespace

/* ---- a link ------------------------------------------------------------ */

void Link::set_state(State s)
{
    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, owner->log, 0,
                   "session_cache: l1 listener%s %s -> %s",
                   named(" ", node).c_str(), state_name(state), state_name(s));
    state = s;
}

void Link::close()
{
    /* the SSL object and the pool begin() made go too */
    redis_tls::close(peer.connection);
    peer.connection = nullptr;

    if (reader != nullptr) {
        redisReaderFree(reader);
        reader = nullptr;
    }

    out.clear();
    expect.clear();
    ping_out = false;

    if (state != State::Closed) {
        set_state(State::Closed);
    }
}

void Link::fail(const char *why, l1::FlushReason reason, bool logged)
{
    owner->disarm(node.empty() ? std::string(why) : node + ": " + why, reason,
                  logged);
    close();

    /* again in 1 s, backing off to 8 s while Redis stays away: a
     * listener that cannot connect is not worth a log line a second */
    ngx_msec_t delay = l1::kPingInterval << ngx_min(failures, 3);
    failures++;
    next_connect = ngx_current_msec + delay;
}

/* Redis refused tracking: L1 stays unused; said once at error. */
void Link::refuse(const char *step, std::string_view text)
{
    std::string why = std::string(step) + " refused by redis: "
                      + std::string(redis_error_code(text));

    if (why != owner->refused) {
        ngx_log_error(NGX_LOG_ERR, owner->log, 0,
                      "session_cache: l1 tracking unavailable%s, L1 unused: "
                      "%s",
                      named(" on ", node).c_str(), why.c_str());
        owner->refused = why;
    }

    fail(why.c_str(), l1::FlushReason::ListenerLost, true);
    next_connect = ngx_current_msec + kRefusedRetry;
}

void Link::send_command(std::initializer_list<std::string_view> args, Expect e)
{
    resp_append(&out, args);
    expect.push_back(e);

    if (peer.connection != nullptr) {
        ngx_post_event(peer.connection->write, &ngx_posted_events);
    }
}

/* ["message", channel, keys | nil], ["pong", ""]; false: the link is to
 * be dropped. */
bool Link::pushed(const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2) {
        return false;
    }

    const redisReply *kind = r->element[0];

    if (is(kind, "pong")) {
        if (!expect.empty() && expect.front() == Expect::Pong) {
            expect.pop_front();
        }
        ping_out = false;
        owner->ponged();
        return true;
    }

    if (!is(kind, "message") || r->elements != 3
        || !is(r->element[1], kChannel)) {
        return false;
    }

    const redisReply *keys = r->element[2];

    if (keys->type == REDIS_REPLY_NIL) {
        /* FLUSHALL, FLUSHDB (on that node) */
        l1::flush(l1::FlushReason::Flush, owner->log);
        return true;
    }

    if (keys->type != REDIS_REPLY_ARRAY) {
        return false;
    }

    std::string_view prefix = view(owner->smcf->key_prefix);

    for (std::size_t i = 0; i < keys->elements; i++) {
        const redisReply *key = keys->element[i];

        if (key->type != REDIS_REPLY_STRING) {
            continue;
        }

        std::string_view name(key->str, key->len);

        if (name.substr(0, prefix.size()) != prefix) {
            continue;
        }

        std::string_view token = name.substr(prefix.size());

        /* the health probe's key (health_handler.cpp), SET by every
         * health document: dropped like any key, not counted, so that
         * l1.invalidations counts what the application invalidated */
        bool probe = token.substr(0, 13) == "health-probe:"
                     || token.substr(0, 15) == "{health-probe}:";

        l1::invalidate(token, !probe);
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, owner->log, 0,
                   "session_cache: l1 invalidation of %uz keys%s",
                   keys->elements, named(" from ", node).c_str());
    return true;
}

/* One reply; false: the link is gone. */
bool Link::reply(const redisReply *r)
{
    if (state == State::Armed) {
        if (r->type == REDIS_REPLY_ERROR) {
            fail("error reply", l1::FlushReason::ListenerLost, false);
            return false;
        }
        if (!pushed(r)) {
            fail("unexpected message", l1::FlushReason::ListenerLost, false);
            return false;
        }
        return true;
    }

    if (expect.empty()) {
        fail("unexpected reply", l1::FlushReason::ListenerLost, false);
        return false;
    }

    Expect e = expect.front();
    expect.pop_front();
    std::string_view text = r->type == REDIS_REPLY_ERROR
                                ? std::string_view(r->str, r->len)
                                : std::string_view();

    switch (e) {
    case Expect::Handshake:
        if (r->type == REDIS_REPLY_ERROR) {
            /* a cluster has no SELECT */
            refuse(node.empty() ? "AUTH/SELECT" : "AUTH", text);
            return false;
        }
        return true;

    case Expect::ClientId: {
        if (r->type != REDIS_REPLY_INTEGER) {
            refuse("CLIENT ID", text);
            return false;
        }

        std::string id = std::to_string(r->integer);
        send_command({"CLIENT", "TRACKING", "on", "REDIRECT", id, "BCAST",
                      "PREFIX", view(owner->smcf->key_prefix)},
                     Expect::Tracking);
        send_command({"SUBSCRIBE", kChannel}, Expect::Subscribe);
        return true;
    }

    case Expect::Tracking:
        if (r->type == REDIS_REPLY_ERROR) {
            refuse("CLIENT TRACKING", text);
            return false;
        }
        return true;

    case Expect::Subscribe:
        if (r->type == REDIS_REPLY_ERROR) {
            refuse("SUBSCRIBE", text);
            return false;
        }
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 3
            || !is(r->element[0], "subscribe"))
        {
            fail("unexpected SUBSCRIBE reply", l1::FlushReason::ListenerLost,
                 false);
            return false;
        }
        set_state(State::Armed);
        failures = 0;
        owner->arm_if_all();
        return true;

    case Expect::Pong:
        break;
    }

    fail("unexpected reply", l1::FlushReason::ListenerLost, false);
    return false;
}

void Link::read()
{
    read_budget<kReadChunk>(
        peer.connection, kReadBudget,
        [this](const char *buf, std::size_t n) { return parse(buf, n); },
        [this](const char *why) {
            fail(why, l1::FlushReason::ListenerLost, false);
        });
}

/* Bytes read: the replies they complete; false: the link is gone. */
bool Link::parse(const char *buf, std::size_t n)
{
    if (redisReaderFeed(reader, buf, n) != REDIS_OK
        || reader->len - reader->pos > kMaxBuffered)
    {
        fail("reply too large", l1::FlushReason::ListenerLost, false);
        return false;
    }

    for (;;) {
        void *obj = nullptr;

        if (redisReaderGetReply(reader, &obj) != REDIS_OK) {
            fail("protocol error", l1::FlushReason::ListenerLost, false);
            return false;
        }

        if (obj == nullptr) {
            return true;
        }

        bool alive = reply(static_cast<redisReply *>(obj));
        freeReplyObject(obj);

        if (!alive) {
            return false;
        }
    }
}

void Link::write()
{
    ngx_connection_t *c = peer.connection;

    while (!out.empty()) {
        ssize_t n =
            c->send(c, reinterpret_cast<u_char *>(out.data()), out.size());

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR) {
            fail("send failed", l1::FlushReason::ListenerLost, false);
            return;
        }

        out.erase(0, n);
    }

    if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
        fail("cannot wait for the socket", l1::FlushReason::ListenerLost,
             false);
    }
}

/* The socket is writable for the first time: connected, or refused. */
bool Link::connected()
{
    ngx_connection_t *c = peer.connection;
    int               err = 0;
    socklen_t         len = sizeof(err);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1) {
        err = ngx_socket_errno;
    }

    if (err != 0) {
        /* said once until the link is armed again */
        ngx_uint_t level = failures ? NGX_LOG_DEBUG : NGX_LOG_ERR;
        ngx_log_error(level, owner->log, err,
                      "session_cache: l1 listener: connect() to redis%s "
                      "failed",
                      named(" cluster node ", node).c_str());
        fail("connect failed", l1::FlushReason::ListenerLost, true);
        return false;
    }

#if (NGX_SSL)
    if (owner->smcf->redis.ssl) {
        start_tls();
        return false;
    }
#endif

    start_session();
    return true;
}

#if (NGX_SSL)

/* TCP is up: TLS, as the pool starts it (RedisPool::start_tls). */
void Link::start_tls()
{
    const char *error = nullptr;
    ngx_str_t   name;

    set_state(State::Tls);

    name.data =
        reinterpret_cast<u_char *>(const_cast<char *>(tls_name.c_str()));
    name.len = tls_name.size();

    ngx_int_t rv = redis_tls::handshake(peer.connection, owner->smcf->redis.ssl,
                                        name, owner->log, on_tls, &error);

    if (rv == NGX_ERROR) {
        fail(error, l1::FlushReason::ListenerLost, false);
    } else if (rv == NGX_OK) {
        tls_done();
    }
}

/* nginx's SSL layer calls this when the handshake is over, either way. */
void Link::on_tls(ngx_connection_t *c)
{
    auto *k = static_cast<Link *>(c->data);

    bool ok = guarded(ngx_cycle->log, "l1 listener", [k] { k->tls_done(); });

    if (!ok && k->peer.connection) {
        k->fail("internal error", l1::FlushReason::ListenerLost, true);
    }
}

/* The handshake is over: the certificate and its name checked, the
 * session follows; else the link fails (said once until armed again). */
void Link::tls_done()
{
    ngx_connection_t *c = peer.connection;
    ngx_str_t         name;
    char              text[160];

    c->read->handler = on_event;
    c->write->handler = on_event;

    name.data =
        reinterpret_cast<u_char *>(const_cast<char *>(tls_name.c_str()));
    name.len = tls_name.size();

    const char *error = redis_tls::check(c, name, owner->smcf->redis.tls_verify,
                                         text, sizeof(text));

    if (error != nullptr) {
        ngx_uint_t level = failures ? NGX_LOG_DEBUG : NGX_LOG_ERR;
        ngx_log_error(level, owner->log, 0,
                      "session_cache: l1 listener: TLS with redis%s "
                      "failed: %s",
                      named(" cluster node ", node).c_str(), error);
        fail(error, l1::FlushReason::ListenerLost, true);
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, owner->log, 0,
                   "session_cache: l1 listener%s: TLS established",
                   named(" ", node).c_str());

    start_session();
    write();
}

#endif

/* Connected (and through TLS): the handshake's commands go out. */
void Link::start_session()
{
    set_state(State::Handshake);

    /* the handshake: AUTH and SELECT (ROLE), as the pools send them */
    const ngx_str_t &hs = owner->smcf->redis.handshake;
    std::string_view rest = view(hs);

    while (!rest.empty()) {
        std::size_t size = 0;
        resp_first_command(rest, &size);
        if (size == 0) {
            break;
        }
        expect.push_back(Expect::Handshake);
        rest.remove_prefix(size);
    }

    out.append(reinterpret_cast<const char *>(hs.data), hs.len);
    resp_append(&out, {"CLIENT", "ID"});
    expect.push_back(Expect::ClientId);
}

void Link::on_event(ngx_event_t *ev)
{
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    auto *k = static_cast<Link *>(c->data);

    bool ok = guarded(ngx_cycle->log, "l1 listener", [k, ev] {
        if (k->state == State::Tls) {
            /* nginx's SSL layer drives the handshake (on_tls) */
            return;
        }

        if (k->state == State::Connecting) {
            if (!ev->write || !k->connected()) {
                return;
            }
        }

        if (ev->write) {
            k->write();
        } else {
            k->read();
        }
    });

    if (!ok && k->peer.connection) {
        k->fail("internal error", l1::FlushReason::ListenerLost, true);
    }
}

void Link::connect(const ngx_addr_t *addr)
{
    reader = redisReaderCreate();
    if (reader == nullptr) {
        return;
    }

    ngx_peer_connection_t *pc = &peer;

    ngx_memzero(pc, sizeof(*pc));
    pc->sockaddr = addr->sockaddr;
    pc->socklen = addr->socklen;
    pc->name = const_cast<ngx_str_t *>(&addr->name);
    pc->get = ngx_event_get_peer;
    pc->log = owner->log;
    pc->log_error = NGX_ERROR_ERR;

    set_state(State::Connecting);
    started = ngx_current_msec;

    ngx_int_t rv = ngx_event_connect_peer(pc);

    if (rv != NGX_OK && rv != NGX_AGAIN) {
        pc->connection = nullptr;
        fail("connect failed", l1::FlushReason::ListenerLost, true);
        return;
    }

    ngx_connection_t *c = pc->connection;
    c->data = this;
    c->read->handler = on_event;
    c->write->handler = on_event;
    c->log = owner->log;
    c->read->log = owner->log;
    c->write->log = owner->log;

    if (rv == NGX_OK) {
        ngx_post_event(c->write, &ngx_posted_events);
    }
}

void Link::tick(ngx_msec_t now)
{
    switch (state) {
    case State::Closed:
        break;

    case State::Connecting:
    case State::Tls:
    case State::Handshake:
        if (now - started > owner->smcf->redis.backend.connect_timeout
                                + l1::kHeartbeatTimeout)
        {
            fail(state == State::Tls ? "TLS handshake timed out"
                                     : "handshake timed out",
                 l1::FlushReason::ListenerLost, false);
        }
        break;

    case State::Armed:
        if (ping_out && now - ping_sent >= l1::kHeartbeatTimeout) {
            ngx_log_error(NGX_LOG_WARN, owner->log, 0,
                          "session_cache: l1 listener: PING unanswered%s for "
                          "%Mms, L1 dropped",
                          named(" by ", node).c_str(), now - ping_sent);
            fail("PING unanswered", l1::FlushReason::Heartbeat, true);
            break;
        }
        if (!ping_out) {
            send_command({"PING"}, Expect::Pong);
            ping_out = true;
            ping_sent = now;
        }
        break;
    }
}

/* ---- the listener ------------------------------------------------------ */

bool wanted(const ngx_http_session_cache_main_conf_t *smcf)
{
    return smcf->l1.enabled == 1 && smcf->l1.tracking == 1
           && (ngx_process == NGX_PROCESS_WORKER
               || ngx_process == NGX_PROCESS_SINGLE);
}

Listener::Listener(ngx_cycle_t                              *cycle,
                   const ngx_http_session_cache_main_conf_t *smcf)
    : smcf(smcf), log(cycle->log)
{
    timer.handler = on_tick;
    timer.log = cycle->log;
    timer.data = this;
    timer.cancelable = 1;

    l1::set_reason("listener: not started yet", true);
    ngx_add_timer(&timer, 1);
}

Listener::~Listener()
{
    if (timer.timer_set) {
        ngx_del_timer(&timer);
    }

    if (holder) {
        l1::lease_release(ngx_pid);
    }

    close_links();
}

void Listener::close_links()
{
    for (auto &k : links) {
        k->close();
    }
}

void Listener::disarm(const std::string &why, l1::FlushReason reason,
                      bool logged)
{
    if (armed) {
        l1::set_armed(ngx_pid, false);
        l1::flush(reason, log);
        armed = false;
        lost = true;
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log, 0,
                       "session_cache: l1 listener disarmed: %s", why.c_str());

        if (!logged) {
            ngx_log_error(NGX_LOG_WARN, log, 0,
                          "session_cache: l1 listener lost (%s), "
                          "L1 dropped and bypassed until it is back",
                          why.c_str());
        }
    }

    l1::set_reason("listener: " + why);
}

void Listener::arm_if_all()
{
    if (armed || links.empty()) {
        return;
    }

    for (auto &k : links) {
        if (k->state != State::Armed) {
            return;
        }
    }

    if (lost) {
        /* whatever passed while a link was away is unknown */
        l1::flush(l1::FlushReason::Reconnect, log);
        lost = false;
    }

    l1::set_reason("");
    l1::set_armed(ngx_pid, true); /* and the heartbeat */
    armed = true;
    refused.clear();

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log, 0,
                   "session_cache: l1 listener armed on %uz links",
                   links.size());
}

void Listener::ponged()
{
    for (auto &k : links) {
        if (k->ping_out) {
            return;
        }
    }

    if (armed) {
        l1::pong(ngx_pid);
    }
}

std::string Listener::tls_name(const Link *)
{
    return std::string(view(smcf->redis.tls_name));
}

void Listener::connect(Link *k)
{
    const ngx_addr_t *addr = peer(k);

    if (addr == nullptr) {
        return;
    }

    if (!armed) {
        l1::set_reason("listener: connecting to "
                       + (k->node.empty() ? std::string("redis") : k->node));
    }

    k->tls_name = tls_name(k);
    k->connect(addr);
}

void Listener::tick()
{
    ngx_pid_t me = ngx_pid;

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        if (holder) {
            close_links();
            l1::lease_release(me);
            holder = false;
        }
        return;
    }

    l1::LeaseAction a = l1::lease_tick(me, log);

    if (a == l1::LeaseAction::Wait) {
        if (holder) {
            /* taken over (the lease was not renewed in time) */
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, log, 0,
                           "session_cache: l1 listener lease lost");
            close_links();
            holder = false;
            armed = false;
        }
        return;
    }

    if (a == l1::LeaseAction::Take) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, log, 0,
                       "session_cache: l1 listener takeover: this worker "
                       "listens");
        for (auto &k : links) {
            k->close();
            k->next_connect = 0;
        }
        armed = false;
        lost = false;
    }

    holder = true;

    if (!follow()) {
        return;
    }

    ngx_msec_t now = ngx_current_msec;

    for (auto &p : links) {
        Link *k = p.get();

        if (k->state == State::Closed) {
            if (now >= k->next_connect) {
                connect(k);
            }
        } else {
            k->tick(now);
        }
    }
}

} // namespace session_cache::listener
