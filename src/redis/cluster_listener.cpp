/*
 * The invalidation listener of a Redis Cluster: see cluster_listener.h.
 * Each master's link follows the states of redis_listener.cpp's one
 * connection:
 *
 *   Closed --tick, lease held--> Connecting --writable--> Handshake
 *   Handshake: AUTH (+OK), CLIENT ID (:id), then CLIENT TRACKING (+OK)
 *              and SUBSCRIBE (the confirmation) --> Armed
 *   Armed: PING each tick; ["pong", ""]; ["message", channel, [keys]]
 *          drops keys; [.., nil] flushes
 *   any error, close, refusal or silence --> Closed (retried on a tick)
 *
 * One timer (every second, in every worker) drives the lease, the links
 * and the heartbeat: L1's heartbeat is renewed when every link has
 * answered its PING.
 */
#include "redis/cluster_listener.h"

#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <hiredis/hiredis.h>

#include "l1/l1_zone.h"
#include "redis/cluster.h"
#include "redis/resp.h"

namespace session_cache {

namespace {

enum class State { Closed, Connecting, Handshake, Armed };

/* what the next reply answers, in order */
enum class Expect { Handshake, ClientId, Tracking, Subscribe, Pong };

constexpr std::size_t kMaxBuffered = 64 * 1024 * 1024;
constexpr std::size_t kReadChunk = 16 * 1024;
constexpr std::size_t kReadBudget = 1024 * 1024;
constexpr char        kChannel[] = "__redis__:invalidate";

struct Listener;

struct Link {
    Listener             *owner = nullptr;
    const Cluster::Node  *node = nullptr;
    ngx_peer_connection_t peer{};
    State                 state = State::Closed;
    redisReader          *reader = nullptr;
    std::string           out;
    std::deque<Expect>    expect;
    bool                  ping_out = false;
    ngx_msec_t            ping_sent = 0;
    ngx_msec_t            started = 0;
    ngx_msec_t            next_connect = 0;
    ngx_uint_t            failures = 0;
};

struct Listener {
    const ngx_http_session_cache_main_conf_t *smcf = nullptr;
    Cluster                                  *cluster = nullptr;
    ngx_log_t                                *log = nullptr;
    ngx_event_t                               tick{};
    std::vector<std::unique_ptr<Link>>        links;
    std::uint64_t generation = 0; /* of the map the links follow */
    bool          holder = false;
    bool          armed = false;
    bool          lost = false; /* was armed */
    std::string   refused;      /* logged once */
};

Listener *self;

void close_link(Link *k)
{
    if (k->peer.connection != nullptr) {
        ngx_close_connection(k->peer.connection);
        k->peer.connection = nullptr;
    }

    if (k->reader != nullptr) {
        redisReaderFree(k->reader);
        k->reader = nullptr;
    }

    k->out.clear();
    k->expect.clear();
    k->ping_out = false;
    k->state = State::Closed;
}

/* L1 is no longer kept exact: drop it, consult it no more. */
void disarm(Listener *l, const std::string &why, l1::FlushReason reason,
            bool logged)
{
    if (l->armed) {
        l1::set_armed(ngx_pid, false);
        l1::flush(reason, l->log);
        l->armed = false;
        l->lost = true;

        if (!logged) {
            ngx_log_error(NGX_LOG_WARN, l->log, 0,
                          "session_cache: l1 listener lost (%s), "
                          "L1 dropped and bypassed until it is back",
                          why.c_str());
        }
    }

    l1::set_reason("listener: " + why);
}

/* The link is over: why; L1 goes with it. */
void fail(Link *k, const char *why, l1::FlushReason reason, bool logged)
{
    Listener *l = k->owner;

    disarm(l, k->node->address + ": " + why, reason, logged);
    close_link(k);

    /* again in 1 s, backing off to 8 s while the node stays away */
    ngx_msec_t delay = l1::kPingInterval << ngx_min(k->failures, 3);
    k->failures++;
    k->next_connect = ngx_current_msec + delay;
}

/* Redis refused tracking: L1 stays unused; said once at error. */
void refuse(Link *k, const char *step, std::string_view text)
{
    Listener   *l = k->owner;
    std::string why = std::string(step) + " refused by redis: "
                      + std::string(redis_error_code(text));

    if (why != l->refused) {
        ngx_log_error(NGX_LOG_ERR, l->log, 0,
                      "session_cache: l1 tracking unavailable on %s, L1 "
                      "unused: %s",
                      k->node->address.c_str(), why.c_str());
        l->refused = why;
    }

    fail(k, why.c_str(), l1::FlushReason::ListenerLost, true);
    k->next_connect = ngx_current_msec + 10000;
}

void send_command(Link *k, std::initializer_list<std::string_view> args,
                  Expect e)
{
    resp_append(&k->out, args);
    k->expect.push_back(e);

    if (k->peer.connection != nullptr) {
        ngx_post_event(k->peer.connection->write, &ngx_posted_events);
    }
}

bool is(const redisReply *r, std::string_view s)
{
    return r != nullptr
           && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)
           && std::string_view(r->str, r->len) == s;
}

/* Every link armed (and the map known): L1 may be consulted. */
void arm_if_all(Listener *l)
{
    if (l->armed || l->links.empty()) {
        return;
    }

    for (auto &k : l->links) {
        if (k->state != State::Armed) {
            return;
        }
    }

    if (l->lost) {
        /* whatever passed while one was away is unknown */
        l1::flush(l1::FlushReason::Reconnect, l->log);
        l->lost = false;
    }

    l1::set_reason("");
    l1::set_armed(ngx_pid, true);
    l1::pong(ngx_pid);
    l->armed = true;
    l->refused.clear();

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, l->log, 0,
                   "session_cache: l1 listener armed on %uz masters",
                   l->links.size());
}

