/*
 * Redis Sentinel discovery's pure rules (SPEC §10): the addresses a
 * sentinel gives, +switch-master, ROLE, the order sentinels are asked in,
 * the wait between failed rounds.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

#include "redis/redis_url.h"
#include "redis/sentinel_logic.h"

using namespace session_cache::sentinel;
using session_cache::is_ip_literal;

namespace {

void test_address(void **)
{
    Address a;

    assert_true(parse_address("127.0.0.1", "6380", &a));
    assert_string_equal(a.host.c_str(), "127.0.0.1");
    assert_int_equal(a.port, 6380);
    assert_true(is_ip_literal(a.host));
    assert_string_equal(address_text(a).c_str(), "127.0.0.1:6380");

    assert_true(parse_address("::1", "1", &a));
    assert_true(is_ip_literal("::1"));
    assert_string_equal(address_text(a).c_str(), "[::1]:1");

    assert_true(parse_address("redis-1.internal", "65535", &a));
    assert_false(is_ip_literal(a.host));

    assert_false(parse_address("", "6379", &a));
    assert_false(parse_address("h", "", &a));
    assert_false(parse_address("h", "0", &a));
    assert_false(parse_address("h", "65536", &a));
    assert_false(parse_address("h", "-1", &a));
    assert_false(parse_address("h", "+1", &a));
    assert_false(parse_address("h", "63 79", &a));
    assert_false(parse_address("h x", "6379", &a));
    assert_false(parse_address("h\r\n", "6379", &a));
    assert_false(is_ip_literal("1.2.3"));
    assert_false(is_ip_literal(""));
}

void test_switch(void **)
{
    Address to;

    assert_true(parse_switch("mymaster 127.0.0.1 6379 127.0.0.1 6380",
                             "mymaster", &to));
    assert_string_equal(to.host.c_str(), "127.0.0.1");
    assert_int_equal(to.port, 6380);

    assert_false(
        parse_switch("other 127.0.0.1 6379 127.0.0.1 6380", "mymaster", &to));
    assert_false(
        parse_switch("mymaster 127.0.0.1 6379 127.0.0.1", "mymaster", &to));
    assert_false(parse_switch("mymaster 127.0.0.1 6379 127.0.0.1 6380 x",
                              "mymaster", &to));
    assert_false(
        parse_switch("mymaster 127.0.0.1 6379 127.0.0.1 0", "mymaster", &to));
    assert_false(parse_switch("", "mymaster", &to));
    assert_false(parse_switch("mymaster2 a 1 b 2", "mymaster", &to));
}

void test_role(void **)
{
    assert_true(is_master_role("master"));
    assert_false(is_master_role("slave"));
    assert_false(is_master_role("sentinel"));
    assert_false(is_master_role(""));
    assert_false(is_master_role("MASTER"));

    assert_true(is_refusal("READONLY"));
    assert_true(is_refusal("LOADING"));
    assert_true(is_refusal("MASTERDOWN"));
    assert_false(is_refusal("WRONGTYPE"));
    assert_false(is_refusal("ERR unknown command"));
}

void test_rotation(void **)
{
    Rotation r(3);

    /* each sentinel once per round, from the first */
    r.begin();
    assert_int_equal(r.current(), 0);
    r.next();
    assert_int_equal(r.current(), 1);
    r.next();
    assert_int_equal(r.current(), 2);
    assert_false(r.done());
    r.next();
    assert_true(r.done());

    /* the one that answered is asked first next time */
    r.begin();
    r.next();
    r.answered(); /* sentinel 1 */
    r.begin();
    assert_int_equal(r.current(), 1);
    r.next();
    assert_int_equal(r.current(), 2);
    r.next();
    assert_int_equal(r.current(), 0);
    r.next();
    assert_true(r.done());

    /* a +switch-master names the sentinel to ask */
    r.prefer(5);
    r.begin();
    assert_int_equal(r.current(), 2);

    Rotation one(0);
    one.begin();
    assert_int_equal(one.current(), 0);
    one.next();
    assert_true(one.done());
}

void test_retry(void **)
{
    assert_int_equal(retry_delay(0), kRetryMin);
    assert_int_equal(retry_delay(1), kRetryMin);
    assert_int_equal(retry_delay(2), 2 * kRetryMin);
    assert_int_equal(retry_delay(3), 4 * kRetryMin);
    assert_int_equal(retry_delay(10), kRetryMax);
    assert_int_equal(retry_delay(1000000), kRetryMax);
}

} // namespace

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_address), cmocka_unit_test(test_switch),
        cmocka_unit_test(test_role),    cmocka_unit_test(test_rotation),
        cmocka_unit_test(test_retry),
    };

    return cmocka_run_group_tests_name("sentinel_logic", tests, nullptr,
                                       nullptr)
               ? 1
               : 0;
}
