/*
 * The breakers (SPEC §5) as every worker sees them: one per backend, kept
 * in a shared memory zone that survives a reload. The arithmetic is in
 * breaker.h; this file adds the zone, its lock, and the log lines.
 */
#pragma once

#include "nginx_cpp.h"

#include "breaker/breaker_state.h"

namespace session_cache {

enum class Backend { Redis = 0, Postgres = 1 };

/* A breaker in the zone: a backend's, or a Redis Cluster node's. */
enum class BreakerId : int {};

inline BreakerId breaker_id(Backend backend)
{
    return static_cast<BreakerId>(static_cast<int>(backend));
}

/* How many Redis Cluster nodes get a breaker of their own (the zone's
 * layout is fixed); a node met after that counts in the Redis one. */
constexpr int kNodeBreakers = 48;

/* In each worker, before any pool: take the breakers of this cycle. */
void breaker_start(const ngx_http_session_cache_breaker_conf_t *conf);
void breaker_stop();

/*
 * The breaker of the Redis Cluster node at address ("10.0.0.1:7000"), the
 * same one in every worker and across reloads (found by its address, or
 * made, under the zone's lock); Redis's when the zone has no room left
 * for another node (said once at warn). Without breakers: Redis's.
 */
BreakerId breaker_for_node(const char *address, ngx_log_t *log);

/*
 * May a call go to the backend now? false: the breaker is open, skip it.
 * *trial tells whether this call is the one half-open trial; its outcome
 * must then be reported (or the trial given back).
 */
bool breaker_allow(BreakerId id, bool *trial, ngx_log_t *log);

/* The outcome of an allowed call. Timeouts are failures. */
void breaker_report(BreakerId id, bool success, bool trial, ngx_log_t *log);

/* A trial call was dropped before it reached the backend. */
void breaker_give_back(BreakerId id);

/* A recovery probe (pool.h) reached the backend while its breaker was
 * open: the cooldown ends, the next call is the half-open trial. */
void breaker_probe_answered(BreakerId id, ngx_log_t *log);

/* Closed and empty again: the backend is another server now (a Redis
 * Sentinel switch); what it counted was the old one's. */
void breaker_reset(Backend backend, ngx_log_t *log);

/* The state of a breaker now, read under the zone's lock. */
BreakerState breaker_state(BreakerId id);

inline BreakerState breaker_state(Backend backend)
{
    return breaker_state(breaker_id(backend));
}

/* Milliseconds until the next trial of an open breaker, else 0. */
ngx_msec_t breaker_wait(Backend backend);

} // namespace session_cache
