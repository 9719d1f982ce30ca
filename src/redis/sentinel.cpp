/*
 * Redis Sentinel discovery, per worker: see sentinel.h.
 *
 * Two kinds of connection (Link), each a small state machine on nginx's
 * event loop with one deadline:
 *
 *   ask:       a sentinel: [AUTH] SENTINEL get-master-addr-by-name MASTER
 *   confirm:   the address it named: [AUTH] [SELECT] ROLE
 *   subscribe: one sentinel, kept open: [AUTH] SUBSCRIBE +switch-master,
 *              then a PING each second (a silent sentinel is left for the
 *              next one after 3 s)
 *
 * A round: ask sentinel i; its answer is confirmed (a name goes through
 * nginx's resolver first); a master: adopted, the round is over; anything
 * else: the reason is noted and the next sentinel is asked. A round that
 * asked every sentinel in vain is logged (once per distinct reason) and
 * tried again after 100 ms, doubling to 2 s; the master known so far
 * stays in use meanwhile.
 *
 * Replies are read by the ReplyReader, shape-gated per command (Sentinel,
 * Role, Subscribe, Auth, Select): a sentinel is a server like any other.
 *
 * rediss-sentinel://: every link speaks TLS (redis_tls, as the pool
 * does): a sentinel's certificate must name its host as the URL gave
 * it, a candidate's the host the sentinel named. The handshake runs
 * under the link's deadline.
 */
#include "redis/sentinel.h"

#include "guarded.h"
#include "breaker/breaker_zone.h"
#include "l1/l1_zone.h"
#include "redis/redis_tls.h"
#include "redis/redis_url.h"
#include "redis/resp.h"
#include "redis/sentinel_logic.h"
#include "worker.h"

#include <cstring>
#include <new>
#include <vector>

namespace session_cache::sentinel {

namespace {

constexpr ngx_msec_t  kTick = 1000;    /* subscription PING */
constexpr ngx_msec_t  kSilent = 3000;  /* a PING unanswered: next */
constexpr std::size_t kMaxError = 400; /* the notes of one round */
constexpr char        kChannel[] = "+switch-master";
constexpr std::size_t kMaxExpect = 8;

struct Link;

using ReplyFn = bool (*)(Link *link, RedisCmd kind, const RedisReply &r);
using ErrorFn = void (*)(Link *link, const char *error);

/* One connection to a sentinel or to a candidate master. */
struct Link {
    ngx_peer_connection_t peer{};
    ngx_log_t             log{};
    ngx_event_t           timer{};
    ReplyReader           reader;
    std::string           out;
    RedisCmd              expect[kMaxExpect];
    std::size_t           nexpect = 0;
    std::size_t           next = 0;
    bool                  connected = false;
    ReplyFn               on_reply = nullptr; /* false: the link is gone */
    ErrorFn               on_error = nullptr; /* the link is gone after */
    ngx_sockaddr_t        sockaddr;
    socklen_t             socklen = 0;
    ngx_str_t             name{};
    u_char                name_text[NGX_SOCKADDR_STRLEN];
    char                  error[NGX_MAX_ERROR_STR];

    /* TLS (rediss-sentinel://): the name to verify, NUL-terminated */
    bool        tls = false;
    bool        handshaking = false;
    std::string tls_host;
    ngx_str_t   tls_name{};
};

/* In the zone: the instance's master, and its switches (a switch is
 * counted by the first worker to see it). */
struct Shared {
    char          address[NGX_SOCKADDR_STRLEN + 1];
    char          host[NGX_MAXHOSTNAMELEN + 1]; /* as a sentinel named it */
    std::uint64_t switches;
    std::int64_t  last_switch_ms;
};

constexpr std::size_t kZonePages = 8;

struct State {
    const ngx_http_session_cache_redis_conf_t    *rcf = nullptr;
    ngx_slab_pool_t                              *shpool = nullptr;
    Shared                                       *shared = nullptr;
    const ngx_http_session_cache_sentinel_conf_t *scf = nullptr;
    ngx_log_t                                     log{};
    ngx_resolver_t                               *resolver = nullptr;
    bool                                          l1 = false;

    /* the master */
    bool           known = false;
    ngx_addr_t     master{};
    ngx_sockaddr_t master_sockaddr;
    u_char         master_text[NGX_SOCKADDR_STRLEN];
    u_char         master_host_text[NGX_MAXHOSTNAMELEN + 1] = {};
    ngx_str_t      master_host{0, master_host_text};
    std::uint64_t  switches = 0;
    std::int64_t   last_switch_ms = -1;

    /* the round */
    bool                running = false;
    bool                urgent = false; /* ... by a +switch-master */
    Rotation            rotation;
    Link               *ask = nullptr;
    Link               *confirm = nullptr;
    Address             candidate;
    std::string         notes;  /* this round's reasons */
    std::string         error;  /* the last failed round's, for health */
    std::string         logged; /* the last reason logged */
    std::uint64_t       failures = 0;
    ngx_event_t         round_ev{}; /* posted, or a timer for the retry */
    ngx_resolver_ctx_t *resolving = nullptr;

