/* The per-worker pools, created in init_process, gone in exit_process. */
#pragma once

#include "pg/pg_pool.h"
#include "redis/redis_pool.h"

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

} // namespace session_cache
