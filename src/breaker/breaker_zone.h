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

/* In each worker, before any pool: take the breakers of this cycle. */
void breaker_start(const ngx_http_session_cache_breaker_conf_t *conf);
void breaker_stop();

/*
 * May a call go to the backend now? false: the breaker is open, skip it.
 * *trial tells whether this call is the one half-open trial; its outcome
 * must then be reported (or the trial given back).
 */
bool breaker_allow(Backend backend, bool *trial, ngx_log_t *log);

/* The outcome of an allowed call. Timeouts are failures. */
void breaker_report(Backend backend, bool success, bool trial, ngx_log_t *log);

/* A trial call was dropped before it reached the backend. */
void breaker_give_back(Backend backend);

/* A recovery probe (pool.h) reached the backend while its breaker was
 * open: the cooldown ends, the next call is the half-open trial. */
void breaker_probe_answered(Backend backend, ngx_log_t *log);

/* Closed and empty again: the backend is another server now (a Redis
 * Sentinel switch); what it counted was the old one's. */
void breaker_reset(Backend backend, ngx_log_t *log);

/* The state of a backend's breaker now, read under the zone's lock. */
BreakerState breaker_state(Backend backend);

/* Milliseconds until the next trial of an open breaker, else 0. */
ngx_msec_t breaker_wait(Backend backend);

} // namespace session_cache
