/*
 * The L1 rules (src/l1/l1_logic.h) with a settable clock: lifetimes
 * bounded by ttl, expires_at and negative_ttl; the epoch that drops every
 * entry at once; the GET race's mark; the hash and its race bucket.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

#include <cstring>
#include <string>

#include "l1/l1_logic.h"

using namespace session_cache::l1;

namespace {

const std::uint64_t kNow = 1800000000000ull; /* the settable clock, Unix ms */
const std::int64_t  kNowSec = 1800000000;

Lifetimes lifetimes(std::uint64_t ttl, std::uint64_t negative_ttl)
{
    Lifetimes l;
    l.ttl = ttl;
    l.negative_ttl = negative_ttl;
    return l;
}

void valid_lives_ttl_without_expiry(void **)
{
    Lifetimes     l = lifetimes(30000, 10000);
    std::uint64_t d = deadline(l, kNow, false, false, 0);

    assert_int_equal(d, kNow + 30000);
    assert_true(fresh(0, d, 0, kNow));
    assert_true(fresh(0, d, 0, kNow + 29999));
    assert_false(fresh(0, d, 0, kNow + 30000));
}

void valid_never_past_expires_at(void **)
{
    Lifetimes l = lifetimes(30000, 10000);

    /* expires in 5 s: 5 s, not 30 */
    std::uint64_t d = deadline(l, kNow, false, true, kNowSec + 5);
    assert_int_equal(d, kNow + 5000);
    assert_false(fresh(0, d, 0, kNow + 5000));

    /* expires in an hour: ttl */
    assert_int_equal(deadline(l, kNow, false, true, kNowSec + 3600),
                     kNow + 30000);

    /* expired, or expiring now: not stored */
    assert_int_equal(deadline(l, kNow, false, true, kNowSec), 0);
    assert_int_equal(deadline(l, kNow, false, true, kNowSec - 1), 0);
    assert_int_equal(deadline(l, kNow, false, true, 0), 0);
    assert_int_equal(deadline(l, kNow, false, true, -5), 0);

    /* far future: no overflow */
    assert_int_equal(deadline(l, kNow, false, true, INT64_MAX), kNow + 30000);
}

void negative_lives_the_shorter(void **)
{
    assert_int_equal(deadline(lifetimes(30000, 10000), kNow, true, false, 0),
                     kNow + 10000);
    assert_int_equal(deadline(lifetimes(5000, 10000), kNow, true, false, 0),
                     kNow + 5000);

    /* session_cache_negative_ttl 0: negatives are not kept */
    assert_int_equal(deadline(lifetimes(30000, 0), kNow, true, false, 0), 0);

    /* a negative ignores any expiry */
    assert_int_equal(deadline(lifetimes(30000, 10000), kNow, true, true, 1),
                     kNow + 10000);
}

void epoch_drops_everything(void **)
{
    std::uint64_t d = kNow + 30000;

    assert_true(fresh(7, d, 7, kNow));
    /* a flush: the epoch moves, every older entry is dead at once */
    assert_false(fresh(7, d, 8, kNow));
    /* written after the flush */
    assert_true(fresh(8, d, 8, kNow));
}

void mark_decides_the_store(void **)
{
    Mark m;

    /* no mark taken (L1 unusable when the GET went out): never stored */
    assert_false(may_store(m, 0, 0));

    m.taken = true;
    m.epoch = 3;
    m.counter = 41;

    assert_true(may_store(m, 3, 41));
    /* an invalidation for the key's bucket passed */
    assert_false(may_store(m, 3, 42));
    /* a flush passed */
    assert_false(may_store(m, 4, 41));
    /* the counter wrapped all the way round: still a change */
    assert_false(may_store(m, 3, 40));
}

