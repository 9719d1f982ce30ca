/*
 * The cache-fill tracker (src/check/fill_tracker.h) with a settable clock:
 * GETs numbered against SETs acknowledged, the GET sent exactly at the
 * acknowledgement, failed writes, two answers for one token, one SET for
 * callers that shared a query, negative answers, expiry, and the sweep's
 * timing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

#include <string>

#include "check/fill_tracker.h"

using namespace session_cache;

namespace {

const std::uint64_t kTimeout = 200;   /* the Redis timeout, ms */

struct Fixture {
    FillTracker fills;
    std::uint64_t now = 5000000;      /* the settable clock, ms */
    std::int64_t now_sec = 1800000000; /* Unix seconds, for expiry */

    const Session *miss(std::string_view token, std::uint64_t get_seq)
    {
        return fills.lookup(token, get_seq, false, now_sec);
    }

    const Session *failed(std::string_view token, std::uint64_t get_seq)
    {
        return fills.lookup(token, get_seq, true, now_sec);
    }
};

Session
session(const char *user, bool has_expiry = false, std::int64_t at = 0)
{
    Session s;
    s.user_id = user;
    s.has_expiry = has_expiry;
    s.expires_at = at;
    return s;
}

void
assert_user(const Session *s, const char *user)
{
    assert_non_null(s);
    assert_string_equal(s->user_id.c_str(), user);
}

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
test_nothing_known(void **state)
{
    assert_null(F.miss("tok", F.fills.get_sent()));
    assert_null(F.failed("tok", 0));
    assert_int_equal(F.fills.size(), 0);
}

void
test_gets_are_numbered_from_one(void **state)
{
    assert_int_equal(F.fills.get_sent(), 1);
    assert_int_equal(F.fills.get_sent(), 2);
    assert_int_equal(F.fills.get_sent(), 3);
}

/* Rule 1: while the SET is unacknowledged, every miss takes the answer,
 * whenever its GET was sent, and also when its GET failed or none was
 * sent (Redis down, breaker open: BYPASS). */
void
test_unacknowledged_answers_every_miss(void **state)
{
    Session s = session("alice");
    std::uint64_t before = F.fills.get_sent();

    assert_non_null(F.fills.write_started("tok", &s));

    std::uint64_t after = F.fills.get_sent();

    assert_user(F.miss("tok", before), "alice");
    assert_user(F.miss("tok", after), "alice");
    assert_user(F.miss("tok", 0), "alice");
    assert_user(F.failed("tok", before), "alice");
    assert_user(F.failed("tok", 0), "alice");
    assert_null(F.miss("other", after));
}

/* Rule 2: after the acknowledgement, a GET sent before it takes the
 * answer (it may have run before the SET landed)... */
void
test_get_sent_before_ack_takes_the_answer(void **state)
{
    Session s = session("alice");
    std::uint64_t early = F.fills.get_sent();      /* before the query */
    FillTracker::Fill *h = F.fills.write_started("tok", &s);
    std::uint64_t late = F.fills.get_sent();       /* before the ack */

    F.fills.write_acked(h, true, F.now);

    assert_user(F.miss("tok", early), "alice");
    assert_user(F.miss("tok", late), "alice");
}

/* ...and a GET sent after it that misses means the key went away
 * (deleted, expired): Postgres is asked. */
void
test_get_sent_after_ack_asks_postgres(void **state)
{
    Session s = session("alice");
    F.fills.write_acked(F.fills.write_started("tok", &s), true, F.now);

    std::uint64_t after = F.fills.get_sent();

    assert_null(F.miss("tok", after));
    assert_null(F.miss("tok", F.fills.get_sent()));
}

/* The GET sent just before the acknowledgement and the one just after it,
 * in the same millisecond: the order, not the clock, tells them apart. */
void
test_get_sent_exactly_at_the_ack(void **state)
{
    Session s = session("alice");
    FillTracker::Fill *h = F.fills.write_started("tok", &s);

    std::uint64_t last_before = F.fills.get_sent();
    F.fills.write_acked(h, true, F.now);
    std::uint64_t first_after = F.fills.get_sent();

    assert_int_equal(first_after, last_before + 1);
    assert_user(F.miss("tok", last_before), "alice");
    assert_null(F.miss("tok", first_after));
}

/* Once acknowledged, a failed GET (or none) proves nothing about the key:
 * only an unacknowledged SET answers it. */
void
test_failed_get_after_ack_asks_postgres(void **state)
{
    Session s = session("alice");
    std::uint64_t before = F.fills.get_sent();
    F.fills.write_acked(F.fills.write_started("tok", &s), true, F.now);

    assert_null(F.failed("tok", before));
    assert_null(F.miss("tok", 0));
    assert_user(F.miss("tok", before), "alice");
}

