#include "redis/cluster.h"

#include "guarded.h"
#include "metrics/metrics.h"
#include "redis/redis_url.h"
#include "redis/resp.h"
#include "worker.h"

#include <cstdlib>
#include <cstring>
#include <new>

namespace session_cache {

Cluster::Cluster(ngx_cycle_t                               *cycle,
                 const ngx_http_session_cache_redis_conf_t *conf)
    : cycle_(cycle), conf_(conf), map_(new SlotMap())
{
    log_ = *cycle->log;

    ngx_memzero(&timer_, sizeof(timer_));
    timer_.handler = on_timer;
    timer_.data = this;
    timer_.log = cycle->log;
    /* a worker shutting down does not wait for the next refresh */
    timer_.cancelable = 1;

    /* for nodes known by a host name */
    resolver_ = http_resolver(cycle, &resolver_timeout_);

    /* the configuration has at least one seed address (conf.cpp) */
    for (ngx_uint_t i = 0; i < conf->naddrs; i++) {
        auto seed = std::make_unique<Seed>();

        seed->conf = *conf;
        seed->conf.addrs = &conf->addrs[i];
        seed->conf.naddrs = 1;

        if (conf->seed_names != nullptr) {
            seed->conf.tls_name = conf->seed_names[i];
        }

        seed->pool = new RedisPool(cycle, &seed->conf);
        seeds_.push_back(std::move(seed));
        seeds_.back()->pool->set_cluster(nullptr, on_changed, this);
    }
}

Cluster::~Cluster()
{
    stopping_ = true;

    if (timer_.timer_set) {
        ngx_del_timer(&timer_);
    }

    /* their jobs go without an answer (refresh_job_ among them) */
    refresh_job_ = nullptr;

    for (auto &n : nodes_) {
        if (n->resolving != nullptr) {
            ngx_resolve_name_done(n->resolving);
            n->resolving = nullptr;
        }

        delete n->pool;
        n->pool = nullptr;
    }

    /* a pool going tells on_changed(): publish() skips the ones gone */
    for (auto &seed : seeds_) {
        RedisPool *pool = seed->pool;
        seed->pool = nullptr;
        delete pool;
    }
}

void Cluster::start()
{
    refresh("start");
}

RedisPool *Cluster::pool_for(std::string_view key)
{
    std::uint16_t i = map_->node_of(key_slot(key));

    if (i == SlotMap::kNone) {
        return nullptr;
    }

    RedisPool *pool = by_index_[i]->pool;

    /* a master that refused a connection or let it time out: its slots
     * go to postgres for kDownFor, without a connect() (and its error
     * line) per request, nor a breaker failure for the others' share */
    if (pool != nullptr && pool->unreachable_within(kDownFor)) {
        Node *n = by_index_[i];

        /* known by a name: it may be back elsewhere (a pod restarted) */
        if (n->named && n->resolving == nullptr
            && ngx_current_msec - n->resolved_at >= kDownFor)
        {
            resolve(n);
        }

        return nullptr;
    }

    return pool;
}

void Cluster::refresh(const char *why)
{
    if (stopping_) {
        return;
    }

    if (refresh_job_ != nullptr) {
        again_ = true;
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &log_, 0,
                   "session_cache: redis cluster: refreshing the slot map "
                   "(%s)",
                   why);

    if (timer_.timer_set) {
        ngx_del_timer(&timer_);
    }

    again_ = false;
    attempt_ = 0;
    ask();
}

/* CLUSTER SLOTS to the next candidate: the map's masters in turn, then
 * each seed address once. */
void Cluster::ask()
{
    std::size_t candidates = by_index_.size() + seeds_.size();

    while (attempt_ < candidates) {
        RedisPool *pool = attempt_ < by_index_.size()
                              ? by_index_[attempt_]->pool
                              : seeds_[attempt_ - by_index_.size()]->pool;
        attempt_++;

        if (pool == nullptr) {
            continue;
        }

        std::string cmd;
        resp_append(&cmd, {"CLUSTER", "SLOTS"});

        const char *error = nullptr;
        refresh_job_ =
            pool->submit_probe(std::move(cmd), on_slots, this, &error);

        if (refresh_job_ != nullptr) {
            return;
        }

        error_ = std::string("CLUSTER SLOTS: ") + (error ? error : "not sent");
    }

    failed(error_.empty() ? "no node answers" : error_);
}

void Cluster::on_slots(void *data, const RedisReply *reply, const char *error)
{
    auto *self = static_cast<Cluster *>(data);

    self->refresh_job_ = nullptr;

    guarded(&self->log_, "redis cluster", [&] { self->asked(reply, error); });
}

void Cluster::asked(const RedisReply *reply, const char *error)
{
    std::string why;

    if (error != nullptr) {
        why = std::string("CLUSTER SLOTS: ") + error;

    } else if (reply->type == REDIS_REPLY_ERROR) {
        /* "ERR This instance has cluster support disabled": a plain
         * Redis, not a cluster node */
        why = "CLUSTER SLOTS refused: " + std::string(reply->str, reply->len)
              + " (is this a Redis Cluster?)";

    } else {
        auto map = std::make_unique<SlotMap>();

        if (map->build(reply->ranges, reply->nranges, &why)) {
            apply(std::move(map));

            /* a master known by a name that did not resolve: again */
            for (Node *n : by_index_) {
                if (n->pool == nullptr && n->resolving == nullptr && n->named) {
                    resolve(n);
                }
            }
            error_.clear();
            logged_.clear();

            if (again_) {
                refresh("asked for meanwhile");
            } else {
                ngx_add_timer(&timer_, kRefresh);
            }
            return;
        }
    }

    error_ = why;

    if (!stopping_) {
        ask();
    }
}

/* No candidate gave a map: say so (once per cause), try again soon. */
void Cluster::failed(const std::string &why)
{
    error_ = why;

    if (why != logged_) {
        ngx_log_error(NGX_LOG_ERR, &log_, 0,
                      "session_cache: redis cluster: no slot map: %s, "
                      "backend: %V",
                      why.c_str(), &conf_->backend.display);
        logged_ = why;
    }

    if (!stopping_ && !timer_.timer_set) {
        ngx_add_timer(&timer_, kRetry);
    }
}

void Cluster::apply(std::unique_ptr<SlotMap> map)
{
    if (!map_->empty() && map_->same(*map)) {
        return;
    }

    std::vector<Node *> by_index;

    for (const std::string &address : map->nodes()) {
        std::size_t colon = address.rfind(':');
        std::string host = address.substr(0, colon);
        int         port = std::atoi(address.c_str() + colon + 1);

        if (!host.empty() && host.front() == '[') {
            host = host.substr(1, host.size() - 2);
        }

        by_index.push_back(node(address, host, port));
    }

    for (auto &n : nodes_) {
        n->slots = 0;
    }

    for (std::size_t i = 0; i < by_index.size(); i++) {
        by_index[i]->slots = map->slots_of(i);
    }

    bool first = map_->empty();

    map_ = std::move(map);
    by_index_ = std::move(by_index);
    generation_++;

    ngx_uint_t level = first ? NGX_LOG_NOTICE : NGX_LOG_INFO;

    ngx_log_error(level, &log_, 0,
                  "session_cache: redis cluster: slot map %s: %uz masters, "
                  "%uz of 16384 slots served",
                  first ? "loaded" : "changed", by_index_.size(),
                  map_->covered());

    publish();

    if (!first && topology_ != nullptr) {
        topology_(topology_data_);
    }
}

/* The node known by address, made when new: its pool at once for an IP
 * address, after nginx's resolver has answered for a host name. */
Cluster::Node *Cluster::node(const std::string &address,
                             const std::string &host, int port)
{
    for (auto &n : nodes_) {
        if (n->address == address) {
            return n.get();
        }
    }

    auto n = std::make_unique<Node>();
    n->address = address;
    n->host = host;
    n->port = port;
    n->cluster = this;
    n->named = !is_ip_literal(host);
    n->display = "redis cluster node " + address;

    ngx_memzero(&n->sockaddr, sizeof(n->sockaddr));
    nodes_.push_back(std::move(n));

    Node *node = nodes_.back().get();

    if (ip_sockaddr(host, port, &node->sockaddr.sockaddr, &node->addr.socklen))
    {
        open(node);
    } else {
        resolve(node);
    }

    return node;
}

/* A node known by a host name: ask nginx's resolver for its address. */
void Cluster::resolve(Node *n)
{
    const char *why;

    n->resolved_at = ngx_current_msec;

    if (!resolve_name(resolver_, n->host, resolver_timeout_, on_resolved, n,
                      &n->resolving, &why))
    {
        if (n->pool == nullptr) { /* else the address it has stays */
            unusable(n, std::string("known by a host name, and ") + why);
        }
        return;
    }

    /* on its way (not answered at once from nginx's cache); a reason
     * given before stays until the answer, so that it is said once */
    if (n->resolving != nullptr && n->pool == nullptr && n->error.empty()) {
        n->error = "known by a host name, being resolved";
    }
}

/* Why node n has no pool: said at error when it changes. */
void Cluster::unusable(Node *n, std::string why)
{
    if (why != n->error) {
        ngx_log_error(NGX_LOG_ERR, &log_, 0,
                      "session_cache: redis cluster: node %s is %s; its "
                      "slots go to postgres",
                      n->address.c_str(), why.c_str());
    }
    n->error = std::move(why);
}

void Cluster::on_resolved(ngx_resolver_ctx_t *ctx)
{
    auto    *n = static_cast<Node *>(ctx->data);
    Cluster *self = n->cluster;

    n->resolving = nullptr;

    guarded(&self->log_, "redis cluster resolver", [&] {
        ngx_sockaddr_t sa;
        socklen_t      len = resolved_address(ctx, n->port, &sa);
        const char    *failed = ngx_resolver_strerror(ctx->state);

        ngx_resolve_name_done(ctx);

        if (len == 0 && n->pool != nullptr) {
            /* asked again for a master that cannot be reached: it keeps
             * the address it has */
            ngx_log_error(NGX_LOG_INFO, &self->log_, 0,
                          "session_cache: redis cluster: node %s did not "
                          "resolve again (%s); its address is kept",
                          n->address.c_str(), failed);
            return;
        }

        if (len == 0) {
            self->unusable(n, std::string("known by a host name that did "
                                          "not resolve (")
                                  + failed
                                  + "); asked again at the next "
                                    "refresh");
            return;
        }

        if (n->pool != nullptr
            && ngx_cmp_sockaddr(&sa.sockaddr, len, &n->sockaddr.sockaddr,
                                n->addr.socklen, 1)
                   == NGX_OK)
        {
            return; /* the same address: it is down there */
        }

        u_char was[NGX_SOCKADDR_STRLEN], now[NGX_SOCKADDR_STRLEN];
        size_t wn = n->pool
                        ? ngx_sock_ntop(&n->sockaddr.sockaddr, n->addr.socklen,
                                        was, NGX_SOCKADDR_STRLEN, 1)
                        : 0;
        size_t tn =
            ngx_sock_ntop(&sa.sockaddr, len, now, NGX_SOCKADDR_STRLEN, 1);

        ngx_memcpy(&n->sockaddr, &sa, len);
        n->addr.socklen = len;

        if (n->pool == nullptr) {
            ngx_log_error(NGX_LOG_NOTICE, &self->log_, 0,
                          "session_cache: redis cluster: node %s resolved "
                          "to %*s",
                          n->address.c_str(), tn, now);
            n->error.clear();
            self->open(n);
            self->publish();

        } else {
            /* back elsewhere: what L1 holds may have missed invalidations
             * (topology, as for a master that moved) */
            ngx_log_error(NGX_LOG_NOTICE, &self->log_, 0,
                          "session_cache: redis cluster: node %s now "
                          "resolves to %*s (was %*s); its connections to "
                          "the old address are closed",
                          n->address.c_str(), tn, now, wn, was);
            n->moves++;
            n->pool->address_changed("the node's address changed");

            if (self->topology_ != nullptr) {
                self->topology_(self->topology_data_);
            }
        }

        /* the L1 listener follows the masters that have a pool, at their
         * address */
        self->generation_++;
    });
}

/* The node's pool, on its socket address. */
void Cluster::open(Node *n)
{
    n->addr.sockaddr = &n->sockaddr.sockaddr;
    n->addr.name.len = n->address.size();
    n->addr.name.data =
        reinterpret_cast<u_char *>(const_cast<char *>(n->address.data()));

    /* the configuration's, but this one address and its own name; with
     * TLS the certificate must name the node as the cluster does (an IP
     * literal is checked against its IP addresses, a name as a host
     * name), never the seed's name */
    n->conf = *conf_;
    n->conf.addrs = &n->addr;
    n->conf.naddrs = 1;
    n->conf.seed_names = nullptr;
    n->conf.backend.display.len = n->display.size();
    n->conf.backend.display.data =
        reinterpret_cast<u_char *>(const_cast<char *>(n->display.data()));
    n->conf.tls_name.len = n->host.size();
    n->conf.tls_name.data =
        reinterpret_cast<u_char *>(const_cast<char *>(n->host.c_str()));

    n->pool = new RedisPool(cycle_, &n->conf);
    n->pool->set_cluster(on_redirect, on_changed, this);

    /* its own breaker: a node that fails cuts off its own slots only */
    n->breaker = breaker_for_node(n->address.c_str(), &log_);
    n->pool->use_breaker(n->breaker);
}

/*
 * An error reply on a node's pool: MOVED or ASK is followed here, once;
 * anything else (TRYAGAIN, CLUSTERDOWN, a second redirection) is the
 * command's to report.
 */
bool Cluster::on_redirect(void *data, RedisPool *from, RedisJob *job,
                          std::string_view error)
{
    auto    *self = static_cast<Cluster *>(data);
    Redirect r;

    if (!parse_redirect(error, &r)) {
        return false;
    }

    count(r.ask ? Counter::Asks : Counter::Moved);

    std::string address = node_address(r.host, r.port);

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, &self->log_, 0,
                   "session_cache: redis cluster: %s slot %ui to %s%s",
                   r.ask ? "ASK" : "MOVED", r.slot, address.c_str(),
                   job->redirected ? ", a second redirection: not followed"
                                   : "");

