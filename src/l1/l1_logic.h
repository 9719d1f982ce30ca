/*
 * The L1 session cache's rules (SPEC §8), as pure logic: no nginx types,
 * so the unit tests link this file alone with a settable clock.
 * l1_zone.cpp keeps the entries in shared memory and applies these rules
 * under the zone's lock.
 *
 *   - an entry is keyed by the whole token: hash() picks the tree node,
 *     a full compare of the token decides;
 *   - a valid entry lives at most ttl, never past the session's
 *     expires_at; a negative one at most min(ttl, negative_ttl):
 *     deadline() says until when, 0 for "do not store";
 *   - a flush of the whole L1 is one increment of the epoch: an entry
 *     written under an older epoch is dead (fresh());
 *   - the GET race (an invalidation may arrive before the reply of a GET
 *     that read the old value): before the GET, take a Mark (the epoch and
 *     the counter of the key's race bucket); an invalidation bumps its
 *     bucket's counter; the reply is stored only if neither moved
 *     (may_store()).
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace session_cache::l1 {

/* Counters of the GET race: a power of two, indexed by the token's hash.
 * Two keys sharing a bucket only cost a fill now and then. */
constexpr std::uint32_t kRaceBuckets = 16384;

/* Why the whole L1 was dropped (SPEC §8), in the health document's order. */
enum class FlushReason : std::uint8_t {
    Flush,          /* the null message: FLUSHALL, FLUSHDB */
    ListenerLost,   /* the listener's connection closed */
    Heartbeat,      /* a PING left unanswered for 3 s */
    Takeover,       /* another worker took the listener over */
    Reconnect,      /* the listener connected again */
    Topology,       /* the Redis master changed */
    Revocation,     /* a revocation notification "*" (SPEC §9) */
    RevocationLost, /* the revocation listener connected again after a
                     * loss, or took over: notifications were missed */
    Count
};

constexpr std::size_t kFlushReasons =
    static_cast<std::size_t>(FlushReason::Count);

const char *flush_reason_name(FlushReason r) noexcept;

/* FNV-1a, 32 bits: the tree's key and the race bucket. */
std::uint32_t hash(std::string_view token) noexcept;

inline std::uint32_t race_bucket(std::uint32_t h) noexcept
{
    return h & (kRaceBuckets - 1);
}

/* Lifetimes, milliseconds; ttl > 0, negative_ttl >= 0 (0: negatives are
 * not kept). */
struct Lifetimes {
    std::uint64_t ttl = 30000;
    std::uint64_t negative_ttl = 10000;
};

/*
 * Until when (Unix milliseconds) an entry read now may be served; 0: do
 * not store it (already expired, or negatives disabled). expires_at is in
 * Unix seconds, valid if has_expiry.
 */
std::uint64_t deadline(const Lifetimes &l, std::uint64_t now_ms, bool negative,
                       bool has_expiry, std::int64_t expires_at) noexcept;

/* An entry can answer: written under the current epoch, before its
 * deadline. */
inline bool fresh(std::uint64_t entry_epoch, std::uint64_t entry_deadline,
                  std::uint64_t epoch, std::uint64_t now_ms) noexcept
{
    return entry_epoch == epoch && now_ms < entry_deadline;
}

/* What was true when the GET went out. */
struct Mark {
    std::uint64_t epoch = 0;
    std::uint32_t counter = 0;
    bool          taken = false; /* false: nothing may be stored */
};

inline bool may_store(const Mark &m, std::uint64_t epoch,
                      std::uint32_t counter) noexcept
{
    return m.taken && m.epoch == epoch && m.counter == counter;
}

/* L1 is consulted (and filled) only while this holds: with tracking=off
 * always; with tracking=on while the listener is armed. */
inline bool usable(bool tracking, bool armed) noexcept
{
    return !tracking || armed;
}

/* The listener's heartbeat (SPEC §8): a PING every second; armed only
 * while the last one was answered within 3 s. The same span ends a lease
 * whose holder stopped renewing it (a worker killed). Milliseconds of
 * nginx's monotonic clock, the same in every worker. */
constexpr std::uint64_t kPingInterval = 1000;
constexpr std::uint64_t kHeartbeatTimeout = 3000;

/* Armed: the subscription confirmed, and a PONG within the timeout. */
inline bool armed_now(bool subscribed, std::uint64_t last_pong,
                      std::uint64_t now) noexcept
{
    return subscribed
           && (now < last_pong || now - last_pong < kHeartbeatTimeout);
}

/*
 * The lease that makes one worker per nginx instance the listener (of
 * Redis invalidations, of Postgres revocations: one lease each, see
 * lease_slot.h): its
 * owner's pid (0: none), the configuration generation it was started
 * under (a reload starts a newer one) and when it last renewed it.
 */
struct Lease {
    std::int64_t  owner = 0;
    std::uint64_t generation = 0;
    std::uint64_t heartbeat = 0;
};

enum class LeaseAction {
    Hold, /* mine: renew it */
    Take, /* free, abandoned, or held by a retired generation: take it */
    Wait  /* another live worker of this generation or a newer one has it */
};

/* What the worker me, started under generation, does with the lease now. */
LeaseAction lease_decide(const Lease &l, std::int64_t me,
                         std::uint64_t generation, std::uint64_t now) noexcept;

/* me, started under generation, holds the lease now. */
inline bool lease_held(const Lease &l, std::int64_t me,
                       std::uint64_t generation) noexcept
{
    return l.owner == me && l.generation == generation;
}

} // namespace session_cache::l1