/* A PONG on k: the heartbeat, once every link has answered. */
void ponged(Link *k)
{
    Listener *l = k->owner;

    k->ping_out = false;

    for (auto &other : l->links) {
        if (other->ping_out) {
            return;
        }
    }

    if (l->armed) {
        l1::pong(ngx_pid);
    }
}

/* ["message", channel, keys | nil], ["pong", ""]; false: drop k. */
bool pushed(Link *k, const redisReply *r)
{
    Listener *l = k->owner;

    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2) {
        return false;
    }

    const redisReply *kind = r->element[0];

    if (is(kind, "pong")) {
        if (!k->expect.empty() && k->expect.front() == Expect::Pong) {
            k->expect.pop_front();
        }
        ponged(k);
        return true;
    }

    if (!is(kind, "message") || r->elements != 3
        || !is(r->element[1], kChannel)) {
        return false;
    }

    const redisReply *keys = r->element[2];

    if (keys->type == REDIS_REPLY_NIL) {
        /* FLUSHALL, FLUSHDB on that master */
        l1::flush(l1::FlushReason::Flush, l->log);
        return true;
    }

    if (keys->type != REDIS_REPLY_ARRAY) {
        return false;
    }

    std::string_view prefix = view(l->smcf->key_prefix);

    for (std::size_t i = 0; i < keys->elements; i++) {
        const redisReply *key = keys->element[i];

        if (key->type != REDIS_REPLY_STRING) {
            continue;
        }

        std::string_view name(key->str, key->len);

        if (name.substr(0, prefix.size()) == prefix) {
            l1::invalidate(name.substr(prefix.size()));
        }
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, l->log, 0,
                   "session_cache: l1 invalidation of %uz keys from %s",
                   keys->elements, k->node->address.c_str());
    return true;
}