/* Rule 4: a SET that failed leaves nothing to bridge. */
void
test_write_failure_drops_the_entry(void **state)
{
    Session s = session("alice");
    std::uint64_t before = F.fills.get_sent();
    FillTracker::Fill *h = F.fills.write_started("tok", &s);

    F.fills.write_acked(h, false, F.now);

    assert_null(F.miss("tok", before));
    assert_null(F.failed("tok", 0));
    assert_int_equal(F.fills.size(), 0);

    /* and the next answer is written again */
    assert_non_null(F.fills.write_started("tok", &s));
}

/* A failed re-write of an entry acknowledged earlier: it answers nothing
 * at once, and goes at the sweep that pops its earlier acknowledgement. */
void
test_write_failure_after_an_earlier_ack(void **state)
{
    Session a = session("alice");
    Session b = session("bob");
    std::uint64_t before = F.fills.get_sent();

    F.fills.write_acked(F.fills.write_started("tok", &a), true, F.now);
    FillTracker::Fill *h = F.fills.write_started("tok", &b);
    assert_user(F.miss("tok", before), "bob");

    F.fills.write_acked(h, false, F.now + 10);

    assert_null(F.miss("tok", before));
    assert_null(F.failed("tok", 0));
    assert_int_equal(F.fills.size(), 1);

    F.fills.sweep(F.now + kTimeout + 1, kTimeout);
    assert_int_equal(F.fills.size(), 0);
}

/* Two different answers for one token (the session changed between two
 * queries): the later one is served, and the last SET to come back
 * decides whether the entry is bridged. */
void
test_two_answers_the_latest_is_served(void **state)
{
    Session a = session("alice");
    Session b = session("bob");

    FillTracker::Fill *h1 = F.fills.write_started("tok", &a);
    FillTracker::Fill *h2 = F.fills.write_started("tok", &b);
    assert_non_null(h1);
    assert_non_null(h2);
    assert_user(F.miss("tok", 0), "bob");

    /* the first ack: the second SET is still out, so still unacked */
    F.fills.write_acked(h1, true, F.now);
    std::uint64_t after_first = F.fills.get_sent();
    assert_user(F.miss("tok", after_first), "bob");
    assert_user(F.failed("tok", 0), "bob");

    F.fills.write_acked(h2, true, F.now + 1);
    assert_user(F.miss("tok", after_first), "bob");
    assert_null(F.miss("tok", F.fills.get_sent()));
}

void
test_two_answers_first_fails_second_lands(void **state)
{
    Session a = session("alice");
    Session b = session("bob");
    std::uint64_t before = F.fills.get_sent();

    FillTracker::Fill *h1 = F.fills.write_started("tok", &a);
    FillTracker::Fill *h2 = F.fills.write_started("tok", &b);

    F.fills.write_acked(h1, false, F.now);
    assert_user(F.miss("tok", before), "bob");   /* still unacked */

    F.fills.write_acked(h2, true, F.now);
    assert_user(F.miss("tok", before), "bob");
}

void
test_two_answers_first_lands_second_fails(void **state)
{
    Session a = session("alice");
    Session b = session("bob");
    std::uint64_t before = F.fills.get_sent();

    FillTracker::Fill *h1 = F.fills.write_started("tok", &a);
    FillTracker::Fill *h2 = F.fills.write_started("tok", &b);

    F.fills.write_acked(h1, true, F.now);
    F.fills.write_acked(h2, false, F.now);

    assert_null(F.miss("tok", before));
    assert_int_equal(F.fills.size(), 0);
}

/* Rule 5: the callers that shared one Postgres query write once. */
void
test_shared_answer_is_written_once(void **state)
{
    Session s = session("alice", true, F.now_sec + 3600);
    Session same = s;

    FillTracker::Fill *h = F.fills.write_started("tok", &s);
    assert_non_null(h);
    for (int i = 0; i < 9; i++) {
        assert_null(F.fills.write_started("tok", &same));
    }

    /* one SET out, so one ack acknowledges it */
    F.fills.write_acked(h, true, F.now);
    assert_null(F.miss("tok", F.fills.get_sent()));

    /* acknowledged: a later answer (the key went away, Postgres asked
     * again) is written again */
    assert_non_null(F.fills.write_started("tok", &same));
}

/* An answer that differs in the expiry alone is a different answer. */
void
test_same_user_other_expiry_is_written(void **state)
{
    Session s = session("alice", true, F.now_sec + 3600);
    Session later = session("alice", true, F.now_sec + 7200);
    Session never = session("alice");

    assert_non_null(F.fills.write_started("tok", &s));
    assert_non_null(F.fills.write_started("tok", &later));
    assert_non_null(F.fills.write_started("tok", &never));
    assert_null(F.fills.write_started("tok", &never));
}

