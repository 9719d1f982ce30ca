/*
 * Metrics shared by all workers (SPEC §6, §13): request outcome counters,
 * per-worker pool gauges and the check's latency histogram, in the shared
 * memory zone
 * "session_cache_metrics". Counters are atomic adds, no lock. Gauges live
 * in one slot per worker process; the zone holds twice worker_processes
 * slots, so that the old and the new workers of a reload fit together. A
 * worker claims a slot at init_process and gives it back at exit_process;
 * the slot of a worker that is gone (a crash) is skipped by the readers
 * and taken back. A worker that finds no free slot keeps its figures at
 * home and tries again every second.
 *
 * The latency histogram is counted in the worker's slot too (atomic adds,
 * no lock, no line shared with another worker's writes on the hit path),
 * and summed over every slot when read: a slot's counts outlive its worker
 * (the next worker to claim it adds to them), so none is ever lost. A
 * worker without a slot counts into a spare histogram in the header.
 */
#pragma once

#include "nginx_cpp.h"

#include "breaker/breaker_zone.h"
#include "metrics/figures.h"
#include "metrics/latency.h"

#include <time.h>

namespace session_cache {

enum class Counter {
    Hits,
    Misses,
    Negatives,
    Bypasses,
    Rejected,
    Errors,
    Invalidations,
    Moved, /* Redis Cluster redirections (SPEC §10) */
    Asks,
    Count
};

void count(Counter c);

/* This worker's figures for a backend's pool, now: plain stores into its
 * slot (one writer), or kept until it has one. */
void publish_pool(Backend backend, const PoolFigures &figures);

/* A monotonic clock in nanoseconds, for the check's duration:
 * ngx_current_msec is too coarse. A vDSO call, never a wait. */
inline std::uint64_t monotonic_ns()
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000u
           + static_cast<std::uint64_t>(ts.tv_nsec);
}

/* One check's duration, by the layer that answered. */
void observe(Layer layer, std::uint64_t ns);

/* Sums over every worker alive. */
Counters    counters_total();
PoolFigures pool_total(Backend backend);

/* Summed over every worker since the zone was made. */
Latency latency_total(Layer layer);

/* Per worker: claim a slot (init_process) and give it back (exit). */
void metrics_attach(ngx_cycle_t *cycle, ngx_shm_zone_t *zone);
void metrics_detach();

} // namespace session_cache