    /* the subscription */
    Link       *sub = nullptr;
    std::size_t sub_index = 0;
    bool        subscribed = false;
    bool        ping_out = false;
    ngx_msec_t  ping_sent = 0;
    ngx_event_t tick{};

    std::vector<std::pair<Observer, void *>> observers;
};

State *self;

/* --- Link ----------------------------------------------------------------- */

void link_close(Link *l)
{
    if (l->timer.timer_set) {
        ngx_del_timer(&l->timer);
    }

    /* and its TLS state, if any */
    redis_tls::close(l->peer.connection);
    l->peer.connection = nullptr;

    delete l;
}

/* The link failed: its owner hears why, and closes it. */
void link_fail(Link *l, const char *error)
{
    l->on_error(l, error);
}

void link_flush(Link *l)
{
    ngx_connection_t *c = l->peer.connection;

    while (!l->out.empty()) {
        ssize_t n =
            c->send(c, reinterpret_cast<u_char *>(&l->out[0]), l->out.size());

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == NGX_ERROR) {
            link_fail(l, "send failed");
            return;
        }

        l->out.erase(0, n);
    }

    if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
        link_fail(l, "cannot wait for the socket");
    }
}

/* false: the link is gone */
bool link_read(Link *l)
{
    ngx_connection_t *c = l->peer.connection;
    char              buf[4096];

    for (;;) {
        ssize_t n = c->recv(c, reinterpret_cast<u_char *>(buf), sizeof(buf));

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {
            link_fail(l, n == 0 ? "connection closed" : "recv failed");
            return false;
        }

        if (!l->reader.feed(buf, n)) {
            link_fail(l, "out of memory");
            return false;
        }

        for (;;) {
            /* after what was expected, a subscription's messages */
            RedisCmd kind =
                l->next < l->nexpect ? l->expect[l->next] : RedisCmd::Subscribe;
            RedisReply  reply;
            const char *error = nullptr;

            ReplyReader::Next next = l->reader.next(kind, &reply, &error);

            if (next == ReplyReader::Next::More) {
                break;
            }

            if (next == ReplyReader::Next::Refused) {
                link_fail(l, error);
                return false;
            }

            l->next++;

            if (!l->on_reply(l, kind, reply)) {
                return false;
            }
        }
    }

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        link_fail(l, "cannot wait for the socket");
        return false;
    }

    return true;
}

void link_event(ngx_event_t *ev);

#if (NGX_SSL)

/* The handshake is over, either way: the link's own handlers again, and
 * the commands go out once the certificate checks out. */
void link_tls_done(Link *l)
{
    ngx_connection_t *c = l->peer.connection;

    l->handshaking = false;
    c->read->handler = link_event;
    c->write->handler = link_event;

    const char *error = redis_tls::check(c, l->tls_name, self->rcf->tls_verify,
                                         l->error, sizeof(l->error));

    if (error != nullptr) {
        link_fail(l, error);
        return;
    }

    link_flush(l);
}

/* nginx's SSL layer calls this when a handshake that had to wait is over */
void link_handshake(ngx_connection_t *c)
{
    auto *l = static_cast<Link *>(c->data);

    if (!guarded(&l->log, "redis sentinel", [l] { link_tls_done(l); })) {
        link_fail(l, "internal error");
    }
}

/* Connected: TLS first (the link's deadline keeps running) */
void link_start_tls(Link *l)
{
    const char *error;

    l->handshaking = true;

    ngx_int_t rv =
        redis_tls::handshake(l->peer.connection, self->rcf->ssl, l->tls_name,
                             &l->log, link_handshake, &error);

    if (rv == NGX_ERROR) {
        link_fail(l, error);
    } else if (rv == NGX_OK) {
        link_tls_done(l);
    }
}

#endif

void link_event(ngx_event_t *ev)
{
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    auto *l = static_cast<Link *>(c->data);

    bool ok = guarded(&l->log, "redis sentinel", [c, l, ev] {
        if (!l->connected) {
            if (!ev->write) {
                return;
            }

            int       err = 0;
            socklen_t len = sizeof(err);

            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1) {
                err = ngx_socket_errno;
            }

            if (err) {
                u_char *p = ngx_cpymem(reinterpret_cast<u_char *>(l->error),
                                       "connect() failed: ", 18);
                *ngx_strerror(err, p, sizeof(l->error) - 19) = '\0';
                link_fail(l, l->error);
                return;
            }

            l->connected = true;

#if (NGX_SSL)
            if (l->tls) {
                link_start_tls(l);
                return;
            }
#endif
        }

        if (ev->write) {
            link_flush(l);
        } else {
            link_read(l);
        }
    });

    if (!ok) {
        link_fail(l, "internal error");
    }
}