/* Negative answers: "no such session" is bridged like a session, written
 * once for its callers, and differs from a session. */
void
test_negative_answer(void **state)
{
    std::uint64_t before = F.fills.get_sent();
    FillTracker::Fill *h = F.fills.write_started("tok", nullptr);

    assert_non_null(h);
    assert_null(F.fills.write_started("tok", nullptr));

    const Session *a = F.miss("tok", before);
    assert_non_null(a);
    assert_true(a->user_id.empty());

    F.fills.write_acked(h, true, F.now);
    a = F.miss("tok", before);
    assert_non_null(a);
    assert_true(a->user_id.empty());
    assert_null(F.miss("tok", F.fills.get_sent()));

    /* a session after a negative answer, and back */
    Session s = session("alice", true, F.now_sec + 60);
    assert_non_null(F.fills.write_started("tok", &s));
    assert_user(F.miss("tok", 0), "alice");
    assert_non_null(F.fills.write_started("tok", nullptr));
    assert_true(F.miss("tok", 0)->user_id.empty());
}

/* A negative answer is never "expired": it has no expiry to check, even
 * after a session with one was answered for the token before. */
void
test_negative_answer_has_no_expiry(void **state)
{
    Session s = session("alice", true, F.now_sec + 60);
    F.fills.write_started("tok", &s);
    F.fills.write_started("tok", nullptr);

    F.now_sec += 3600;
    const Session *a = F.miss("tok", 0);
    assert_non_null(a);
    assert_true(a->user_id.empty());
    assert_false(a->has_expiry);
}

/* Rule 6: a session that has expired since is not handed out. */
void
test_expired_session_is_not_served(void **state)
{
    Session s = session("alice", true, F.now_sec + 10);
    F.fills.write_started("tok", &s);

    F.now_sec += 9;
    assert_user(F.miss("tok", 0), "alice");
    F.now_sec += 1;                               /* expires_at == now */
    assert_null(F.miss("tok", 0));

    Session forever = session("bob");
    F.fills.write_started("tok2", &forever);
    F.now_sec += 1000000;
    assert_user(F.miss("tok2", 0), "bob");
}

/* Rule 3: an acknowledged entry stays for the Redis timeout after its
 * acknowledgement (a GET sent before it may still be waiting), to the
 * millisecond, then goes. */
void
test_sweep_timing(void **state)
{
    Session s = session("alice");
    std::uint64_t before = F.fills.get_sent();
    F.fills.write_acked(F.fills.write_started("tok", &s), true, F.now);

    F.fills.sweep(F.now + kTimeout - 1, kTimeout);
    assert_user(F.miss("tok", before), "alice");
    F.fills.sweep(F.now + kTimeout, kTimeout);    /* exactly the timeout */
    assert_user(F.miss("tok", before), "alice");
    assert_int_equal(F.fills.size(), 1);

    F.fills.sweep(F.now + kTimeout + 1, kTimeout);
    assert_null(F.miss("tok", before));
    assert_int_equal(F.fills.size(), 0);
}

/* The sweep goes in the order of acknowledgement and stops at the first
 * entry that is still needed. */
void
test_sweep_in_order(void **state)
{
    Session s = session("alice");
    std::uint64_t before = F.fills.get_sent();

    F.fills.write_acked(F.fills.write_started("t1", &s), true, F.now);
    F.fills.write_acked(F.fills.write_started("t2", &s), true, F.now + 50);
    F.fills.write_acked(F.fills.write_started("t3", &s), true, F.now + 100);

    F.fills.sweep(F.now + 50 + kTimeout + 1, kTimeout);
    assert_null(F.miss("t1", before));
    assert_null(F.miss("t2", before));
    assert_user(F.miss("t3", before), "alice");
    assert_int_equal(F.fills.size(), 1);
}

/* A SET still out keeps its entry through a sweep, however old its
 * previous acknowledgement. */
void
test_sweep_keeps_an_entry_being_written(void **state)
{
    Session a = session("alice");
    Session b = session("bob");

    F.fills.write_acked(F.fills.write_started("tok", &a), true, F.now);
    FillTracker::Fill *h = F.fills.write_started("tok", &b);

    F.fills.sweep(F.now + 10 * kTimeout, kTimeout);
    assert_int_equal(F.fills.size(), 1);
    assert_user(F.failed("tok", 0), "bob");

    /* acknowledged later: it stays for a timeout from that moment */
    std::uint64_t before = F.fills.get_sent();
    std::uint64_t acked_at = F.now + 10 * kTimeout;
    F.fills.write_acked(h, true, acked_at);
    F.fills.sweep(acked_at + kTimeout, kTimeout);
    assert_user(F.miss("tok", before), "bob");
    F.fills.sweep(acked_at + kTimeout + 1, kTimeout);
    assert_int_equal(F.fills.size(), 0);
}

