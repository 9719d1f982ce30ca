#include "breaker_zone.h"

namespace session_cache {

/* Until the breaker lands (issue 3), every backend reports closed. */
BreakerState breaker_state(Backend)
{
    return BreakerState::Closed;
}

const char *breaker_state_name(BreakerState state)
{
    switch (state) {
    case BreakerState::Open:
        return "open";
    case BreakerState::HalfOpen:
        return "half_open";
    case BreakerState::Closed:
        break;
    }
    return "closed";
}

}  // namespace session_cache
