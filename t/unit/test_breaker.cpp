/*
 * Breaker arithmetic (SPEC §5) with a settable clock: window roll-over,
 * threshold edges, min_requests, cooldown, and the single half-open trial.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "breaker/breaker.h"

using namespace session_cache;

namespace {

/* the defaults of SPEC §2: 50% 10s 10 buckets 30s 5 */
const BreakerConfig kDefaults{50, 10000, 10, 30000, 5};

struct Fixture {
    BreakerConfig cfg = kDefaults;
    BreakerData b;
    std::uint64_t now = 1000000;   /* the settable clock, in ms */

    Fixture() { breaker_init(&b, cfg); }

    Transition call(bool success)
    {
        Transition t;
        Admit a = breaker_admit(&b, cfg, now, &t);
        assert_int_equal(static_cast<int>(a), static_cast<int>(Admit::Allow));
        return breaker_record(&b, cfg, now, success, false);
    }

    Admit admit()
    {
        Transition t;
        return breaker_admit(&b, cfg, now, &t);
    }
};

int
setup(void **state)
{
    *state = new Fixture();
    return 0;
}

int
teardown(void **state)
{
    delete static_cast<Fixture *>(*state);
    return 0;
}

#define F (*static_cast<Fixture *>(*state))

void
test_min_requests(void **state)
{
    /* four failures out of four: 100%, but fewer than min_requests */
    for (int i = 0; i < 4; i++) {
        assert_true(F.call(false) == Transition::None);
    }
    assert_true(F.b.phase == BreakerState::Closed);

    /* the fifth reaches min_requests */
    assert_true(F.call(false) == Transition::Opened);
    assert_true(F.b.phase == BreakerState::Open);
}

void
test_exactly_at_threshold_stays_closed(void **state)
{
    /* 5 of 10 failed: exactly 50%, which does not exceed errors=50% */
    for (int i = 0; i < 5; i++) {
        F.call(true);
    }
    for (int i = 0; i < 5; i++) {
        assert_true(F.call(false) == Transition::None);
    }
    assert_true(F.b.phase == BreakerState::Closed);

    BreakerStats s = breaker_stats(&F.b, F.cfg, F.now);
    assert_int_equal(s.calls, 10);
    assert_int_equal(s.failures, 5);

    /* 6 of 11: just over */
    assert_true(F.call(false) == Transition::Opened);
}

void
test_just_over_threshold_other_percent(void **state)
{
    F.cfg.errors = 20;
    F.cfg.min_requests = 1;
    breaker_init(&F.b, F.cfg);

    /* 1 of 5 = 20%: at, not over */
    for (int i = 0; i < 4; i++) {
        F.call(true);
    }
    assert_true(F.call(false) == Transition::None);

    /* 2 of 6 = 33% */
    assert_true(F.call(false) == Transition::Opened);
}

void
test_zero_percent_opens_on_first_failure(void **state)
{
    F.cfg.errors = 0;
    F.cfg.min_requests = 1;
    breaker_init(&F.b, F.cfg);

    assert_true(F.call(true) == Transition::None);
    assert_true(F.call(false) == Transition::Opened);
}

void
test_hundred_percent_never_opens(void **state)
{
    F.cfg.errors = 100;
    breaker_init(&F.b, F.cfg);

    for (int i = 0; i < 50; i++) {
        assert_true(F.call(false) == Transition::None);
    }
    assert_true(F.b.phase == BreakerState::Closed);
}

void
test_window_roll_over(void **state)
{
    /* 4 failures at t, then the window moves past them */
    for (int i = 0; i < 4; i++) {
        F.call(false);
    }

    /* one bucket less than the window later: still counted */
    F.now += F.cfg.window - F.cfg.window / F.cfg.buckets;
    assert_int_equal(breaker_stats(&F.b, F.cfg, F.now).failures, 4);

    /* a whole window later: gone */
    F.now += F.cfg.window / F.cfg.buckets;
    assert_int_equal(breaker_stats(&F.b, F.cfg, F.now).calls, 0);

    /* so one more failure is 1 call, below min_requests */
    assert_true(F.call(false) == Transition::None);
    assert_true(F.b.phase == BreakerState::Closed);
}

void
test_bucket_reused_after_a_turn_of_the_ring(void **state)
{
    F.cfg.min_requests = 3;

    /* two failures in bucket k, then exactly one ring later the same
     * slot: the old counts must not add up with the new */
    F.call(false);
    F.call(false);
    F.now += F.cfg.window;
    assert_true(F.call(false) == Transition::None);

    BreakerStats s = breaker_stats(&F.b, F.cfg, F.now);
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.failures, 1);
}