    if (!r.ask) {
        std::uint16_t i = self->map_->node_of(r.slot);

        /* the map does not know it yet: once per change */
        if (i == SlotMap::kNone || self->map_->nodes()[i] != address) {
            self->refresh("MOVED");
        }
    }

    if (job->redirected) {
        /* at most one redirection per command: its caller goes to
         * postgres, and the map is on its way */
        ngx_log_error(NGX_LOG_INFO, &self->log_, 0,
                      "session_cache: redis cluster: a second redirection "
                      "(%s slot %ui to %s) not followed",
                      r.ask ? "ASK" : "MOVED", r.slot, address.c_str());
        return false;
    }

    if (job->done == nullptr || r.host.empty()) {
        return false;
    }

    Node *n = self->node(address, r.host, r.port);

    if (n->pool == nullptr) {
        return false;
    }

    from->release(job);
    job->redirected = true;
    job->asking = r.ask;

    RedisDone   done = job->done;
    void       *d = job->data;
    const char *why = nullptr;

    /* on failure the job is gone: its caller hears why */
    if (!n->pool->resume(job, &why) && done) {
        done(d, nullptr, why ? why : "redirection failed");
    }

    return true;
}

/* A node pool's figures changed: the document's Redis pool is their sum. */
void Cluster::on_changed(void *data)
{
    static_cast<Cluster *>(data)->publish();
}

void Cluster::publish()
{
    PoolFigures sum;

    auto add = [&sum](RedisPool *p) {
        sum.size += p->connections();
        sum.available += p->idle();
        sum.pending += p->waiting();
    };

    for (auto &seed : seeds_) {
        if (seed->pool) {
            add(seed->pool);
        }
    }

    for (auto &n : nodes_) {
        if (n->pool) {
            add(n->pool);
        }
    }

    sum.max = conf_->backend.pool * (by_index_.empty() ? 1 : by_index_.size());
    publish_pool(Backend::Redis, sum);
}

void Cluster::on_timer(ngx_event_t *ev)
{
    auto *self = static_cast<Cluster *>(ev->data);

    guarded(&self->log_, "redis cluster timer",
            [&] { self->refresh("timer"); });
}

} // namespace session_cache