void link_timeout(ngx_event_t *ev)
{
    auto *l = static_cast<Link *>(ev->data);

    try {
        link_fail(l, !l->connected    ? "connect timed out"
                     : l->handshaking ? "TLS handshake timed out"
                                      : "timed out");
    } catch (...) {
        ngx_log_error(NGX_LOG_ALERT, &l->log, 0,
                      "session_cache: redis sentinel: unknown exception");
    }
}

/* Append the commands of a handshake in RESP, noting their kinds. */
void link_send(Link *l, std::string_view resp)
{
    l->out.append(resp.data(), resp.size());

    while (!resp.empty() && l->nexpect < kMaxExpect) {
        std::size_t size = 0;
        l->expect[l->nexpect++] = resp_first_command(resp, &size);
        if (size == 0) {
            break;
        }
        resp.remove_prefix(size);
    }
}

/* Open a link to sockaddr with commands (RESP); deadline: the whole
 * exchange, TLS handshake included. tls_name: with rediss-sentinel://,
 * the name the certificate must carry (unused without TLS). nullptr:
 * connect() failed at once (the reason is in *error). */
Link *link_open(const sockaddr *sa, socklen_t len, const char *action,
                std::string_view commands, ngx_msec_t deadline, ReplyFn reply,
                ErrorFn error, std::string_view tls_name, const char **why)
{
    auto *l = new Link();

    if (!l->reader.init()) {
        delete l;
        *why = "out of memory";
        return nullptr;
    }

#if (NGX_SSL)
    if (self->rcf->ssl != nullptr) {
        l->tls = true;
        l->tls_host.assign(tls_name);
        l->tls_name.data = reinterpret_cast<u_char *>(&l->tls_host[0]);
        l->tls_name.len = l->tls_host.size();
    }
#endif

    ngx_memcpy(&l->sockaddr, sa, len);
    l->socklen = len;
    l->name.len = ngx_sock_ntop(reinterpret_cast<sockaddr *>(&l->sockaddr), len,
                                l->name_text, NGX_SOCKADDR_STRLEN, 1);
    l->name.data = l->name_text;
    l->log = self->log;
    l->log.action = const_cast<char *>(action);
    l->on_reply = reply;
    l->on_error = error;
    link_send(l, commands);

    ngx_peer_connection_t *pc = &l->peer;
    pc->sockaddr = reinterpret_cast<sockaddr *>(&l->sockaddr);
    pc->socklen = len;
    pc->name = &l->name;
    pc->get = ngx_event_get_peer;
    pc->log = &l->log;
    pc->log_error = NGX_ERROR_INFO; /* the round says why, once */

    ngx_int_t rv = ngx_event_connect_peer(pc);

    if (rv != NGX_OK && rv != NGX_AGAIN) {
        pc->connection = nullptr;
        delete l;
        *why = "connect() failed";
        return nullptr;
    }

    ngx_connection_t *c = pc->connection;
    c->data = l;
    c->log = &l->log;
    c->read->log = &l->log;
    c->write->log = &l->log;
    c->read->handler = link_event;
    c->write->handler = link_event;

    l->timer.handler = link_timeout;
    l->timer.data = l;
    l->timer.log = &l->log;
    l->timer.cancelable = 1;
    ngx_add_timer(&l->timer, deadline);

    /* connected already (a unix socket): carry on from the event loop */
    if (rv == NGX_OK) {
        ngx_post_event(c->write, &ngx_posted_events);
    }

    return l;
}

/* --- the round ------------------------------------------------------------ */

void round_start();
void ask_next();

const ngx_addr_t &sentinel_addr(std::size_t i)
{
    return self->scf->addrs[i % self->scf->naddrs];
}

/* rediss-sentinel://: the name sentinel i's certificate must carry, its
 * host as the URL gave it */
std::string_view sentinel_tls_name(std::size_t i)
{
    const ngx_str_t *names = self->scf->names;

    return names != nullptr ? view(names[i % self->scf->naddrs])
                            : std::string_view();
}

/* by its address, never by the text the URL gave */
std::string sentinel_name(std::size_t i)
{
    const ngx_addr_t &a = sentinel_addr(i);
    u_char            text[NGX_SOCKADDR_STRLEN];
    std::size_t       n =
        ngx_sock_ntop(a.sockaddr, a.socklen, text, NGX_SOCKADDR_STRLEN, 1);

    return "sentinel " + std::string(reinterpret_cast<char *>(text), n);
}

void note(std::string why)
{
    if (!self->notes.empty()) {
        self->notes += "; ";
    }
    self->notes += why;

    if (self->notes.size() > kMaxError) {
        self->notes.resize(kMaxError - 3);
        self->notes += "...";
    }
}

