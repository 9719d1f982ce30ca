/*
 * Revocation from Postgres (SPEC §9), pure rules: channel names, payload
 * classification, the reconnection backoff. And the lease rules as two
 * independent leases (the L1 listener's and the revocation listener's)
 * see them.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

#include <string>

#include "l1/l1_logic.h"
#include "pg/revocation.h"

using namespace session_cache::revocation;
namespace l1 = session_cache::l1;

namespace {

void channel_names(void **)
{
    assert_null(channel_problem("session_cache_revoke"));
    assert_null(channel_problem("_x"));
    assert_null(channel_problem("a1_2"));
    assert_null(channel_problem(std::string(63, 'a')));

    assert_non_null(channel_problem(""));
    assert_non_null(channel_problem(std::string(64, 'a')));
    assert_non_null(channel_problem("1abc"));
    assert_non_null(channel_problem("Revoke")); /* LISTEN folds it */
    assert_non_null(channel_problem("re-voke"));
    assert_non_null(channel_problem("re voke"));
    assert_non_null(channel_problem("a\"b")); /* no quoting games */
    assert_non_null(channel_problem("a;b"));
    assert_non_null(channel_problem("caf\xc3\xa9"));
    assert_non_null(channel_problem("a$b"));
    assert_non_null(channel_problem(std::string("a\0b", 3)));
}

void payloads(void **)
{
    assert_int_equal(classify("tok-123"), Payload::Token);
    assert_int_equal(classify(std::string(512, 'x')), Payload::Token);
    assert_int_equal(classify("*"), Payload::All);

    assert_int_equal(classify(""), Payload::Ignored);
    assert_int_equal(classify(std::string(513, 'x')), Payload::Ignored);
    assert_int_equal(classify(std::string(7999, 'x')), Payload::Ignored);
    assert_int_equal(classify("*junk"), Payload::Ignored);
    assert_int_equal(classify("**"), Payload::Ignored);
    assert_int_equal(classify("tok\x01"), Payload::Ignored);
    assert_int_equal(classify("tok\n"), Payload::Ignored);
    assert_int_equal(classify("tok\x7f"), Payload::Ignored);
    assert_int_equal(classify("a b"), Payload::Ignored);
    assert_int_equal(classify("a;b"), Payload::Ignored);
    assert_int_equal(classify("caf\xc3\xa9"), Payload::Ignored);
    /* a '*' inside a token is the token's */
    assert_int_equal(classify("a*"), Payload::Token);
}

void backoff(void **)
{
    assert_int_equal(reconnect_delay(0), 1000);
    assert_int_equal(reconnect_delay(1), 2000);
    assert_int_equal(reconnect_delay(2), 4000);
    assert_int_equal(reconnect_delay(3), 8000);
    assert_int_equal(reconnect_delay(1000), 8000);
}

/* Two leases, one per listener: holding one says nothing of the other. */
void two_leases(void **)
{
    l1::Lease     redis, revoke;
    std::uint64_t t = 10000;

    /* worker 100 takes the Redis listener's, worker 101 the other */
    assert_int_equal(l1::lease_decide(redis, 100, 1, t), l1::LeaseAction::Take);
    redis = {100, 1, t};
    assert_int_equal(l1::lease_decide(revoke, 100, 1, t),
                     l1::LeaseAction::Take);
    assert_int_equal(l1::lease_decide(revoke, 101, 1, t),
                     l1::LeaseAction::Take);
    revoke = {101, 1, t};

    assert_true(l1::lease_held(redis, 100, 1));
    assert_false(l1::lease_held(revoke, 100, 1));
    assert_true(l1::lease_held(revoke, 101, 1));
    assert_false(l1::lease_held(revoke, 101, 2)); /* a newer generation */

    /* 101 dies: its lease is taken after the timeout, the other stays */
    redis.heartbeat = t + l1::kHeartbeatTimeout;
    assert_int_equal(
        l1::lease_decide(revoke, 100, 1, t + l1::kHeartbeatTimeout),
        l1::LeaseAction::Take);
    assert_int_equal(l1::lease_decide(redis, 102, 1, t + l1::kHeartbeatTimeout),
                     l1::LeaseAction::Wait);

    /* a reload (generation 2) takes both at once */
    assert_int_equal(l1::lease_decide(redis, 200, 2, t + 1),
                     l1::LeaseAction::Take);
    assert_int_equal(l1::lease_decide(revoke, 200, 2, t + 1),
                     l1::LeaseAction::Take);
}

} // namespace

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(channel_names),
        cmocka_unit_test(payloads),
        cmocka_unit_test(backoff),
        cmocka_unit_test(two_leases),
    };

    return cmocka_run_group_tests_name("revocation", tests, nullptr, nullptr);
}
