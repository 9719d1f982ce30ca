/* The per-worker pools, created in init_process, gone in exit_process. */
#pragma once

#include "pg/pg_pool.h"
#include "redis/redis_pool.h"

#include <string>
#include <string_view>

namespace session_cache {

RedisPool *redis_pool(); /* nullptr when Redis is not configured; a
                          * cluster's: the seeds' pool */

/* The pool for key: redis_pool(), or with redis-cluster:// the pool of
 * the master serving key's slot (nullptr while none can: Postgres). */
RedisPool *redis_pool_for(std::string_view key);

class Cluster;
Cluster *redis_cluster(); /* nullptr unless redis-cluster:// */
PgPool  *pg_pool();       /* nullptr when Postgres is not configured */

/* The http block's resolver and its resolver_timeout, for a name learned
 * at run time (a sentinel's, a cluster node's): nginx's placeholder
 * without servers when no "resolver" is configured (ngx_resolve_start
 * then answers NGX_NO_RESOLVER), nullptr without an http block. */
ngx_resolver_t *http_resolver(ngx_cycle_t *cycle, ngx_msec_t *timeout);

/*
 * Ask resolver (http_resolver()'s) for host's address, on nginx's events.
 * *resolving is the question until handler(ctx) is called with ctx->data
 * = data (perhaps before this returns: an answer nginx has cached);
 * handler clears *resolving and calls ngx_resolve_name_done(ctx). host
 * stays where it is until then. false: not asked, *why says so ("no
 * resolver is configured (...)", ...).
 */
bool resolve_name(ngx_resolver_t *resolver, std::string &host,
                  ngx_msec_t timeout, ngx_resolver_handler_pt handler,
                  void *data, ngx_resolver_ctx_t **resolving, const char **why);

/* In a resolve_name() handler: the first address of the answer, with
 * port, in *sa; its length, or 0 when there is no answer. */
socklen_t resolved_address(const ngx_resolver_ctx_t *ctx, int port,
                           ngx_sockaddr_t *sa);

} // namespace session_cache