/* Every sentinel was asked in vain. */
void round_failed()
{
    State *s = self;

    s->running = false;
    s->failures++;

    bool urgent = s->urgent;
    s->urgent = false;
    s->error = s->notes.empty() ? "no sentinel answered" : s->notes;

    if (s->error != s->logged) {
        ngx_log_error(NGX_LOG_ERR, &s->log, 0,
                      "session_cache: redis sentinel: no master for \"%V\": "
                      "%s",
                      &s->scf->master, s->error.c_str());
        s->logged = s->error;
    }

    if (urgent) {
        /* a +switch-master came while this round asked: at once */
        if (!s->round_ev.posted) {
            ngx_post_event(&s->round_ev, &ngx_posted_events);
        }
        return;
    }

    if (s->round_ev.posted) {
        ngx_delete_posted_event(&s->round_ev);
    }
    if (!s->round_ev.timer_set) {
        ngx_add_timer(&s->round_ev, retry_delay(s->failures));
    }
}

/* The master's host, as a sentinel named it (or as the zone kept it). */
void set_master_host(std::string_view host)
{
    State      *s = self;
    std::size_t n = ngx_min(host.size(), sizeof(s->master_host_text) - 1);

    ngx_memcpy(s->master_host_text, host.data(), n);
    s->master_host_text[n] = '\0';
    s->master_host.len = n;
}

/* The zone keeps the master's host beside its address, for new workers
 * (seed()); only while the zone's address is this worker's master. */
void share_master_host()
{
    State *s = self;

    if (s->shared == nullptr) {
        return;
    }

    ngx_shmtx_lock(&s->shpool->mutex);
    Shared *z = s->shared;
    if (ngx_strncmp(z->address, s->master.name.data, s->master.name.len) == 0
        && z->address[s->master.name.len] == '\0')
    {
        ngx_memcpy(z->host, s->master_host.data, s->master_host.len + 1);
    }
    ngx_shmtx_unlock(&s->shpool->mutex);
}

void adopt(const ngx_sockaddr_t &sa, socklen_t len, std::string_view host)
{
    State *s = self;

    if (!s->notes.empty()) {
        /* found, but not at the first sentinel asked: say why once */
        ngx_log_error(NGX_LOG_NOTICE, &s->log, 0,
                      "session_cache: redis sentinel: master \"%V\" found "
                      "through %s after: %s",
                      &s->scf->master,
                      sentinel_name(s->rotation.current()).c_str(),
                      s->notes.c_str());
    }

    s->rotation.answered();
    s->running = false;
    s->failures = 0;
    s->error.clear();
    s->logged.clear();

    bool same =
        s->known && s->master.socklen == len
        && ngx_cmp_sockaddr(
               reinterpret_cast<sockaddr *>(&s->master_sockaddr),
               s->master.socklen,
               const_cast<sockaddr *>(reinterpret_cast<const sockaddr *>(&sa)),
               len, 1)
               == NGX_OK;

    /* a +switch-master while this round ran: this answer may predate
     * it, ask again at once (a pool's failure meanwhile needs nothing:
     * the answer came after it) */
    if (s->urgent) {
        s->urgent = false;
        if (!s->round_ev.posted) {
            ngx_post_event(&s->round_ev, &ngx_posted_events);
        }
    }

    if (same) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &s->log, 0,
                       "session_cache: redis sentinel: master confirmed: %V",
                       &s->master.name);

        /* the same server, named otherwise (a seeded master, or the
         * sentinels' announce-hostnames turned on): only the name the
         * next TLS connections verify changes */
        if (view(s->master_host) != host) {
            set_master_host(host);
            share_master_host();
        }
        return;
    }

    u_char    old[NGX_SOCKADDR_STRLEN];
    ngx_str_t was = ngx_null_string;

    if (s->known) {
        was.len = ngx_cpystrn(old, s->master.name.data,
                              ngx_min(s->master.name.len + 1, sizeof(old)))
                  - old;
        was.data = old;
    }

    ngx_memcpy(&s->master_sockaddr, &sa, len);
    s->master.sockaddr = reinterpret_cast<sockaddr *>(&s->master_sockaddr);
    s->master.socklen = len;
    s->master.name.len = ngx_sock_ntop(s->master.sockaddr, len, s->master_text,
                                       NGX_SOCKADDR_STRLEN, 1);
    s->master.name.data = s->master_text;
    set_master_host(host);

    if (s->shared != nullptr) {
        ngx_time_t  *tp = ngx_timeofday();
        std::int64_t now = static_cast<std::int64_t>(tp->sec) * 1000
                           + static_cast<std::int64_t>(tp->msec);

        ngx_shmtx_lock(&s->shpool->mutex);
        Shared *z = s->shared;
        if (ngx_strncmp(z->address, s->master.name.data, s->master.name.len)
                != 0
            || z->address[s->master.name.len] != '\0')
        {
            if (z->address[0] != '\0') {
                z->switches++;
                z->last_switch_ms = now;
            }
            ngx_memcpy(z->address, s->master.name.data, s->master.name.len);
            z->address[s->master.name.len] = '\0';
        }
        ngx_memcpy(z->host, s->master_host.data, s->master_host.len + 1);
        ngx_shmtx_unlock(&s->shpool->mutex);
    }

    if (s->known) {
        ngx_time_t *tp = ngx_timeofday();
        s->switches++;
        s->last_switch_ms = static_cast<std::int64_t>(tp->sec) * 1000
                            + static_cast<std::int64_t>(tp->msec);
        ngx_log_error(NGX_LOG_WARN, &s->log, 0,
                      "session_cache: redis sentinel: master \"%V\" is now "
                      "%V (was %V)",
                      &s->scf->master, &s->master.name, &was);

        /* the failures the breaker counted were the old master's */
        breaker_reset(Backend::Redis, &s->log);

    } else {
        ngx_log_error(NGX_LOG_NOTICE, &s->log, 0,
                      "session_cache: redis sentinel: master \"%V\" is %V",
                      &s->scf->master, &s->master.name);
    }

    s->known = true;

    /* a copy: an observer may (un)register */
    auto observers = s->observers;
    for (auto &o : observers) {
        o.first(o.second);
    }

    if (s->switches && s->l1) {
        l1::flush(l1::FlushReason::Topology, &s->log);
    }
}