/* One reply; false: the link is gone. */
bool reply(Link *k, const redisReply *r)
{
    if (k->state == State::Armed) {
        if (r->type == REDIS_REPLY_ERROR) {
            fail(k, "error reply", l1::FlushReason::ListenerLost, false);
            return false;
        }
        if (!pushed(k, r)) {
            fail(k, "unexpected message", l1::FlushReason::ListenerLost, false);
            return false;
        }
        return true;
    }

    if (k->expect.empty()) {
        fail(k, "unexpected reply", l1::FlushReason::ListenerLost, false);
        return false;
    }

    Expect e = k->expect.front();
    k->expect.pop_front();
    std::string_view text = r->type == REDIS_REPLY_ERROR
                                ? std::string_view(r->str, r->len)
                                : std::string_view();

    switch (e) {
    case Expect::Handshake:
        if (r->type == REDIS_REPLY_ERROR) {
            refuse(k, "AUTH", text);
            return false;
        }
        return true;

    case Expect::ClientId: {
        if (r->type != REDIS_REPLY_INTEGER) {
            refuse(k, "CLIENT ID", text);
            return false;
        }

        std::string id = std::to_string(r->integer);
        send_command(k,
                     {"CLIENT", "TRACKING", "on", "REDIRECT", id, "BCAST",
                      "PREFIX", view(k->owner->smcf->key_prefix)},
                     Expect::Tracking);
        send_command(k, {"SUBSCRIBE", kChannel}, Expect::Subscribe);
        return true;
    }

    case Expect::Tracking:
        if (r->type == REDIS_REPLY_ERROR) {
            refuse(k, "CLIENT TRACKING", text);
            return false;
        }
        return true;

    case Expect::Subscribe:
        if (r->type == REDIS_REPLY_ERROR) {
            refuse(k, "SUBSCRIBE", text);
            return false;
        }
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 3
            || !is(r->element[0], "subscribe"))
        {
            fail(k, "unexpected SUBSCRIBE reply", l1::FlushReason::ListenerLost,
                 false);
            return false;
        }
        k->state = State::Armed;
        k->failures = 0;
        arm_if_all(k->owner);
        return true;

    case Expect::Pong:
        break;
    }

    fail(k, "unexpected reply", l1::FlushReason::ListenerLost, false);
    return false;
}

void do_read(Link *k)
{
    ngx_connection_t *c = k->peer.connection;
    char              buf[kReadChunk];
    std::size_t       budget = kReadBudget;

    while (budget > 0) {
        ssize_t n = c->recv(c, reinterpret_cast<u_char *>(buf), sizeof(buf));

        if (n == NGX_AGAIN) {
            if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
                fail(k, "cannot wait for the socket",
                     l1::FlushReason::ListenerLost, false);
            }
            return;
        }

        if (n == 0 || n == NGX_ERROR) {
            fail(k, n == 0 ? "connection closed by redis" : "recv failed",
                 l1::FlushReason::ListenerLost, false);
            return;
        }

        budget -= ngx_min(budget, static_cast<std::size_t>(n));

        if (redisReaderFeed(k->reader, buf, n) != REDIS_OK
            || k->reader->len - k->reader->pos > kMaxBuffered)
        {
            fail(k, "reply too large", l1::FlushReason::ListenerLost, false);
            return;
        }

        for (;;) {
            void *obj = nullptr;

            if (redisReaderGetReply(k->reader, &obj) != REDIS_OK) {
                fail(k, "protocol error", l1::FlushReason::ListenerLost, false);
                return;
            }

            if (obj == nullptr) {
                break;
            }

            bool alive = reply(k, static_cast<redisReply *>(obj));
            freeReplyObject(obj);

            if (!alive) {
                return;
            }
        }
    }

    ngx_post_event(c->read, &ngx_posted_next_events);
}

void do_write(Link *k)
{
    ngx_connection_t *c = k->peer.connection;

    while (!k->out.empty()) {
        ssize_t n = c->send(c, reinterpret_cast<u_char *>(k->out.data()),
                            k->out.size());

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR) {
            fail(k, "send failed", l1::FlushReason::ListenerLost, false);
            return;
        }

        k->out.erase(0, n);
    }

    if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
        fail(k, "cannot wait for the socket", l1::FlushReason::ListenerLost,
             false);
    }
}

/* The socket is writable for the first time: connected, or refused. */
bool connected(Link *k)
{
    ngx_connection_t *c = k->peer.connection;
    int               err = 0;
    socklen_t         len = sizeof(err);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1) {
        err = ngx_socket_errno;
    }

    if (err != 0) {
        ngx_uint_t level = k->failures ? NGX_LOG_DEBUG : NGX_LOG_ERR;
        ngx_log_error(level, k->owner->log, err,
                      "session_cache: l1 listener: connect() to redis "
                      "cluster node %s failed",
                      k->node->address.c_str());
        fail(k, "connect failed", l1::FlushReason::ListenerLost, true);
        return false;
    }

    k->state = State::Handshake;

    /* the handshake: AUTH, as the pools send it */
    const ngx_str_t &hs = k->owner->smcf->redis.handshake;
    std::string_view rest = view(hs);

    while (!rest.empty()) {
        std::size_t size = 0;
        resp_first_command(rest, &size);
        if (size == 0) {
            break;
        }
        k->expect.push_back(Expect::Handshake);
        rest.remove_prefix(size);
    }

    k->out.append(reinterpret_cast<const char *>(hs.data), hs.len);
    resp_append(&k->out, {"CLIENT", "ID"});
    k->expect.push_back(Expect::ClientId);
    return true;
}

