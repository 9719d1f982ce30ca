#include "l1/l1_logic.h"

#include <algorithm>

namespace session_cache::l1 {

const char *flush_reason_name(FlushReason r) noexcept
{
    switch (r) {
    case FlushReason::Flush:
        return "flush";
    case FlushReason::ListenerLost:
        return "listener_lost";
    case FlushReason::Heartbeat:
        return "heartbeat";
    case FlushReason::Takeover:
        return "takeover";
    case FlushReason::Reconnect:
        return "reconnect";
    case FlushReason::Topology:
        return "topology";
    case FlushReason::Revocation:
        return "revocation";
    case FlushReason::RevocationLost:
        return "revocation_lost";
    case FlushReason::Count:
        break;
    }
    return "unknown";
}

std::uint32_t hash(std::string_view token) noexcept
{
    std::uint32_t h = 2166136261u;

    for (unsigned char c : token) {
        h ^= c;
        h *= 16777619u;
    }

    return h;
}

std::uint64_t deadline(const Lifetimes &l, std::uint64_t now_ms, bool negative,
                       bool has_expiry, std::int64_t expires_at) noexcept
{
    if (negative) {
        std::uint64_t life = std::min(l.ttl, l.negative_ttl);
        return life == 0 ? 0 : now_ms + life;
    }

    std::uint64_t d = now_ms + l.ttl;

    if (has_expiry) {
        if (expires_at <= 0) {
            return 0;
        }

        /* seconds to milliseconds, without overflow */
        std::uint64_t at = static_cast<std::uint64_t>(expires_at);
        at = at > UINT64_MAX / 1000 ? UINT64_MAX : at * 1000;
        d = std::min(d, at);
    }

    return d > now_ms ? d : 0;
}

LeaseAction lease_decide(const Lease &l, std::int64_t me,
                         std::uint64_t generation, std::uint64_t now) noexcept
{
    if (lease_held(l, me, generation)) {
        return LeaseAction::Hold;
    }

    if (l.owner == 0 || l.generation < generation) {
        return LeaseAction::Take;
    }

    if (l.generation > generation) {
        /* a retired worker never takes it back */
        return LeaseAction::Wait;
    }

    if (now > l.heartbeat && now - l.heartbeat >= kHeartbeatTimeout) {
        return LeaseAction::Take;
    }

    return LeaseAction::Wait;
}

} // namespace session_cache::l1