/* An exception cut a round short: it ends here, and is tried again as
 * after a failure, so that discovery never stays stuck. */
void abandon()
{
    State *s = self;

    if (s == nullptr) {
        return;
    }

    for (Link **l : {&s->ask, &s->confirm}) {
        if (*l != nullptr) {
            link_close(*l);
            *l = nullptr;
        }
    }

    s->running = false;
    s->urgent = false;
    s->failures++;

    if (!s->round_ev.timer_set && !s->round_ev.posted) {
        ngx_add_timer(&s->round_ev, retry_delay(s->failures));
    }
}

/* The next sentinel, or the end of the round. */
void next_sentinel()
{
    self->rotation.next();

    if (self->rotation.done()) {
        round_failed();
        return;
    }

    ask_next();
}

bool confirm_reply(Link *l, RedisCmd kind, const RedisReply &r)
{
    State      *s = self;
    std::string who = sentinel_name(s->rotation.current()) + " named "
                      + address_text(s->candidate);

    if (r.type == REDIS_REPLY_ERROR) {
        note(who + ": " + resp_command_name(kind)
             + " refused: " + std::string(r.str, r.len));

    } else if (kind != RedisCmd::Role) {
        return true; /* AUTH, SELECT: +OK */

    } else if (is_master_role(r.part[0])) {
        ngx_sockaddr_t sa;
        socklen_t      len = l->socklen;

        ngx_memcpy(&sa, &l->sockaddr, len);
        s->confirm = nullptr;
        link_close(l);
        adopt(sa, len, s->candidate.host);
        return false;

    } else {
        /* a stale sentinel, or a failover under way: worth a line */
        note(who + ", which is not a master (ROLE: "
             + std::string(r.part[0].substr(0, 16)) + ")");
        ngx_log_error(NGX_LOG_WARN, &s->log, 0,
                      "session_cache: redis sentinel: %s, which is not a "
                      "master (ROLE: %*s)",
                      who.c_str(), ngx_min(r.part[0].size(), 16),
                      r.part[0].data());
    }

    s->confirm = nullptr;
    link_close(l);
    next_sentinel();
    return false;
}

void confirm_error(Link *l, const char *error)
{
    note(sentinel_name(self->rotation.current()) + " named "
         + address_text(self->candidate) + ": " + error);
    self->confirm = nullptr;
    link_close(l);
    next_sentinel();
}

/* Ask the candidate at sa for its ROLE. */
void confirm(const sockaddr *sa, socklen_t len)
{
    const char      *why = nullptr;
    std::string_view hs = view(self->rcf->handshake);

    /* over TLS, its certificate must carry the name the sentinel gave */
    self->confirm = link_open(
        sa, len, "asking redis for its ROLE", hs,
        self->rcf->backend.connect_timeout + self->rcf->backend.timeout,
        confirm_reply, confirm_error, self->candidate.host, &why);

    if (self->confirm == nullptr) {
        note(sentinel_name(self->rotation.current()) + " named "
             + address_text(self->candidate) + ": " + why);
        next_sentinel();
    }
}

void resolved(ngx_resolver_ctx_t *ctx)
{
    State *s = self;

    try {
        s->resolving = nullptr;

        ngx_sockaddr_t sa;
        socklen_t      len = resolved_address(ctx, s->candidate.port, &sa);

        if (len == 0) {
            note(sentinel_name(s->rotation.current()) + " named "
                 + address_text(s->candidate) + ": could not resolve it ("
                 + ngx_resolver_strerror(ctx->state) + ")");
            ngx_resolve_name_done(ctx);
            next_sentinel();
            return;
        }

        ngx_resolve_name_done(ctx);
        confirm(&sa.sockaddr, len);

    } catch (...) {
        ngx_log_error(NGX_LOG_ALERT, &s->log, 0,
                      "session_cache: redis sentinel: resolver: exception");
        abandon();
    }
}

