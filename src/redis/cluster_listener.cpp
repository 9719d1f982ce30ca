/*
 * The invalidation listener of a Redis Cluster: see cluster_listener.h.
 * listener_link.h's listener with one link per master of this worker's
 * slot map; L1 is armed while every link is. With TLS (rediss-cluster://),
 * each link checks its master's certificate against the master's host as
 * CLUSTER SLOTS gave it (an IP literal or a host name).
 */
#include "redis/cluster_listener.h"

#include <memory>
#include <string>
#include <vector>

#include "l1/l1_zone.h"
#include "redis/cluster.h"
#include "redis/listener_link.h"

namespace session_cache {

namespace {

/* A master's link. */
struct MasterLink : listener::Link {
    MasterLink(listener::Listener *owner, const Cluster::Node *node)
        : Link(owner, node->address), master(node), moves(node->moves)
    {}

    const Cluster::Node *master;
    std::uint64_t        moves; /* the node's address when it was made */
};

class ClusterListener : public listener::Listener {
public:
    ClusterListener(ngx_cycle_t                              *cycle,
                    const ngx_http_session_cache_main_conf_t *smcf,
                    Cluster                                  *cluster)
        : Listener(cycle, smcf), cluster_(cluster)
    {
        cluster->on_topology(on_topology, this);
    }

    ~ClusterListener() override { cluster_->on_topology(nullptr, nullptr); }

protected:
    /* Any worker's map changed: L1 goes (SPEC §10). */
    static void on_topology(void *data)
    {
        auto *l = static_cast<ClusterListener *>(data);

        l1::flush(l1::FlushReason::Topology, l->log);
    }

    const ngx_addr_t *peer(listener::Link *k) override
    {
        return &static_cast<MasterLink *>(k)->master->addr;
    }

    /* the master's host as CLUSTER SLOTS or MOVED gave it, as its pool
     * checks it (Cluster::Node::host) */
    std::string tls_name(const listener::Link *k) override
    {
        return static_cast<const MasterLink *>(k)->master->host;
    }

    bool follow() override
    {
        if (!cluster_->mapped()) {
            l1::set_reason("listener: no slot map yet");
            return false;
        }

        follow_map();
        return true;
    }

private:
    void follow_map();

    Cluster      *cluster_;
    std::uint64_t generation_ = 0; /* of the map the links follow */
};

/* The links follow the masters of this worker's map. */
void ClusterListener::follow_map()
{
    if (cluster_->generation() == generation_) {
        return;
    }

    generation_ = cluster_->generation();

    std::vector<std::unique_ptr<listener::Link>> kept;
    std::string                                  unusable;
    bool                                         changed = false;

    for (const auto &n : cluster_->nodes()) {
        if (n->slots == 0) {
            continue;
        }

        if (n->pool == nullptr) {
            unusable = n->address + ": " + n->error;
            continue;
        }

        std::unique_ptr<listener::Link> k;

        /* its link, unless the master has moved since (a new address:
         * the old link goes below) */
        for (auto &old : links) {
            auto *m = static_cast<MasterLink *>(old.get());

            if (m && m->master == n.get() && m->moves == n->moves) {
                k = std::move(old);
                break;
            }
        }

        if (!k) {
            k = std::make_unique<MasterLink>(this, n.get());
            changed = true;
        }

        kept.push_back(std::move(k));
    }

    /* masters no more */
    for (auto &old : links) {
        if (old) {
            old->close();
            changed = true;
        }
    }

    links = std::move(kept);

    if (!unusable.empty()) {
        links.clear();
        disarm(unusable, l1::FlushReason::Topology, true);
        return;
    }

    /* a new master: L1 waits for its link (the change of the map has
     * dropped L1 already, in the worker that saw it) */
    if (changed && armed) {
        l1::set_armed(ngx_pid, false);
        armed = false;
        l1::set_reason("listener: the masters changed");
    }

    arm_if_all();
}

ClusterListener *self;

} // namespace

void cluster_listener_start(ngx_cycle_t                              *cycle,
                            const ngx_http_session_cache_main_conf_t *smcf,
                            Cluster                                  *cluster)
{
    if (listener::wanted(smcf) && cluster != nullptr) {
        self = new ClusterListener(cycle, smcf, cluster);
    }
}

void cluster_listener_stop()
{
    delete self;
    self = nullptr;
}

} // namespace session_cache