void
test_failures_spread_over_buckets_add_up(void **state)
{
    /* one failure per bucket, 5 buckets: all inside one window */
    for (int i = 0; i < 4; i++) {
        assert_true(F.call(false) == Transition::None);
        F.now += F.cfg.window / F.cfg.buckets;
    }
    assert_true(F.call(false) == Transition::Opened);
}

void
open_it(void **state)
{
    for (int i = 0; i < 5; i++) {
        F.call(false);
    }
    assert_true(F.b.phase == BreakerState::Open);
}

void
test_open_rejects_until_cooldown(void **state)
{
    open_it(state);
    std::uint64_t opened = F.now;

    assert_true(F.admit() == Admit::Reject);
    assert_int_equal(breaker_wait(&F.b, F.cfg, F.now), F.cfg.cooldown);

    F.now = opened + F.cfg.cooldown - 1;
    assert_true(F.admit() == Admit::Reject);
    assert_int_equal(breaker_wait(&F.b, F.cfg, F.now), 1);

    F.now = opened + F.cfg.cooldown;
    Transition t;
    assert_true(breaker_admit(&F.b, F.cfg, F.now, &t) == Admit::Trial);
    assert_true(t == Transition::HalfOpened);
    assert_true(F.b.phase == BreakerState::HalfOpen);
    assert_int_equal(breaker_wait(&F.b, F.cfg, F.now), 0);

    /* one trial only */
    assert_true(F.admit() == Admit::Reject);
    assert_true(F.admit() == Admit::Reject);
}

void
test_trial_success_closes_with_a_clean_window(void **state)
{
    open_it(state);
    F.now += F.cfg.cooldown;
    assert_true(F.admit() == Admit::Trial);

    assert_true(breaker_record(&F.b, F.cfg, F.now, true, true)
                == Transition::Closed);
    assert_true(F.b.phase == BreakerState::Closed);
    assert_int_equal(breaker_stats(&F.b, F.cfg, F.now).calls, 0);

    /* the old failures do not reopen it at the next failure */
    assert_true(F.call(false) == Transition::None);
}

void
test_trial_failure_reopens_for_a_new_cooldown(void **state)
{
    open_it(state);
    F.now += F.cfg.cooldown;
    assert_true(F.admit() == Admit::Trial);

    F.now += 200;   /* the trial timed out */
    assert_true(breaker_record(&F.b, F.cfg, F.now, false, true)
                == Transition::Reopened);
    assert_true(F.b.phase == BreakerState::Open);
    assert_int_equal(breaker_wait(&F.b, F.cfg, F.now), F.cfg.cooldown);
    assert_true(F.admit() == Admit::Reject);
}

void
test_late_reports_while_open_are_ignored(void **state)
{
    open_it(state);

    /* calls let through before the opening report late */
    assert_true(breaker_record(&F.b, F.cfg, F.now, true, false)
                == Transition::None);
    assert_true(breaker_record(&F.b, F.cfg, F.now, false, false)
                == Transition::None);
    assert_true(F.b.phase == BreakerState::Open);

    /* nor while half-open: only the trial decides */
    F.now += F.cfg.cooldown;
    assert_true(F.admit() == Admit::Trial);
    assert_true(breaker_record(&F.b, F.cfg, F.now, true, false)
                == Transition::None);
    assert_true(F.b.phase == BreakerState::HalfOpen);
}

void
test_given_back_trial_goes_to_the_next_caller(void **state)
{
    open_it(state);
    F.now += F.cfg.cooldown;
    assert_true(F.admit() == Admit::Trial);
    assert_true(F.admit() == Admit::Reject);

    breaker_release_trial(&F.b);
    assert_true(F.admit() == Admit::Trial);
    assert_true(F.admit() == Admit::Reject);
}

void
test_lost_trial_is_replaced_after_a_cooldown(void **state)
{
    open_it(state);
    F.now += F.cfg.cooldown;
    assert_true(F.admit() == Admit::Trial);

    /* its worker died: no report ever comes */
    F.now += F.cfg.cooldown - 1;
    assert_true(F.admit() == Admit::Reject);
    F.now += 1;
    assert_true(F.admit() == Admit::Trial);

    /* a report from the lost trial, after the new one went out, still
     * settles the half-open state once */
    assert_true(breaker_record(&F.b, F.cfg, F.now, true, true)
                == Transition::Closed);
    assert_true(breaker_record(&F.b, F.cfg, F.now, false, true)
                == Transition::None);
    assert_true(F.b.phase == BreakerState::Closed);
}

