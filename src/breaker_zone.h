/*
 * The breakers (SPEC §5) as every worker sees them: one per backend, kept
 * in a shared memory zone that survives a reload.
 */
#pragma once

namespace session_cache {

enum class Backend { Redis = 0, Postgres = 1 };

enum class BreakerState { Closed = 0, Open = 1, HalfOpen = 2 };

/* The state of a backend's breaker now, read under the zone's lock. */
BreakerState breaker_state(Backend backend);

/* "closed", "open", "half_open": the names the health document uses. */
const char *breaker_state_name(BreakerState state);

}  // namespace session_cache
