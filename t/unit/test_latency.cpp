/*
 * The check's latency histogram (SPEC §13): the bucket a duration falls
 * in, and quantile estimates that agree with Prometheus'
 * histogram_quantile() on the same buckets.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

#include <cmath>
#include <cstring>

#include "metrics/latency.h"

using namespace session_cache;

namespace {

/* cmocka's assert_float_equal works in float: too coarse for seconds */
#define assert_near(a, b)                                                 \
    assert_true(std::fabs((a) - (b)) < 1e-12)

/* The index of the finite bucket whose bound is `seconds`. */
int
bucket_of_bound(double seconds)
{
    for (int i = 0; i < kFiniteBuckets; i++) {
        if (std::fabs(static_cast<double>(kLatencyBounds[i]) / 1e9 - seconds)
            < 1e-12)
        {
            return i;
        }
    }
    fail_msg("no bucket bound %g", seconds);
    return -1;
}


void
test_bounds(void **)
{
    /* 100 µs to 1 s, increasing, then +Inf */
    assert_int_equal(kLatencyBounds[0], 100000);
    assert_int_equal(kLatencyBounds[kFiniteBuckets - 1], 1000000000);
    for (int i = 1; i < kFiniteBuckets; i++) {
        assert_true(kLatencyBounds[i] > kLatencyBounds[i - 1]);
    }
    assert_int_equal(kLatencyBuckets, kFiniteBuckets + 1);
    assert_int_equal(kFiniteBuckets, 13);
}


void
test_bucket(void **)
{
    /* a bound belongs to its own bucket (le: less than or equal) */
    assert_int_equal(latency_bucket(0), 0);
    assert_int_equal(latency_bucket(100000), 0);
    assert_int_equal(latency_bucket(100001), 1);
    assert_int_equal(latency_bucket(250000), 1);
    assert_int_equal(latency_bucket(999999), bucket_of_bound(0.001));
    assert_int_equal(latency_bucket(1000000), bucket_of_bound(0.001));
    assert_int_equal(latency_bucket(1000001), bucket_of_bound(0.0025));
    assert_int_equal(latency_bucket(1000000000), kFiniteBuckets - 1);
    assert_int_equal(latency_bucket(1000000001), kFiniteBuckets);
    assert_int_equal(latency_bucket(UINT64_MAX), kFiniteBuckets);
}


void
test_layers(void **)
{
    assert_int_equal(kLayers, 4);
    assert_string_equal(layer_name(Layer::L1), "l1");
    assert_string_equal(layer_name(Layer::Redis), "redis");
    assert_string_equal(layer_name(Layer::Postgres), "postgres");
    assert_string_equal(layer_name(Layer::None), "none");
}


void
test_count(void **)
{
    Latency h;
    assert_int_equal(h.count(), 0);
    h.buckets[0] = 2;
    h.buckets[kFiniteBuckets] = 3;
    assert_int_equal(h.count(), 5);
}


void
test_quantile_empty(void **)
{
    Latency h;
    assert_true(std::isnan(latency_quantile(h, 0.5)));
    assert_true(std::isnan(latency_quantile(h, 0.99)));
}


void
test_quantile_interpolates(void **)
{
    /* 100 observations, all in (0.5ms, 1ms]: histogram_quantile gives
     * 0.5ms + 0.5ms * rank / 100 */
    Latency h;
    h.buckets[bucket_of_bound(0.001)] = 100;

    assert_near(latency_quantile(h, 0.5), 0.00075);
    assert_near(latency_quantile(h, 0.99), 0.000995);
    assert_near(latency_quantile(h, 1), 0.001);

    /* the first bucket starts at 0 */
    Latency f;
    f.buckets[0] = 4;
    assert_near(latency_quantile(f, 0.5), 0.00005);
}


void
test_quantile_across_buckets(void **)
{
    /* 10 in (0, 100µs], 10 in (100µs, 250µs], 80 in (1ms, 2.5ms]:
     * p50 has rank 50, 30 into the third non-empty bucket's 80;
     * p99 rank 99, 79 of 80. The values promtool's histogram_quantile
     * gives for the same cumulative buckets (10, 20, 20, 20, 100). */
    Latency h;
    h.buckets[0] = 10;
    h.buckets[1] = 10;
    h.buckets[bucket_of_bound(0.0025)] = 80;

    assert_near(latency_quantile(h, 0.5), 0.001 + 0.0015 * 30 / 80);
    assert_near(latency_quantile(h, 0.99), 0.001 + 0.0015 * 79 / 80);
    /* rank 10: the end of the first bucket */
    assert_near(latency_quantile(h, 0.1), 0.0001);
}


void
test_quantile_in_inf(void **)
{
    /* a rank in +Inf: the highest finite bound, 1 s */
    Latency h;
    h.buckets[0] = 1;
    h.buckets[kFiniteBuckets] = 99;

    assert_near(latency_quantile(h, 0.5), 1.0);
    assert_near(latency_quantile(h, 0.99), 1.0);
    assert_near(latency_quantile(h, 0.01), 0.0001);
}


void
test_quantile_out_of_range(void **)
{
    Latency h;
    h.buckets[0] = 1;
    assert_true(std::isinf(latency_quantile(h, -0.1)));
    assert_true(latency_quantile(h, -0.1) < 0);
    assert_true(std::isinf(latency_quantile(h, 1.1)));
    assert_true(std::isnan(latency_quantile(h, NAN)));
}

}  // namespace


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_bucket),
        cmocka_unit_test(test_layers),
        cmocka_unit_test(test_count),
        cmocka_unit_test(test_quantile_empty),
        cmocka_unit_test(test_quantile_interpolates),
        cmocka_unit_test(test_quantile_across_buckets),
        cmocka_unit_test(test_quantile_in_inf),
        cmocka_unit_test(test_quantile_out_of_range),
    };

    return cmocka_run_group_tests_name("latency", tests, NULL, NULL);
}
