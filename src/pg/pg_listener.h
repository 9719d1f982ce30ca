/*
 * The revocation listener (SPEC §9, session_cache_revocation): one
 * Postgres connection per nginx instance, held by the worker that holds
 * the lease in the revocation zone (a small shared zone of its own, see
 * pg_listener.cpp), runs LISTEN "<channel>" with application_name
 * ngx_session_cache_listen and target_session_attrs=read-write (NOTIFY is
 * delivered on the primary only). A notification whose payload is a
 * token drops its L1 entry and sends DEL <prefix><token> through this
 * worker's Redis pool (nobody waits for the reply); "*" drops all of L1;
 * anything else is ignored with a log line that gives only its length.
 * An empty query every second is the heartbeat (answered within 3 s or
 * the connection is given up); a lost connection is made again with
 * backoff, and L1 is dropped once it listens again (notifications sent
 * meanwhile are lost). libpq on nginx's events, never blocking.
 */
#pragma once

#include "nginx_cpp.h"

#include <cstdint>
#include <string>
#include <string_view>

namespace session_cache {

/* Per worker, in init_process and exit_process. */
void revocation_start(ngx_cycle_t                              *cycle,
                      const ngx_http_session_cache_main_conf_t *smcf);
void revocation_stop();

/* The health document's figures, from the zone (any worker). */
struct RevocationFigures {
    bool          configured = false;
    std::string   channel;
    const char   *state = "off";     /* closed, connecting, subscribing,
                                  * listening */
    bool          listening = false; /* and its heartbeat is answered */
    std::int64_t  listener = 0;      /* the lease holder's pid, 0: none */
    std::uint64_t notifications = 0; /* received, of any payload */
    std::uint64_t revoked = 0;       /* tokens dropped */
    std::uint64_t flushes = 0;       /* "*": all of L1 dropped */
    std::uint64_t ignored = 0;       /* payloads that are not a token */
    std::uint64_t reconnects = 0;    /* listening again after a loss */
    std::string   reason;            /* why not listening, "" if none */
};

RevocationFigures revocation_figures();

/*
 * The race of a cache fill with a revocation: a request whose query read
 * the session before the commit gets its answer after the notification
 * and its DEL; written into Redis then, the revoked session would be
 * served again for session_cache_ttl. True when a notification (of
 * token, of a token sharing its bucket, "*", or a loss of the listener)
 * came at or after asked_at, the moment the query that read the session
 * was sent: do not write that answer into any cache. False without
 * session_cache_revocation.
 */
bool revoked_since(std::string_view token, ngx_msec_t asked_at);

} // namespace session_cache
