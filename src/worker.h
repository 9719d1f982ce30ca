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

} // namespace session_cache
