/*
 * The L1 invalidation listener for Redis Cluster (SPEC §8, §10;
 * session_cache_l1 tracking=on with redis-cluster://): what
 * redis_listener.h does for one server, once per master. Held by the
 * worker that holds the lease in the L1 zone, which follows its own slot
 * map (redis/cluster.h): a connection to each master, each with the
 * handshake, CLIENT ID, CLIENT TRACKING on REDIRECT <id> BCAST PREFIX
 * <key_prefix> and SUBSCRIBE __redis__:invalidate, then a PING every
 * second. L1 is armed while every master's connection is; the loss of
 * any of them, a PING unanswered for 3 s, and any change of the map in
 * any worker drop the whole L1 (reasons listener_lost, heartbeat,
 * topology).
 */
#pragma once

#include "nginx_cpp.h"

namespace session_cache {

class Cluster;

/* Per worker, in init_process and exit_process. */
void cluster_listener_start(ngx_cycle_t                              *cycle,
                            const ngx_http_session_cache_main_conf_t *smcf,
                            Cluster                                  *cluster);
void cluster_listener_stop();

} // namespace session_cache