void on_event(ngx_event_t *ev)
{
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    auto *k = static_cast<Link *>(c->data);

    try {
        if (k->state == State::Connecting) {
            if (!ev->write || !connected(k)) {
                return;
            }
        }

        if (ev->write) {
            do_write(k);
        } else {
            do_read(k);
        }

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "session_cache: l1 listener: %s", e.what());
        if (k->peer.connection) {
            fail(k, "internal error", l1::FlushReason::ListenerLost, true);
        }
    } catch (...) {
        ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                      "session_cache: l1 listener: unknown exception");
        if (k->peer.connection) {
            fail(k, "internal error", l1::FlushReason::ListenerLost, true);
        }
    }
}

void connect(Link *k)
{
    Listener *l = k->owner;

    k->reader = redisReaderCreate();
    if (k->reader == nullptr) {
        return;
    }

    ngx_peer_connection_t *pc = &k->peer;

    ngx_memzero(pc, sizeof(*pc));
    pc->sockaddr = k->node->addr.sockaddr;
    pc->socklen = k->node->addr.socklen;
    pc->name = const_cast<ngx_str_t *>(&k->node->addr.name);
    pc->get = ngx_event_get_peer;
    pc->log = l->log;
    pc->log_error = NGX_ERROR_ERR;

    k->state = State::Connecting;
    k->started = ngx_current_msec;

    ngx_int_t rv = ngx_event_connect_peer(pc);

    if (rv != NGX_OK && rv != NGX_AGAIN) {
        pc->connection = nullptr;
        fail(k, "connect failed", l1::FlushReason::ListenerLost, true);
        return;
    }

    ngx_connection_t *c = pc->connection;
    c->data = k;
    c->read->handler = on_event;
    c->write->handler = on_event;
    c->log = l->log;
    c->read->log = l->log;
    c->write->log = l->log;

    if (rv == NGX_OK) {
        ngx_post_event(c->write, &ngx_posted_events);
    }
}

/* The links follow the masters of this worker's map. */
void follow_map(Listener *l)
{
    Cluster *cl = l->cluster;

    if (cl->generation() == l->generation) {
        return;
    }

    l->generation = cl->generation();

    std::vector<std::unique_ptr<Link>> links;
    std::string                        unusable;
    bool                               changed = false;

    for (const auto &n : cl->nodes()) {
        if (n->slots == 0) {
            continue;
        }

        if (n->pool == nullptr) {
            unusable = n->address + ": " + n->error;
            continue;
        }

        std::unique_ptr<Link> k;

        for (auto &old : l->links) {
            if (old && old->node == n.get()) {
                k = std::move(old);
                break;
            }
        }

        if (!k) {
            k = std::make_unique<Link>();
            k->owner = l;
            k->node = n.get();
            changed = true;
        }

        links.push_back(std::move(k));
    }

    /* masters no more */
    for (auto &old : l->links) {
        if (old) {
            close_link(old.get());
            changed = true;
        }
    }

    l->links = std::move(links);

    if (!unusable.empty()) {
        for (auto &k : l->links) {
            close_link(k.get());
        }
        l->links.clear();
        disarm(l, unusable, l1::FlushReason::Topology, true);
        return;
    }

    /* a new master: L1 waits for its link (the change of the map has
     * dropped L1 already, in the worker that saw it) */
    if (changed && l->armed) {
        l1::set_armed(ngx_pid, false);
        l->armed = false;
        l1::set_reason("listener: the masters changed");
    }

    arm_if_all(l);
}