/* The address a sentinel gave: an IP, or a name for nginx's resolver. */
void candidate_found()
{
    State         *s = self;
    ngx_sockaddr_t sa;
    socklen_t      len;

    if (ip_sockaddr(s->candidate.host, s->candidate.port, &sa.sockaddr, &len)) {
        confirm(&sa.sockaddr, len);
        return;
    }

    /* a name waits at most connect_timeout, as the round does for a
     * reply */
    const char *why;

    if (!resolve_name(s->resolver, s->candidate.host,
                      s->rcf->backend.connect_timeout, resolved, s,
                      &s->resolving, &why))
    {
        note(sentinel_name(s->rotation.current()) + " named "
             + address_text(s->candidate) + ", a host name, and " + why);
        next_sentinel();
    }
}

bool ask_reply(Link *l, RedisCmd kind, const RedisReply &r)
{
    State      *s = self;
    std::string who = sentinel_name(s->rotation.current());

    if (r.type == REDIS_REPLY_ERROR) {
        note(who + ": " + resp_command_name(kind)
             + " refused: " + std::string(r.str, r.len));

    } else if (kind != RedisCmd::Sentinel) {
        return true; /* AUTH: +OK */

    } else if (r.type == REDIS_REPLY_NIL) {
        note(who + " does not know the master \""
             + std::string(view(s->scf->master)) + "\"");

    } else if (r.elements != 2
               || !parse_address(r.part[0], r.part[1], &s->candidate))
    {
        note(who + " answered with no address");

    } else {
        s->ask = nullptr;
        link_close(l);
        candidate_found();
        return false;
    }

    s->ask = nullptr;
    link_close(l);
    next_sentinel();
    return false;
}

void ask_error(Link *l, const char *error)
{
    note(sentinel_name(self->rotation.current()) + ": " + error);
    self->ask = nullptr;
    link_close(l);
    next_sentinel();
}

void ask_next()
{
    State            *s = self;
    const ngx_addr_t &a = sentinel_addr(s->rotation.current());
    std::string       cmd(view(s->scf->handshake));
    const char       *why = nullptr;

    resp_append(&cmd,
                {"SENTINEL", "get-master-addr-by-name", view(s->scf->master)});

    s->ask = link_open(
        a.sockaddr, a.socklen, "asking a redis sentinel", cmd,
        s->rcf->backend.connect_timeout + s->rcf->backend.timeout, ask_reply,
        ask_error, sentinel_tls_name(s->rotation.current()), &why);

    if (s->ask == nullptr) {
        note(sentinel_name(s->rotation.current()) + ": " + why);
        next_sentinel();
    }
}

void round_start()
{
    State *s = self;

    if (s->running) {
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &s->log, 0,
                   "session_cache: redis sentinel: asking for \"%V\"",
                   &s->scf->master);

    s->running = true;
    s->notes.clear();
    s->rotation.begin();
    ask_next();
}

void on_round(ngx_event_t *ev)
{
    try {
        if (self != nullptr) {
            round_start();
        }
    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, ev->log, 0,
                      "session_cache: redis sentinel: %s", e.what());
        abandon();
    } catch (...) {
        ngx_log_error(NGX_LOG_ALERT, ev->log, 0,
                      "session_cache: redis sentinel: unknown exception");
        abandon();
    }
}

/* A round as soon as the event loop turns (now: drop a pending retry). */
void round_soon(bool now)
{
    State *s = self;

    if (s->round_ev.timer_set) {
        if (!now) {
            return; /* a retry is due anyway */
        }
        ngx_del_timer(&s->round_ev);
    }

    if (s->running) {
        s->urgent = s->urgent || now;
        return;
    }

    if (!s->round_ev.posted) {
        ngx_post_event(&s->round_ev, &ngx_posted_events);
    }
}

/* --- the subscription ----------------------------------------------------- */

void sub_lost(const char *why)
{
    State *s = self;

    if (s->subscribed) {
        ngx_log_error(NGX_LOG_WARN, &s->log, 0,
                      "session_cache: redis sentinel: subscription to %s "
                      "lost (%s), moving to the next sentinel",
                      sentinel_name(s->sub_index).c_str(), why);
    } else {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, &s->log, 0,
                       "session_cache: redis sentinel: cannot subscribe to "
                       "%s: %s",
                       sentinel_name(s->sub_index).c_str(), why);
    }

    s->sub = nullptr;
    s->subscribed = false;
    s->ping_out = false;
    s->sub_index = (s->sub_index + 1) % s->scf->naddrs;
}

