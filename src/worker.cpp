#include "worker.h"

#include "l1/l1_zone.h"
#include "metrics/metrics.h"
#include "pg/pg_listener.h"
#include "redis/cluster.h"
#include "redis/cluster_listener.h"
#include "redis/redis_listener.h"
#include "redis/sentinel.h"

#include <new>

namespace session_cache {

static RedisPool *redis;
static PgPool    *pg;
static Cluster   *cluster;

RedisPool *redis_pool()
{
    return redis;
}

RedisPool *redis_pool_for(std::string_view key)
{
    return cluster ? cluster->pool_for(key) : redis;
}

Cluster *redis_cluster()
{
    return cluster;
}

PgPool *pg_pool()
{
    return pg;
}

ngx_resolver_t *http_resolver(ngx_cycle_t *cycle, ngx_msec_t *timeout)
{
    auto *ctx = reinterpret_cast<ngx_http_conf_ctx_t *>(
        cycle->conf_ctx[ngx_http_module.index]);

    if (ctx == nullptr) {
        return nullptr;
    }

    auto *clcf = static_cast<ngx_http_core_loc_conf_t *>(
        ctx->loc_conf[ngx_http_core_module.ctx_index]);

    if (clcf == nullptr) {
        return nullptr;
    }

    /* the http block's own is merged into no one: unset unless written
     * there; nginx's default then */
    *timeout = clcf->resolver_timeout == NGX_CONF_UNSET_MSEC
                   ? 30000
                   : clcf->resolver_timeout;
    return clcf->resolver;
}

bool resolve_name(ngx_resolver_t *resolver, std::string &host,
                  ngx_msec_t timeout, ngx_resolver_handler_pt handler,
                  void *data, ngx_resolver_ctx_t **resolving, const char **why)
{
    ngx_resolver_ctx_t *ctx =
        resolver ? ngx_resolve_start(resolver, nullptr) : nullptr;

    if (ctx == nullptr || ctx == NGX_NO_RESOLVER) {
        *why = "no resolver is configured (add nginx's \"resolver\" to the "
               "http block)";
        return false;
    }

    ctx->name.data = reinterpret_cast<u_char *>(&host[0]);
    ctx->name.len = host.size();
    ctx->handler = handler;
    ctx->data = data;
    ctx->timeout = timeout;
    *resolving = ctx;

    if (ngx_resolve_name(ctx) != NGX_OK) {
        /* nginx has freed the context */
        *resolving = nullptr;
        *why = "nginx's resolver cannot ask for it";
        return false;
    }

    return true;
}

socklen_t resolved_address(const ngx_resolver_ctx_t *ctx, int port,
                           ngx_sockaddr_t *sa)
{
    if (ctx->state || ctx->naddrs == 0) {
        return 0;
    }

    socklen_t len = ctx->addrs[0].socklen;

    ngx_memcpy(sa, ctx->addrs[0].sockaddr, len);
    ngx_inet_set_port(&sa->sockaddr, static_cast<in_port_t>(port));
    return len;
}

} // namespace session_cache

extern "C" ngx_int_t
ngx_http_session_cache_init_worker(ngx_cycle_t                        *cycle,
                                   ngx_http_session_cache_main_conf_t *smcf)
{
    using namespace session_cache;

    breaker_start(&smcf->breaker);
    metrics_attach(cycle, smcf->metrics_zone);
    l1::start(smcf);

    try {
        /* sentinel://: before the pool, which asks it for the master */
        sentinel::start(cycle, smcf);

        if (smcf->redis.backend.configured && smcf->redis.cluster) {
            cluster = new Cluster(cycle, &smcf->redis);
            redis = cluster->seeds();
            cluster->start();

        } else if (smcf->redis.backend.configured) {
            redis = new RedisPool(cycle, &smcf->redis);
        }

        if (smcf->pg.backend.configured) {
            pg = new PgPool(cycle, &smcf->pg, &smcf->query);
        }

        if (cluster) {
            cluster_listener_start(cycle, smcf, cluster);
        } else {
            listener_start(cycle, smcf);
        }
        revocation_start(cycle, smcf);

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "session_cache: cannot create the pools: %s", e.what());
        return NGX_ERROR;
    }

    return NGX_OK;
}

extern "C" void ngx_http_session_cache_exit_worker(ngx_cycle_t *cycle)
{
    using namespace session_cache;

    try {
        listener_stop();
        cluster_listener_stop();
        revocation_stop(); /* before the pools: it sends through Redis's */
        if (cluster) {
            delete cluster; /* and its seeds' pool, redis */
        } else {
            delete redis;
        }
        delete pg;
        sentinel::stop();

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, cycle->log, 0, "session_cache: exit: %s",
                      e.what());
    }

    redis = nullptr;
    pg = nullptr;
    cluster = nullptr;

    breaker_stop();
    metrics_detach();
    l1::stop();
}
