/*
 * The invalidation listener: see redis_listener.h. The one-link case of
 * listener_link.h: its node is the configured server, or the master the
 * Sentinel names (followed on a switch). Over TLS with rediss://, its
 * certificate checked against the URL's host, as the pool's are.
 */
#include "redis/redis_listener.h"

#include "l1/l1_zone.h"
#include "redis/listener_link.h"
#include "redis/sentinel.h"

namespace session_cache {

namespace {

class ServerListener : public listener::Listener {
public:
    ServerListener(ngx_cycle_t                              *cycle,
                   const ngx_http_session_cache_main_conf_t *smcf)
        : Listener(cycle, smcf)
    {
        links.push_back(std::make_unique<listener::Link>(this));
        sentinel::observe(on_master, this);
    }

    ~ServerListener() override { sentinel::unobserve(this); }

    /*
     * sentinel://: another master. The listener leaves the old one at
     * once and listens on the new one (L1 is disarmed until then, and
     * the sentinel code drops it: topology).
     */
    void master_changed()
    {
        if (!holder) {
            return;
        }

        if (armed) {
            l1::set_armed(ngx_pid, false);
            armed = false;
        }

        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, log, 0,
                       "session_cache: l1 listener follows the new redis "
                       "master");

        listener::Link *k = links.front().get();

        k->close();
        lost = false; /* the topology flush covers what passed */
        k->failures = 0;
        k->next_connect = 0;
        connect(k);
    }

protected:
    static void on_master(void *data)
    {
        static_cast<ServerListener *>(data)->master_changed();
    }

    const ngx_addr_t *peer(listener::Link *) override
    {
        const ngx_http_session_cache_redis_conf_t *rcf = &smcf->redis;

        if (rcf->sentinel == nullptr) {
            return &rcf->addrs[0];
        }

        /* sentinel://: the master the pool uses, once one is known */
        const ngx_addr_t *addr = sentinel::master();

        if (addr == nullptr) {
            l1::set_reason("listener: no redis master known yet (sentinel)");
        }

        return addr;
    }

    /*
     * rediss://: the URL's host (conf->tls_name), as the pool checks it.
     * With sentinel://, the name for the master is what the pool uses for
     * it too: today conf->tls_name; where Sentinel gives a name of its
     * own for the master, return it here.
     */
    std::string tls_name(const listener::Link *k) override
    {
        return Listener::tls_name(k);
    }
};

ServerListener *self;

} // namespace

void listener_start(ngx_cycle_t                              *cycle,
                    const ngx_http_session_cache_main_conf_t *smcf)
{
    if (listener::wanted(smcf) && smcf->redis.backend.configured
        && (smcf->redis.naddrs != 0 || smcf->redis.sentinel != nullptr))
    {
        self = new ServerListener(cycle, smcf);
    }
}

void listener_stop()
{
    delete self;
    self = nullptr;
}

} // namespace session_cache