bool sub_reply(Link *l, RedisCmd kind, const RedisReply &r)
{
    State *s = self;

    if (r.type == REDIS_REPLY_ERROR) {
        std::string why = std::string(resp_command_name(kind))
                          + " refused: " + std::string(r.str, r.len);
        sub_lost(why.c_str());
        link_close(l);
        return false;
    }

    if (kind != RedisCmd::Subscribe) {
        return true; /* AUTH: +OK */
    }

    if (r.part[0] == "subscribe") {
        if (l->timer.timer_set) {
            ngx_del_timer(&l->timer);
        }
        s->subscribed = true;
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &s->log, 0,
                       "session_cache: redis sentinel: subscribed to %s",
                       sentinel_name(s->sub_index).c_str());

        /* a switch may have passed while no one listened */
        round_soon(false);
        return true;
    }

    if (r.part[0] == "pong") {
        s->ping_out = false;
        return true;
    }

    Address to;

    if (r.part[0] == "message" && r.part[1] == kChannel
        && parse_switch(r.part[2], view(s->scf->master), &to))
    {
        ngx_log_error(NGX_LOG_INFO, &s->log, 0,
                      "session_cache: redis sentinel: +switch-master for "
                      "\"%V\" to %s",
                      &s->scf->master, address_text(to).c_str());

        /* ask the sentinel that told first: it knows */
        if (!s->running) {
            s->rotation.prefer(s->sub_index);
        }
        round_soon(true);
    }

    return true;
}

void sub_error(Link *l, const char *error)
{
    sub_lost(error);
    link_close(l);
}

void subscribe()
{
    State            *s = self;
    const ngx_addr_t &a = sentinel_addr(s->sub_index);
    std::string       cmd(view(s->scf->handshake));
    const char       *why = nullptr;

    resp_append(&cmd, {"SUBSCRIBE", kChannel});

    s->sub =
        link_open(a.sockaddr, a.socklen, "subscribed to a redis sentinel", cmd,
                  s->rcf->backend.connect_timeout + s->rcf->backend.timeout,
                  sub_reply, sub_error, sentinel_tls_name(s->sub_index), &why);

    if (s->sub == nullptr) {
        sub_lost(why);
    }
}

void on_tick(ngx_event_t *ev)
{
    State *s = self;

    try {
        if (s == nullptr || ngx_exiting || ngx_quit || ngx_terminate) {
            return;
        }

        ngx_msec_t now = ngx_current_msec;

        if (s->sub == nullptr) {
            subscribe();

        } else if (s->subscribed) {
            if (s->ping_out && now - s->ping_sent >= kSilent) {
                Link *l = s->sub;
                sub_lost("PING unanswered");
                link_close(l);
                subscribe();

            } else if (!s->ping_out) {
                resp_append(&s->sub->out, {"PING"});
                s->ping_out = true;
                s->ping_sent = now;
                ngx_post_event(s->sub->peer.connection->write,
                               &ngx_posted_events);
            }
        }

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, ev->log, 0,
                      "session_cache: redis sentinel: %s", e.what());
    } catch (...) {
        ngx_log_error(NGX_LOG_ALERT, ev->log, 0,
                      "session_cache: redis sentinel: unknown exception");
    }

    if (self != nullptr && !ngx_exiting && !ngx_quit && !ngx_terminate) {
        ngx_add_timer(&self->tick, kTick);
    }
}

ngx_int_t init_zone(ngx_shm_zone_t *zone, void *old)
{
    auto *scf =
        static_cast<ngx_http_session_cache_sentinel_conf_t *>(zone->data);
    auto *pool = reinterpret_cast<ngx_slab_pool_t *>(zone->shm.addr);

    if (old != nullptr) {
        scf->shared =
            static_cast<ngx_http_session_cache_sentinel_conf_t *>(old)->shared;
        return NGX_OK;
    }

    if (zone->shm.exists) {
        scf->shared = pool->data;
        return NGX_OK;
    }

    void *z = ngx_slab_calloc(pool, sizeof(Shared));
    if (z == nullptr) {
        return NGX_ERROR;
    }

    pool->data = z;
    scf->shared = z;
    return NGX_OK;
}

/*
 * A new worker (a reload, a worker that died) starts with the master the
 * instance knew, so that requests need not wait for the first round,
 * which confirms it or moves on at once (and every pool connection asks
 * ROLE anyway).
 */
void seed(ngx_cycle_t *cycle)
{
    State *s = self;
    u_char text[NGX_SOCKADDR_STRLEN + 1];

    u_char host[NGX_MAXHOSTNAMELEN + 1];

    ngx_shmtx_lock(&s->shpool->mutex);
    std::size_t len = ngx_strlen(s->shared->address);
    ngx_memcpy(text, s->shared->address, len);
    ngx_memcpy(host, s->shared->host, sizeof(host));
    ngx_shmtx_unlock(&s->shpool->mutex);

    host[NGX_MAXHOSTNAMELEN] = '\0';

    ngx_addr_t addr;

    if (len == 0 || ngx_parse_addr_port(cycle->pool, &addr, text, len) != NGX_OK
        || addr.socklen > sizeof(ngx_sockaddr_t))
    {
        return;
    }

    ngx_memcpy(&s->master_sockaddr, addr.sockaddr, addr.socklen);
    s->master.sockaddr = reinterpret_cast<sockaddr *>(&s->master_sockaddr);
    s->master.socklen = addr.socklen;
    s->master.name.len = ngx_sock_ntop(s->master.sockaddr, addr.socklen,
                                       s->master_text, NGX_SOCKADDR_STRLEN, 1);
    s->master.name.data = s->master_text;
    set_master_host(reinterpret_cast<char *>(host));
    s->known = true;
}

} // namespace

