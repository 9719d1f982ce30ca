/*
 * A listener lease in shared memory (the rules are l1_logic.h's Lease and
 * lease_decide(), pure): one worker per nginx instance holds it and keeps
 * the one connection it stands for. A LeaseSlot names a Lease and the
 * mutex of the zone that holds it, so that several independent leases
 * can live in different zones: the L1 zone's, for the Redis invalidation
 * listener (l1_zone.cpp), and the revocation zone's, for the Postgres
 * LISTEN connection (pg/pg_listener.cpp). Each zone counts its own
 * configuration generations (lease_generation()).
 *
 * The hooks given to step(), release() and if_holder() run under the
 * mutex, for what must change at once with the lease (the L1 epoch on a
 * takeover, the armed flag): a few stores, no I/O, no log.
 */
#pragma once

#include "nginx_cpp.h"

#include <cstdint>

#include "l1/l1_logic.h"

namespace session_cache::l1 {

struct LeaseSlot {
    ngx_shmtx_t  *mutex = nullptr;
    Lease        *lease = nullptr;
    std::uint64_t generation = 0; /* this configuration cycle's */

    bool usable() const { return mutex != nullptr && lease != nullptr; }

    /* What this worker does now (Hold renews, Take takes); *previous:
     * the owner before (0: it was free). on_take(previous) runs under
     * the mutex when the lease is taken. */
    template <class F>
    LeaseAction step(ngx_pid_t me, std::int64_t *previous, F on_take) const
    {
        std::uint64_t now = ngx_current_msec;

        ngx_shmtx_lock(mutex);

        LeaseAction a = lease_decide(*lease, me, generation, now);
        *previous = lease->owner;

        if (a == LeaseAction::Hold) {
            lease->heartbeat = now;

        } else if (a == LeaseAction::Take) {
            lease->owner = me;
            lease->generation = generation;
            lease->heartbeat = now;
            on_take(*previous);
        }

        ngx_shmtx_unlock(mutex);
        return a;
    }

    /* f() under the mutex, only while me holds the lease: a retired
     * holder that has not noticed yet must not touch its successor's
     * state. true if f ran. */
    template <class F>
    bool if_holder(ngx_pid_t me, F f) const
    {
        ngx_shmtx_lock(mutex);
        bool mine = lease_held(*lease, me, generation);
        if (mine) {
            f();
        }
        ngx_shmtx_unlock(mutex);
        return mine;
    }

    /* Give the lease back (exit, or it was lost); on_release() under the
     * mutex when me held it. */
    template <class F>
    void release(ngx_pid_t me, F on_release) const
    {
        if_holder(me, [&] {
            lease->owner = 0;
            on_release();
        });
    }

    /* The holder's pid, 0: none. */
    std::int64_t owner() const
    {
        ngx_shmtx_lock(mutex);
        std::int64_t o = lease->owner;
        ngx_shmtx_unlock(mutex);
        return o;
    }
};

/* In a zone's init (the master, each cycle): the generation of the new
 * cycle; first: the zone was just made. */
inline std::uint64_t lease_generation(ngx_atomic_t *generations, bool first)
{
    if (first) {
        *generations = 1;
        return 1;
    }
    return ngx_atomic_fetch_add(generations, 1) + 1;
}

/* A listener's timer, which runs in every worker, set again where its
 * tick left it unset (an exception), unless the worker is going away.
 * tick: nullptr when there is no listener. */
inline void keep_ticking(ngx_event_t *tick, ngx_msec_t every)
{
    if (tick != nullptr && !tick->timer_set && !ngx_exiting && !ngx_quit
        && !ngx_terminate)
    {
        ngx_add_timer(tick, every);
    }
}

} // namespace session_cache::l1
