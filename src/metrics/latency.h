/*
 * The check's latency histogram (SPEC §13), as plain data: which layer
 * answered, the bucket bounds, the bucket a duration falls in, and the
 * quantile estimate Prometheus' histogram_quantile() would give from the
 * same buckets. Pure and header-only: the metrics zone counts into it, the
 * health document renders it, the unit tests link nothing else.
 */
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

namespace session_cache {

/* Where a check's answer came from ($session_cache_layer, SPEC §8): L1
 * (counted 0 until the L1 cache exists), Redis, Postgres, or none (the
 * token refused before any lookup, or no store could answer). */
enum class Layer { L1, Redis, Postgres, None, Count };

constexpr int kLayers = static_cast<int>(Layer::Count);

constexpr const char *layer_name(Layer l)
{
    switch (l) {
    case Layer::L1:
        return "l1";
    case Layer::Redis:
        return "redis";
    case Layer::Postgres:
        return "postgres";
    case Layer::None:
    case Layer::Count:
        break;
    }
    return "none";
}

/* Upper bounds of the finite buckets, nanoseconds: 100 µs to 1 s. A last
 * bucket, +Inf, follows them. */
constexpr std::uint64_t kLatencyBounds[] = {
    100000,   250000,   500000,    1000000,   2500000,   5000000,   10000000,
    25000000, 50000000, 100000000, 250000000, 500000000, 1000000000};

constexpr int kFiniteBuckets =
    static_cast<int>(sizeof(kLatencyBounds) / sizeof(kLatencyBounds[0]));

/* The finite buckets and +Inf. */
constexpr int kLatencyBuckets = kFiniteBuckets + 1;

/* The bucket a duration is counted in: the first whose bound it does not
 * exceed (Prometheus' `le`), kFiniteBuckets for +Inf. */
inline int latency_bucket(std::uint64_t ns)
{
    int i = 0;
    while (i < kFiniteBuckets && ns > kLatencyBounds[i]) {
        i++;
    }
    return i;
}

/* One layer's histogram: per-bucket counts (not cumulative) and the sum of
 * the durations. The count is the sum of the buckets. */
struct Latency {
    std::uint64_t buckets[kLatencyBuckets] = {};
    std::uint64_t sum_ns = 0;

    std::uint64_t count() const
    {
        std::uint64_t n = 0;
        for (std::uint64_t b : buckets) {
            n += b;
        }
        return n;
    }
};

/*
 * The q-quantile (0 <= q <= 1) in seconds, as histogram_quantile() has
 * it: the rank q * count is found in its bucket and interpolated linearly
 * between the bucket's bounds (0 below the first); a rank in +Inf gives
 * the highest finite bound. NaN when nothing was counted.
 */
inline double latency_quantile(const Latency &h, double q)
{
    std::uint64_t total = h.count();

    if (total == 0 || std::isnan(q)) {
        return std::numeric_limits<double>::quiet_NaN();
    }
    if (q < 0) {
        return -std::numeric_limits<double>::infinity();
    }
    if (q > 1) {
        return std::numeric_limits<double>::infinity();
    }

    double        rank = q * static_cast<double>(total);
    std::uint64_t below = 0; /* cumulative count before bucket i */
    int           i = 0;

    while (i < kFiniteBuckets
           && static_cast<double>(below + h.buckets[i]) < rank) {
        below += h.buckets[i];
        i++;
    }

    if (i == kFiniteBuckets) {
        return static_cast<double>(kLatencyBounds[kFiniteBuckets - 1]) / 1e9;
    }

    double lower = i == 0 ? 0 : static_cast<double>(kLatencyBounds[i - 1]);
    double upper = static_cast<double>(kLatencyBounds[i]);
    double in = static_cast<double>(h.buckets[i]);

    return (lower
            + (upper - lower) * ((rank - static_cast<double>(below)) / in))
           / 1e9;
}

} // namespace session_cache
