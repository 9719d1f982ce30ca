/*
 * What both L1 invalidation listeners are made of (SPEC §8, §10): links,
 * each one connection to one Redis node with its handshake (AUTH,
 * SELECT), CLIENT ID, CLIENT TRACKING on REDIRECT <id> BCAST PREFIX
 * <key_prefix>, SUBSCRIBE __redis__:invalidate and a PING every second;
 * over TLS when the Redis configuration has it (rediss://: redis_tls.h,
 * as the pool does); and the Listener that holds them: the lease in the
 * L1 zone (one
 * listener per nginx instance, l1/l1_zone.h), one timer, and L1 armed
 * while every link is. An invalidation drops its keys from L1; the null
 * message, the loss of an armed link, a PING unanswered for 3 s and a
 * reconnection drop the whole L1.
 *
 * redis_listener.cpp is the one-link case (the configured server, or
 * the Sentinel's master); cluster_listener.cpp holds one link per master.
 */
#pragma once

#include "nginx_cpp.h"

#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <hiredis/hiredis.h>

#include "l1/l1_logic.h"

namespace session_cache::listener {

/* Whether this process runs a listener: L1 with tracking=on, in a
 * worker (not the cache manager or loader). */
bool wanted(const ngx_http_session_cache_main_conf_t *smcf);

enum class State { Closed, Connecting, Tls, Handshake, Armed };

/* what the next reply answers, in order */
enum class Expect { Handshake, ClientId, Tracking, Subscribe, Pong };

class Listener;

/*
 * One connection to one Redis node, driven by its Listener's tick and
 * nginx's events. node: the node's address for log lines and reasons
 * ("127.0.0.1:7000"); empty for the one server of redis:// or sentinel://.
 * With TLS (smcf->redis.ssl), the certificate must name tls_name (a host
 * name or an IP literal), which its Listener sets before each connection
 * (Listener::tls_name()).
 */
struct Link {
    explicit Link(Listener *owner, std::string node = {})
        : owner(owner), node(std::move(node))
    {}
    virtual ~Link() { close(); }

    Link(const Link &) = delete;
    Link &operator=(const Link &) = delete;

    /* Connect to addr; TLS (if configured) and the handshake follow on
     * the first write event. */
    void connect(const ngx_addr_t *addr);

    /* The connection goes, the link is Closed (connected again on a
     * tick). */
    void close();

    /* The link is over: why; L1 goes with it if it was armed. logged:
     * the loss has been logged already. */
    void fail(const char *why, l1::FlushReason reason, bool logged);

    /* On a tick: the handshake's deadline, the PING and its answer. */
    void tick(ngx_msec_t now);

    Listener             *owner;
    const std::string     node;
    std::string           tls_name; /* what the certificate must name */
    ngx_peer_connection_t peer{};
    State                 state = State::Closed;
    redisReader          *reader = nullptr;
    std::string           out;
    std::deque<Expect>    expect;
    bool                  ping_out = false;
    ngx_msec_t            ping_sent = 0;
    ngx_msec_t            started = 0;
    ngx_msec_t            next_connect = 0;
    ngx_uint_t            failures = 0; /* connections lost since armed */

private:
    static void on_event(ngx_event_t *ev);
    static void on_tls(ngx_connection_t *c);

    void set_state(State s);
    void refuse(const char *step, std::string_view text);
    void send_command(std::initializer_list<std::string_view> args, Expect e);
    bool pushed(const redisReply *r);
    bool reply(const redisReply *r);
    void read();
    bool parse(const char *buf, std::size_t n);
    void write();
    bool connected();
    void start_tls();
    void tls_done();
    void start_session();
};

/*
 * The listener of one nginx worker: the lease, the links, L1's armed
 * state. Its tick (every second, in every worker) takes or renews the
 * lease; the holder connects its links, times out their handshakes and
 * sends their PINGs; L1's heartbeat is renewed when every link has
 * answered its PING.
 */
class Listener {
public:
    /* In init_process: the first tick soon, not at once (no I/O there). */
    Listener(ngx_cycle_t                              *cycle,
             const ngx_http_session_cache_main_conf_t *smcf);

    /* In exit_process: the timer goes, the lease is let go, the links
     * close. */
    virtual ~Listener();

    Listener(const Listener &) = delete;
    Listener &operator=(const Listener &) = delete;

    /* The timer's work: the lease, then the links. */
    void tick();

protected:
    /* Where link k connects now; nullptr: nowhere yet (the reason set). */
    virtual const ngx_addr_t *peer(Link *k) = 0;

    /* With TLS: the name k's server certificate must carry (and SNI when
     * a host name); by default the configured one (the URL's host, as
     * the pool checks it). */
    virtual std::string tls_name(const Link *k);

    /* Before the links are driven, on a tick while the lease is held:
     * the links follow the topology; false: not this tick. */
    virtual bool follow() { return true; }

    /* Every link armed: L1 may be consulted (flushed first if lost). */
    void arm_if_all();

    /* L1 is no longer kept exact: drop it, consult it no more. */
    void disarm(const std::string &why, l1::FlushReason reason, bool logged);

    /* A PONG on a link: the heartbeat, once every link has answered. */
    void ponged();

    /* Connect k to peer(k), if it names a node. */
    void connect(Link *k);
    void close_links();

    const ngx_http_session_cache_main_conf_t *smcf;
    ngx_log_t                                *log;
    ngx_event_t                               timer{};
    std::vector<std::unique_ptr<Link>>        links;
    bool                                      holder = false;
    bool                                      armed = false;
    bool                                      lost = false; /* was armed */
    std::string                               refused;      /* logged once */

    friend struct Link;
};

} // namespace session_cache::listener
