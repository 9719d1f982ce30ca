/*
 * Redis Cluster, per worker (SPEC §10): the slot map, one RedisPool per
 * master node, and the router the check asks for a key's pool.
 *
 * The map comes from CLUSTER SLOTS, asked of a known node (or, when none
 * answers, of the seeds from the configuration) at start, every
 * kRefresh, after a failed refresh every kRetry, and at once when a MOVED
 * names an owner the map does not know yet: at most one refresh in
 * flight, and one more after it when something asked meanwhile.
 *
 * MOVED and ASK are followed once per command, on the node's pool they
 * name (ASK with ASKING before the command), from within the pool that
 * got them (RedisPool::set_cluster): the job keeps its identity, so the
 * check's cancel() and its callback are untouched. A second redirection,
 * TRYAGAIN, CLUSTERDOWN and a node that cannot be reached are the
 * command's failure: the check goes to Postgres (BYPASS).
 *
 * Each node pool has a breaker of its own, in the shared zone by the
 * node's address (breaker_for_node()): a master that fails or hangs
 * sends its own slots to postgres, never the others'. The node pools sum
 * their figures into the health document's Redis pool.
 *
 * A node the cluster names by a host name (cluster-announce-hostname with
 * cluster-preferred-endpoint-type hostname) is resolved through nginx's
 * resolver (the http block's "resolver"), never with a blocking call,
 * when it is first met; a name that did not resolve is tried again at
 * each refresh of the map. Its slots go to postgres until it has a pool.
 * A named master its pool cannot reach is resolved again (once per
 * kDownFor): a new address replaces the old one, its connections go, and
 * L1 is dropped as for any change of topology.
 */
#pragma once

#include "redis/cluster_slots.h"
#include "redis/redis_pool.h"

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace session_cache {

class Cluster {
public:
    Cluster(ngx_cycle_t                               *cycle,
            const ngx_http_session_cache_redis_conf_t *conf);
    ~Cluster();

    Cluster(const Cluster &) = delete;
    Cluster &operator=(const Cluster &) = delete;

    /* The first CLUSTER SLOTS. */
    void start();

    /* The pool of the master that serves key's slot; nullptr while no
     * reachable master serves it (no map yet, a slot nobody serves, a
     * master known by a host name not resolved (yet), a master whose
     * connection failed less than kDownFor ago). */
    RedisPool *pool_for(std::string_view key);

    /* The first seed's pool (the seeds are asked for the map when no
     * node answers). */
    RedisPool *seeds() const { return seeds_.front()->pool; }

    struct Node {
        std::string address; /* "127.0.0.1:7000" */
        std::string display; /* for the pool's log lines */
        std::string error;   /* why it has no pool */
        std::string host;    /* as CLUSTER SLOTS or MOVED gave it: an IP
                              * literal, or a name; conf.tls_name's text */
        int         port = 0;
        std::size_t slots = 0;
        RedisPool  *pool = nullptr;
        BreakerId   breaker = breaker_id(Backend::Redis); /* its own */

        /* a name (cluster-announce-hostname): nginx's resolver, then the
         * pool; until then its slots go to postgres. Asked again when its
         * pool cannot reach it (at most once per kDownFor): a node that
         * comes back (a pod restarted) may have another address; moves
         * counts the changes (the L1 listener's link follows them). */
        Cluster            *cluster = nullptr;
        bool                named = false;
        ngx_resolver_ctx_t *resolving = nullptr;
        ngx_msec_t          resolved_at = 0; /* when last asked */
        std::uint64_t       moves = 0;

        ngx_sockaddr_t                      sockaddr;
        ngx_addr_t                          addr;
        ngx_http_session_cache_redis_conf_t conf;
    };

    /* Every node met so far: the map's masters and those a redirection
     * named; slots: how many the map gives it. */
    const std::vector<std::unique_ptr<Node>> &nodes() const { return nodes_; }

    bool        mapped() const { return !map_->empty(); }
    std::size_t covered() const { return map_->covered(); }

    /* Why the last refresh failed (empty: it did not), in the module's
     * and Redis's error-code words; never a password. */
    const std::string &error() const { return error_; }

    /* The map's number: it grows with every change of the map, and when
     * a master known by a host name gets its pool or a new address. */
    std::uint64_t generation() const { return generation_; }

    /* Told of every change of the map but the first (the L1 listener:
     * drop L1 on any change of topology, SPEC §10). */
    void on_topology(void (*fn)(void *data), void *data)
    {
        topology_ = fn;
        topology_data_ = data;
    }

    static constexpr ngx_msec_t kRefresh = 10000;
    static constexpr ngx_msec_t kDownFor = 1000;
    static constexpr ngx_msec_t kRetry = 1000;

private:
    void  refresh(const char *why);
    void  ask();
    void  asked(const RedisReply *reply, const char *error);
    void  failed(const std::string &why);
    void  apply(std::unique_ptr<SlotMap> map);
    Node *node(const std::string &address, const std::string &host, int port);
    void  resolve(Node *n);
    void  unusable(Node *n, std::string why);
    void  open(Node *n);
    void  publish();

    static void on_slots(void *data, const RedisReply *reply,
                         const char *error);
    static bool on_redirect(void *data, RedisPool *from, RedisJob *job,
                            std::string_view error);
    static void on_changed(void *data);
    static void on_timer(ngx_event_t *ev);
    static void on_resolved(ngx_resolver_ctx_t *ctx);

    ngx_cycle_t                               *cycle_;
    const ngx_http_session_cache_redis_conf_t *conf_;
    ngx_log_t                                  log_;
    ngx_resolver_t                            *resolver_ = nullptr;
    ngx_msec_t                                 resolver_timeout_ = 0;
    /* one pool per seed address, on a copy of the configuration that
     * names that address alone and, for TLS, the seed's host as written */
    struct Seed {
        RedisPool                          *pool = nullptr;
        ngx_http_session_cache_redis_conf_t conf;
    };
    std::vector<std::unique_ptr<Seed>> seeds_;
    std::vector<std::unique_ptr<Node>> nodes_;
    std::unique_ptr<SlotMap>           map_;
    std::vector<Node *>                by_index_; /* map_->nodes() */

    RedisJob   *refresh_job_ = nullptr;
    bool        again_ = false; /* asked for while one was in flight */
    std::size_t attempt_ = 0;   /* candidates tried in this refresh */
    std::string error_;
    std::string logged_; /* the last error logged */
    ngx_event_t timer_;
    bool        stopping_ = false;

    std::uint64_t generation_ = 0;
    void (*topology_)(void *data) = nullptr;
    void *topology_data_ = nullptr;
};

} // namespace session_cache