char *add_zone(ngx_conf_t *cf, ngx_http_session_cache_sentinel_conf_t *scf)
{
    static ngx_str_t name = ngx_string("session_cache_sentinel");

    scf->zone = ngx_shared_memory_add(cf, &name, kZonePages * ngx_pagesize,
                                      &ngx_http_session_cache_module);
    if (scf->zone == nullptr) {
        return const_cast<char *>("cannot add the sentinel zone");
    }

    scf->zone->init = init_zone;
    scf->zone->data = scf;
    return NGX_CONF_OK;
}

void start(ngx_cycle_t *cycle, const ngx_http_session_cache_main_conf_t *smcf)
{
    const ngx_http_session_cache_redis_conf_t *rcf = &smcf->redis;

    if (!rcf->backend.configured || rcf->sentinel == nullptr
        || rcf->sentinel->naddrs == 0)
    {
        return;
    }

    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE)
    {
        return;
    }

    self = new State();
    self->rcf = rcf;
    self->scf = rcf->sentinel;
    self->log = *cycle->log;
    self->l1 = smcf->l1.enabled == 1;
    self->rotation = Rotation(rcf->sentinel->naddrs);

    if (rcf->sentinel->zone != nullptr && rcf->sentinel->shared != nullptr) {
        self->shpool =
            reinterpret_cast<ngx_slab_pool_t *>(rcf->sentinel->zone->shm.addr);
        self->shared = static_cast<Shared *>(rcf->sentinel->shared);
        seed(cycle);
    }

    /* the http block's resolver, if one is configured (else nginx's
     * placeholder without servers: resolve_name() says so); not its
     * timeout (candidate_found()) */
    ngx_msec_t resolver_timeout;
    self->resolver = http_resolver(cycle, &resolver_timeout);

    self->round_ev.handler = on_round;
    self->round_ev.data = self;
    self->round_ev.log = &self->log;
    self->round_ev.cancelable = 1;

    self->tick.handler = on_tick;
    self->tick.data = self;
    self->tick.log = &self->log;
    self->tick.cancelable = 1;

    /* soon, not at once: init_process is no place for I/O */
    ngx_add_timer(&self->round_ev, 1);
    ngx_add_timer(&self->tick, 1);
}

void stop()
{
    State *s = self;

    if (s == nullptr) {
        return;
    }

    if (s->round_ev.timer_set) {
        ngx_del_timer(&s->round_ev);
    }
    if (s->round_ev.posted) {
        ngx_delete_posted_event(&s->round_ev);
    }
    if (s->tick.timer_set) {
        ngx_del_timer(&s->tick);
    }
    if (s->resolving) {
        ngx_resolve_name_done(s->resolving);
    }

    for (Link *l : {s->ask, s->confirm, s->sub}) {
        if (l != nullptr) {
            if (l->peer.connection && l->peer.connection->write->posted) {
                ngx_delete_posted_event(l->peer.connection->write);
            }
            link_close(l);
        }
    }

    self = nullptr;
    delete s;
}

const ngx_addr_t *master()
{
    return self != nullptr && self->known ? &self->master : nullptr;
}

const ngx_str_t &master_host()
{
    static ngx_str_t none = ngx_string("");

    return self != nullptr && self->known ? self->master_host : none;
}

void suspect(const char *why)
{
    if (self == nullptr) {
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &self->log, 0,
                   "session_cache: redis sentinel: asking again: %s", why);
    round_soon(false);
}

void observe(Observer f, void *data)
{
    if (self != nullptr) {
        self->observers.emplace_back(f, data);
    }
}

void unobserve(void *data)
{
    if (self == nullptr) {
        return;
    }

    auto &o = self->observers;

    for (std::size_t i = 0; i < o.size();) {
        if (o[i].second == data) {
            o.erase(o.begin() + i);
        } else {
            i++;
        }
    }
}

View figures()
{
    View v;

    if (self == nullptr) {
        return v;
    }

    v.enabled = true;
    v.master_name.assign(view(self->scf->master));
    if (self->known) {
        v.address.assign(view(self->master.name));
    }
    v.switches = self->switches;
    v.last_switch_ms = self->last_switch_ms;
    v.error = self->error;

    if (self->shared != nullptr) {
        ngx_shmtx_lock(&self->shpool->mutex);
        v.switches = self->shared->switches;
        v.last_switch_ms =
            self->shared->switches ? self->shared->last_switch_ms : -1;
        ngx_shmtx_unlock(&self->shpool->mutex);
    }
    return v;
}

} // namespace session_cache::sentinel