/* Every second, in every worker. */
void tick(Listener *l)
{
    ngx_pid_t me = ngx_pid;

    if (ngx_exiting || ngx_quit || ngx_terminate) {
        if (l->holder) {
            for (auto &k : l->links) {
                close_link(k.get());
            }
            l1::lease_release(me);
            l->holder = false;
        }
        return;
    }

    l1::LeaseAction a = l1::lease_tick(me, l->log);

    if (a == l1::LeaseAction::Wait) {
        if (l->holder) {
            for (auto &k : l->links) {
                close_link(k.get());
            }
            l->holder = false;
            l->armed = false;
        }
        return;
    }

    if (a == l1::LeaseAction::Take) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, l->log, 0,
                       "session_cache: l1 listener takeover: this worker "
                       "listens to the cluster");
        for (auto &k : l->links) {
            close_link(k.get());
            k->next_connect = 0;
        }
        l->armed = false;
        l->lost = false;
    }

    l->holder = true;

    if (!l->cluster->mapped()) {
        l1::set_reason("listener: no slot map yet");
        return;
    }

    follow_map(l);

    ngx_msec_t now = ngx_current_msec;

    for (auto &p : l->links) {
        Link *k = p.get();

        switch (k->state) {
        case State::Closed:
            if (now >= k->next_connect) {
                if (!l->armed) {
                    l1::set_reason("listener: connecting to "
                                   + k->node->address);
                }
                connect(k);
            }
            break;

        case State::Connecting:
        case State::Handshake:
            if (now - k->started > l->smcf->redis.backend.connect_timeout
                                       + l1::kHeartbeatTimeout)
            {
                fail(k, "handshake timed out", l1::FlushReason::ListenerLost,
                     false);
            }
            break;

        case State::Armed:
            if (k->ping_out && now - k->ping_sent >= l1::kHeartbeatTimeout) {
                ngx_log_error(NGX_LOG_WARN, l->log, 0,
                              "session_cache: l1 listener: PING unanswered "
                              "by %s for %Mms, L1 dropped",
                              k->node->address.c_str(), now - k->ping_sent);
                fail(k, "PING unanswered", l1::FlushReason::Heartbeat, true);
                break;
            }
            if (!k->ping_out) {
                send_command(k, {"PING"}, Expect::Pong);
                k->ping_out = true;
                k->ping_sent = now;
            }
            break;
        }
    }
}

void on_tick(ngx_event_t *ev)
{
    try {
        if (self != nullptr) {
            tick(self);
        }
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, ev->log, 0,
                      "session_cache: l1 listener: %s", e.what());
    } catch (...) {
        ngx_log_error(NGX_LOG_ALERT, ev->log, 0,
                      "session_cache: l1 listener: unknown exception");
    }

    if (self != nullptr && !self->tick.timer_set && !ngx_exiting && !ngx_quit
        && !ngx_terminate)
    {
        ngx_add_timer(&self->tick, l1::kPingInterval);
    }
}

/* Any worker's map changed: L1 goes (SPEC §10). */
void on_topology(void *data)
{
    auto *l = static_cast<Listener *>(data);

    l1::flush(l1::FlushReason::Topology, l->log);
}

} // namespace

void cluster_listener_start(ngx_cycle_t                              *cycle,
                            const ngx_http_session_cache_main_conf_t *smcf,
                            Cluster                                  *cluster)
{
    if (smcf->l1.enabled != 1 || smcf->l1.tracking != 1 || cluster == nullptr) {
        return;
    }

    /* workers only: not the cache manager or loader */
    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE)
    {
        return;
    }

    self = new Listener();
    self->smcf = smcf;
    self->cluster = cluster;
    self->log = cycle->log;
    self->tick.handler = on_tick;
    self->tick.log = cycle->log;
    self->tick.data = self;
    self->tick.cancelable = 1;

    cluster->on_topology(on_topology, self);
    l1::set_reason("listener: not started yet");

    /* the first tick soon, not at once: init_process is no place for I/O */
    ngx_add_timer(&self->tick, 1);
}

void cluster_listener_stop()
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

    for (auto &k : l->links) {
        close_link(k.get());
    }

    l->cluster->on_topology(nullptr, nullptr);
    self = nullptr;
    delete l;
}

} // namespace session_cache