void
test_adopting_a_new_layout_keeps_the_phase(void **state)
{
    F.call(false);
    F.call(false);

    BreakerConfig same = F.cfg;
    breaker_adopt(&F.b, same);
    assert_int_equal(breaker_stats(&F.b, F.cfg, F.now).failures, 2);

    for (int i = 0; i < 3; i++) {
        F.call(false);
    }
    assert_true(F.b.phase == BreakerState::Open);
    BreakerConfig other = F.cfg;
    other.buckets = 20;
    breaker_adopt(&F.b, other);
    assert_true(F.b.phase == BreakerState::Open);
    assert_int_equal(breaker_stats(&F.b, other, F.now).calls, 0);
}

void
test_probe_reached_ends_the_cooldown(void **state)
{
    open_it(state);
    F.now += 1;
    assert_true(F.admit() == Admit::Reject);

    /* a probe answered: no more waiting, one trial, the others refused */
    assert_true(breaker_probe_reached(&F.b));
    assert_true(F.b.phase == BreakerState::HalfOpen);
    assert_int_equal(breaker_wait(&F.b, F.cfg, F.now), 0);
    assert_true(F.admit() == Admit::Trial);
    assert_true(F.admit() == Admit::Reject);

    /* another probe while the trial is out changes nothing */
    assert_false(breaker_probe_reached(&F.b));
    assert_true(F.admit() == Admit::Reject);

    /* the trial decides as usual: a failure opens it for a whole cooldown */
    assert_true(breaker_record(&F.b, F.cfg, F.now, false, true)
                == Transition::Reopened);
    assert_true(F.b.phase == BreakerState::Open);
    assert_int_equal(breaker_wait(&F.b, F.cfg, F.now), F.cfg.cooldown);

    /* a second probe, the trial succeeds: closed */
    assert_true(breaker_probe_reached(&F.b));
    assert_true(F.admit() == Admit::Trial);
    assert_true(breaker_record(&F.b, F.cfg, F.now, true, true)
                == Transition::Closed);
    assert_true(F.b.phase == BreakerState::Closed);
}

void
test_probe_reached_on_a_closed_breaker_changes_nothing(void **state)
{
    assert_false(breaker_probe_reached(&F.b));
    assert_true(F.b.phase == BreakerState::Closed);
    assert_true(F.admit() == Admit::Allow);
}

/*
 * Several workers race for the trial: the zone's lock serialises them
 * (here a mutex, in nginx ngx_shmtx); exactly one wins.
 */
void
test_one_trial_among_racing_workers(void **state)
{
    open_it(state);
    F.now += F.cfg.cooldown;

    std::mutex lock;
    std::atomic<int> trials{0}, rejects{0};
    std::vector<std::thread> workers;

    for (int w = 0; w < 8; w++) {
        workers.emplace_back([&] {
            for (int i = 0; i < 1000; i++) {
                Transition t;
                std::lock_guard<std::mutex> g(lock);
                switch (breaker_admit(&F.b, F.cfg, F.now, &t)) {
                case Admit::Trial:
                    trials++;
                    break;
                case Admit::Reject:
                    rejects++;
                    break;
                case Admit::Allow:
                    fail_msg("a half-open breaker allowed a plain call");
                }
            }
        });
    }

    for (auto &t : workers) {
        t.join();
    }

    assert_int_equal(trials.load(), 1);
    assert_int_equal(rejects.load(), 8 * 1000 - 1);
}

}  // namespace

int
main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_min_requests),
        T(test_exactly_at_threshold_stays_closed),
        T(test_just_over_threshold_other_percent),
        T(test_zero_percent_opens_on_first_failure),
        T(test_hundred_percent_never_opens),
        T(test_window_roll_over),
        T(test_bucket_reused_after_a_turn_of_the_ring),
        T(test_failures_spread_over_buckets_add_up),
        T(test_open_rejects_until_cooldown),
        T(test_trial_success_closes_with_a_clean_window),
        T(test_trial_failure_reopens_for_a_new_cooldown),
        T(test_late_reports_while_open_are_ignored),
        T(test_given_back_trial_goes_to_the_next_caller),
        T(test_lost_trial_is_replaced_after_a_cooldown),
        T(test_adopting_a_new_layout_keeps_the_phase),
        T(test_probe_reached_ends_the_cooldown),
        T(test_probe_reached_on_a_closed_breaker_changes_nothing),
        T(test_one_trial_among_racing_workers),
    };

    return cmocka_run_group_tests_name("breaker", tests, nullptr, nullptr)
           ? 1 : 0;
}
