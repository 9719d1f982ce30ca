/* The per-worker pools, created in init_process, gone in exit_process. */
#pragma once

#include "pg/pg_pool.h"
#include "redis/redis_pool.h"

namespace session_cache {

RedisPool *redis_pool(); /* nullptr when Redis is not configured */
PgPool    *pg_pool();    /* nullptr when Postgres is not configured */

} // namespace session_cache
