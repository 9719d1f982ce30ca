/*
 * Metrics shared by all workers (SPEC §6): request outcome counters and
 * per-worker pool gauges, in the shared memory zone
 * "session_cache_metrics". Counters are atomic adds, no lock. Gauges live
 * in one slot per worker process, claimed at init_process and released at
 * exit_process; a slot whose process has died (a crash) is skipped by the
 * readers and reclaimed by the next worker that starts.
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

/* One pool's figures in this worker's slot; written by the pool itself. */
struct PoolGauges {
    ngx_atomic_t  size;
    ngx_atomic_t  available;
    ngx_atomic_t  pending;
    ngx_atomic_t  max;
};

void count(Counter c);

/* This worker's gauges for a backend's pool, or nullptr (no zone, no free
 * slot). */
PoolGauges *pool_gauges(Backend backend);

/* Sums over every worker alive. */
Counters counters_total();
PoolFigures pool_total(Backend backend);

/* Per worker: claim a slot (init_process) and give it back (exit). */
void metrics_attach(ngx_cycle_t *cycle, ngx_shm_zone_t *zone);
void metrics_detach();

}  // namespace session_cache
