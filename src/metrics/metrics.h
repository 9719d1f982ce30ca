/*
 * Metrics shared by all workers (SPEC §6): request outcome counters and
 * per-worker pool gauges, in the shared memory zone
 * "session_cache_metrics". Counters are atomic adds, no lock. Gauges live
 * in one slot per worker process; the zone holds twice worker_processes
 * slots, so that the old and the new workers of a reload fit together. A
 * worker claims a slot at init_process and gives it back at exit_process;
 * the slot of a worker that is gone (a crash) is skipped by the readers
 * and taken back. A worker that finds no free slot keeps its figures at
 * home and tries again every second.
 */
#pragma once

#include "nginx_cpp.h"

#include "breaker/breaker_zone.h"
#include "metrics/figures.h"

namespace session_cache {

enum class Counter {
    Hits,
    Misses,
    Negatives,
    Bypasses,
    Rejected,
    Errors,
    Invalidations,
    Count
};

void count(Counter c);

/* This worker's figures for a backend's pool, now: plain stores into its
 * slot (one writer), or kept until it has one. */
void publish_pool(Backend backend, const PoolFigures &figures);

/* Sums over every worker alive. */
Counters    counters_total();
PoolFigures pool_total(Backend backend);

/* Per worker: claim a slot (init_process) and give it back (exit). */
void metrics_attach(ngx_cycle_t *cycle, ngx_shm_zone_t *zone);
void metrics_detach();

} // namespace session_cache
