/*
 * A breaker's state: the one enum the breaker's arithmetic (breaker.h), its
 * shared zone (breaker_zone.h) and the health document use. Plain data.
 */
#pragma once

#include <cstdint>

namespace session_cache {

/* fixed width and values: it lives in shared memory */
enum class BreakerState : std::uint32_t { Closed = 0, Open = 1, HalfOpen = 2 };

/* "closed", "open", "half_open": the names the health document shows */
constexpr const char *breaker_state_name(BreakerState s)
{
    switch (s) {
    case BreakerState::Open:
        return "open";
    case BreakerState::HalfOpen:
        return "half_open";
    case BreakerState::Closed:
        break;
    }
    return "closed";
}

} // namespace session_cache
