/*
 * Breaker arithmetic (SPEC §5, opossum's semantics), free of nginx types so
 * that unit tests drive it with a settable clock.
 *
 * BreakerData is plain data: it lives in shared memory, every worker reads
 * and writes it, and the caller holds the zone's lock around each call.
 * Times are milliseconds on one monotonic clock shared by all workers.
 *
 * The window is split into buckets of window/buckets ms; a bucket carries
 * the number of its slice of time (now / bucket_ms), so a bucket from an
 * earlier turn of the ring is recognised as stale and never counted.
 */
#pragma once

#include <cstdint>

#include "breaker/breaker_state.h"

namespace session_cache {

struct BreakerConfig {
    std::uint32_t errors; /* percent: opens when the share exceeds it */
    std::uint64_t window; /* ms */
    std::uint32_t buckets;
    std::uint64_t cooldown; /* ms in open before a trial */
    std::uint32_t min_requests;
};

constexpr std::uint32_t kBreakerMaxBuckets = 100;

struct BreakerBucket {
    std::uint64_t slice; /* now / bucket_ms when last written */
    std::uint32_t calls;
    std::uint32_t failures;
};

struct BreakerData {
    BreakerState  phase;
    std::uint64_t opened_at; /* when it last opened */
    std::uint64_t trial_at;  /* when the trial was let through */
    bool          trial;     /* a trial call is out */
    std::uint64_t bucket_ms; /* the layout the buckets were written in */
    std::uint32_t nbuckets;
    BreakerBucket buckets[kBreakerMaxBuckets];
};

/* What a call may do. */
enum class Admit { Allow, Trial, Reject };

/* What changed, for the caller to log once, outside the lock. */
enum class Transition { None, Opened, HalfOpened, Closed, Reopened };

struct BreakerStats {
    std::uint32_t calls;
    std::uint32_t failures;
};

/* Fresh, closed, empty. Also adopts a new layout (window or buckets changed
 * on reload) without losing the phase. */
void breaker_init(BreakerData *b, const BreakerConfig &cfg);
void breaker_adopt(BreakerData *b, const BreakerConfig &cfg);

/*
 * May a call go to the backend now? In Open, after the cooldown, exactly
 * one caller gets Trial (and the breaker turns half-open); every other one
 * gets Reject until that trial reports. A trial that never reports (its
 * worker died) is given up after another cooldown.
 */
Admit breaker_admit(BreakerData *b, const BreakerConfig &cfg, std::uint64_t now,
                    Transition *t);

/* The outcome of a call admitted earlier; trial says whether it was the
 * trial. Calls that were let through before the breaker opened and report
 * afterwards are not counted. */
Transition breaker_record(BreakerData *b, const BreakerConfig &cfg,
                          std::uint64_t now, bool success, bool trial);

/* The trial call was abandoned before it reached the backend: the next
 * caller may take the trial. */
void breaker_release_trial(BreakerData *b);

/*
 * A probe (not a call: the breaker neither refuses nor counts probes)
 * reached the backend while the breaker is open: the cooldown ends now,
 * and the next caller takes the half-open trial, which decides as usual.
 * true: the breaker was open; false: nothing changed.
 */
bool breaker_probe_reached(BreakerData *b);

/* Calls and failures in the window ending at now. */
BreakerStats breaker_stats(const BreakerData *b, const BreakerConfig &cfg,
                           std::uint64_t now);

/* Milliseconds until a trial may go (0 when not open). */
std::uint64_t breaker_wait(const BreakerData *b, const BreakerConfig &cfg,
                           std::uint64_t now);

} // namespace session_cache
