/*
 * The invalidation listener (SPEC §8, session_cache_l1 tracking=on): one
 * Redis connection per nginx instance, held by the worker that holds the
 * lease in the L1 zone (l1/l1_zone.h). On it: the handshake (AUTH,
 * SELECT), CLIENT ID, CLIENT TRACKING on REDIRECT <id> BCAST PREFIX
 * <key_prefix>, SUBSCRIBE __redis__:invalidate, then a PING every second.
 * An invalidation drops its keys from L1; the null message, the loss of
 * the connection, a PING unanswered for 3 s and a reconnection drop the
 * whole L1. All on nginx's event loop.
 */
#pragma once

#include "nginx_cpp.h"

namespace session_cache {

/* Per worker, in init_process and exit_process. */
void listener_start(ngx_cycle_t                              *cycle,
                    const ngx_http_session_cache_main_conf_t *smcf);
void listener_stop();

} // namespace session_cache
