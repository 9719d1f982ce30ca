/*
 * The figures the metrics zone keeps and the health document shows:
 * request outcome counters and pool gauges, summed over all workers. Plain
 * data, below both the pools that produce them and the document that
 * renders them, so that includes run one way (health -> pools -> metrics).
 */
#pragma once

#include <cstdint>

namespace session_cache {

/* Request outcomes since start, summed over all workers. */
struct Counters {
    std::uint64_t hits = 0;
    std::uint64_t misses = 0;
    std::uint64_t negatives = 0;
    std::uint64_t bypasses = 0;
    std::uint64_t rejected = 0;
    std::uint64_t errors = 0;        /* ERROR and FAIL_OPEN */
    std::uint64_t invalidations = 0; /* not an outcome: see README */
    std::uint64_t moved = 0;         /* Redis Cluster: MOVED replies */
    std::uint64_t asks = 0;          /* Redis Cluster: ASK replies */
};

/* One backend's pools: one worker's, or summed over all workers. */
struct PoolFigures {
    std::uint64_t size = 0;      /* connections open */
    std::uint64_t available = 0; /* open and idle */
    std::uint64_t pending = 0;   /* requests waiting for a connection */
    std::uint64_t max = 0;       /* pool= (times the workers, summed) */
};

} // namespace session_cache