/* Written again after an acknowledgement: the entry lives until a
 * timeout after its last acknowledgement, not its first. */
void
test_sweep_follows_the_last_ack(void **state)
{
    Session s = session("alice");

    F.fills.write_acked(F.fills.write_started("tok", &s), true, F.now);
    std::uint64_t between = F.fills.get_sent();
    F.fills.write_acked(F.fills.write_started("tok", &s), true, F.now + 100);

    F.fills.sweep(F.now + kTimeout + 1, kTimeout);
    assert_user(F.miss("tok", between), "alice");

    F.fills.sweep(F.now + 100 + kTimeout + 1, kTimeout);
    assert_int_equal(F.fills.size(), 0);
}

/* Two acknowledgements in the same millisecond go in the same sweep. */
void
test_sweep_two_acks_in_one_millisecond(void **state)
{
    Session s = session("alice");

    F.fills.write_acked(F.fills.write_started("tok", &s), true, F.now);
    F.fills.write_acked(F.fills.write_started("tok", &s), true, F.now);

    F.fills.sweep(F.now + kTimeout, kTimeout);
    assert_int_equal(F.fills.size(), 1);
    F.fills.sweep(F.now + kTimeout + 1, kTimeout);
    assert_int_equal(F.fills.size(), 0);
}

/* The tracker owns its keys: the caller's token buffer may change or go
 * once write_started() returns; short and long tokens alike. */
void
test_keys_are_owned(void **state)
{
    Session s = session("alice");
    std::string shorter = "short";
    std::string longer(200, 'x');

    F.fills.write_started(shorter, &s);
    F.fills.write_started(longer, &s);

    shorter.assign("other");
    longer.assign(200, 'y');

    assert_user(F.miss("short", 0), "alice");
    assert_user(F.miss(std::string(200, 'x'), 0), "alice");
    assert_null(F.miss(shorter, 0));
    assert_null(F.miss(longer, 0));
    assert_null(F.miss(std::string(199, 'x'), 0));
}

/* Many entries: rehashing moves no key away from its token. */
void
test_many_tokens(void **state)
{
    Session s = session("alice");
    std::uint64_t before = F.fills.get_sent();

    for (int i = 0; i < 5000; i++) {
        std::string t = "token-" + std::to_string(i)
                        + std::string(i % 40, 'p');
        F.fills.write_acked(F.fills.write_started(t, &s), true, F.now + i);
    }
    assert_int_equal(F.fills.size(), 5000);

    for (int i = 0; i < 5000; i++) {
        std::string t = "token-" + std::to_string(i)
                        + std::string(i % 40, 'p');
        assert_user(F.miss(t, before), "alice");
    }

    F.fills.sweep(F.now + 2500 + kTimeout, kTimeout);
    assert_int_equal(F.fills.size(), 2500);
    F.fills.sweep(F.now + 5000 + kTimeout, kTimeout);
    assert_int_equal(F.fills.size(), 0);
}

}  // namespace

int
main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_nothing_known),
        T(test_gets_are_numbered_from_one),
        T(test_unacknowledged_answers_every_miss),
        T(test_get_sent_before_ack_takes_the_answer),
        T(test_get_sent_after_ack_asks_postgres),
        T(test_get_sent_exactly_at_the_ack),
        T(test_failed_get_after_ack_asks_postgres),
        T(test_write_failure_drops_the_entry),
        T(test_write_failure_after_an_earlier_ack),
        T(test_two_answers_the_latest_is_served),
        T(test_two_answers_first_fails_second_lands),
        T(test_two_answers_first_lands_second_fails),
        T(test_shared_answer_is_written_once),
        T(test_same_user_other_expiry_is_written),
        T(test_negative_answer),
        T(test_negative_answer_has_no_expiry),
        T(test_expired_session_is_not_served),
        T(test_sweep_timing),
        T(test_sweep_in_order),
        T(test_sweep_keeps_an_entry_being_written),
        T(test_sweep_follows_the_last_ack),
        T(test_sweep_two_acks_in_one_millisecond),
        T(test_keys_are_owned),
        T(test_many_tokens),
    };

    return cmocka_run_group_tests_name("fill_tracker", tests, nullptr,
                                       nullptr)
           ? 1 : 0;
}