void hash_and_bucket(void **)
{
    /* FNV-1a reference values */
    assert_int_equal(hash(""), 2166136261u);
    assert_int_equal(hash("a"), 0xe40c292cu);
    assert_int_equal(hash("foobar"), 0xbf9cf968u);

    /* the whole token counts */
    std::string a(512, 'x'), b(512, 'x');
    b[511] = 'y';
    assert_int_not_equal(hash(a), hash(b));

    for (std::uint32_t h : {0u, 1u, 0xffffffffu, hash(a)}) {
        assert_true(race_bucket(h) < kRaceBuckets);
    }
    assert_int_equal(race_bucket(kRaceBuckets + 5), 5);
}

void usable_only_when_exact(void **)
{
    assert_true(usable(false, false)); /* tracking=off: ttl bounds */
    assert_true(usable(false, true));
    assert_false(usable(true, false)); /* tracking=on, not armed */
    assert_true(usable(true, true));
}

void armed_only_with_a_recent_pong(void **)
{
    std::uint64_t t = 5000000;

    assert_false(armed_now(false, t, t));
    assert_true(armed_now(true, t, t));
    assert_true(armed_now(true, t, t + kHeartbeatTimeout - 1));
    assert_false(armed_now(true, t, t + kHeartbeatTimeout));
    /* a PONG recorded by a worker whose clock read a little later */
    assert_true(armed_now(true, t + 5, t));
}

void lease_one_listener(void **)
{
    std::uint64_t t = 5000000;
    Lease         l;

    /* free: the first worker takes it, the second waits */
    assert_int_equal(lease_decide(l, 100, 1, t), LeaseAction::Take);
    l.owner = 100;
    l.generation = 1;
    l.heartbeat = t;
    assert_int_equal(lease_decide(l, 100, 1, t + 500), LeaseAction::Hold);
    assert_int_equal(lease_decide(l, 101, 1, t + 500), LeaseAction::Wait);

    /* the holder stopped renewing (killed): taken over after 3 s */
    assert_int_equal(lease_decide(l, 101, 1, t + kHeartbeatTimeout - 1),
                     LeaseAction::Wait);
    assert_int_equal(lease_decide(l, 101, 1, t + kHeartbeatTimeout),
                     LeaseAction::Take);

    /* a reload: the new generation takes it at once; the old one, which
     * finds it taken, never takes it back */
    assert_int_equal(lease_decide(l, 200, 2, t + 1), LeaseAction::Take);
    l.owner = 200;
    l.generation = 2;
    assert_int_equal(lease_decide(l, 100, 1, t + 1), LeaseAction::Wait);
    assert_int_equal(lease_decide(l, 100, 1, t + 10 * kHeartbeatTimeout),
                     LeaseAction::Wait);

    /* a pid reused by a newer generation is not the old holder */
    l.owner = 300;
    l.generation = 3;
    assert_int_equal(lease_decide(l, 300, 2, t + 1), LeaseAction::Wait);
}

void flush_reason_names(void **)
{
    const char *names[] = {"flush",    "listener_lost", "heartbeat",
                           "takeover", "reconnect",     "topology",
                           "revocation", "revocation_lost"};

    assert_int_equal(kFlushReasons, sizeof(names) / sizeof(names[0]));
    for (std::size_t i = 0; i < kFlushReasons; i++) {
        assert_string_equal(flush_reason_name(static_cast<FlushReason>(i)),
                            names[i]);
    }
}

} // namespace

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(valid_lives_ttl_without_expiry),
        cmocka_unit_test(valid_never_past_expires_at),
        cmocka_unit_test(negative_lives_the_shorter),
        cmocka_unit_test(epoch_drops_everything),
        cmocka_unit_test(mark_decides_the_store),
        cmocka_unit_test(hash_and_bucket),
        cmocka_unit_test(usable_only_when_exact),
        cmocka_unit_test(armed_only_with_a_recent_pong),
        cmocka_unit_test(lease_one_listener),
        cmocka_unit_test(flush_reason_names),
    };

    return cmocka_run_group_tests_name("l1_logic", tests, nullptr, nullptr);
}
