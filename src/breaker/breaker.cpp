#include "breaker/breaker.h"

#include <cstring>

namespace session_cache {

static std::uint64_t bucket_ms(const BreakerConfig &cfg)
{
    std::uint64_t ms = cfg.window / (cfg.buckets ? cfg.buckets : 1);
    return ms ? ms : 1;
}

static void clear_buckets(BreakerData *b)
{
    std::memset(b->buckets, 0, sizeof(b->buckets));
}

void breaker_init(BreakerData *b, const BreakerConfig &cfg)
{
    std::memset(b, 0, sizeof(*b));
    b->phase = BreakerState::Closed;
    b->bucket_ms = bucket_ms(cfg);
    b->nbuckets = cfg.buckets;
}

void breaker_adopt(BreakerData *b, const BreakerConfig &cfg)
{
    if (b->bucket_ms == bucket_ms(cfg) && b->nbuckets == cfg.buckets) {
        return;
    }

    /* counts written in another layout mean nothing in this one */
    clear_buckets(b);
    b->bucket_ms = bucket_ms(cfg);
    b->nbuckets = cfg.buckets;
}

BreakerStats breaker_stats(const BreakerData *b, const BreakerConfig &cfg,
                           std::uint64_t now)
{
    BreakerStats  s{0, 0};
    std::uint64_t slice = now / bucket_ms(cfg);
    std::uint32_t n = cfg.buckets;

    for (std::uint32_t i = 0; i < n && i < kBreakerMaxBuckets; i++) {
        const BreakerBucket &bk = b->buckets[i];

        /* within the last n slices, this one included */
        if (bk.slice <= slice && slice - bk.slice < n
            && (bk.calls || bk.failures)) {
            s.calls += bk.calls;
            s.failures += bk.failures;
        }
    }

    return s;
}

static void open(BreakerData *b, std::uint64_t now)
{
    b->phase = BreakerState::Open;
    b->opened_at = now;
    b->trial = false;
}

static void close(BreakerData *b)
{
    b->phase = BreakerState::Closed;
    b->trial = false;
    clear_buckets(b);
}

Admit breaker_admit(BreakerData *b, const BreakerConfig &cfg, std::uint64_t now,
                    Transition *t)
{
    *t = Transition::None;

    switch (b->phase) {
    case BreakerState::Closed:
        return Admit::Allow;

    case BreakerState::Open:
        if (now - b->opened_at < cfg.cooldown && now >= b->opened_at) {
            return Admit::Reject;
        }
        b->phase = BreakerState::HalfOpen;
        *t = Transition::HalfOpened;
        b->trial = true;
        b->trial_at = now;
        return Admit::Trial;

    case BreakerState::HalfOpen:
        if (b->trial && now - b->trial_at < cfg.cooldown && now >= b->trial_at)
        {
            return Admit::Reject;
        }
        /* no trial out, or it was lost with its worker */
        b->trial = true;
        b->trial_at = now;
        return Admit::Trial;
    }

    return Admit::Reject;
}

Transition breaker_record(BreakerData *b, const BreakerConfig &cfg,
                          std::uint64_t now, bool success, bool trial)
{
    if (trial) {
        if (b->phase != BreakerState::HalfOpen || !b->trial) {
            return Transition::None; /* given up on already */
        }
        if (success) {
            close(b);
            return Transition::Closed;
        }
        open(b, now);
        return Transition::Reopened;
    }

    if (b->phase != BreakerState::Closed) {
        return Transition::None;
    }

    std::uint64_t  slice = now / bucket_ms(cfg);
    BreakerBucket &bk = b->buckets[slice % cfg.buckets];

    if (bk.slice != slice) {
        bk.slice = slice;
        bk.calls = 0;
        bk.failures = 0;
    }

    bk.calls++;
    if (!success) {
        bk.failures++;
    }

    if (success) {
        return Transition::None;
    }

    BreakerStats s = breaker_stats(b, cfg, now);

    if (s.calls >= cfg.min_requests
        && std::uint64_t(s.failures) * 100
               > std::uint64_t(cfg.errors) * s.calls)
    {
        open(b, now);
        return Transition::Opened;
    }

    return Transition::None;
}

void breaker_release_trial(BreakerData *b)
{
    if (b->phase == BreakerState::HalfOpen) {
        b->trial = false;
    }
}

bool breaker_probe_reached(BreakerData *b)
{
    if (b->phase != BreakerState::Open) {
        return false; /* closed, or a trial is already due or out */
    }

    b->phase = BreakerState::HalfOpen;
    b->trial = false;
    return true;
}

std::uint64_t breaker_wait(const BreakerData *b, const BreakerConfig &cfg,
                           std::uint64_t now)
{
    if (b->phase != BreakerState::Open) {
        return 0;
    }

    std::uint64_t until = b->opened_at + cfg.cooldown;
    return until > now ? until - now : 0;
}

} // namespace session_cache
