/*
 * The health document (SPEC §6): status rules, JSON and Prometheus
 * rendering, Redis INFO parsing.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

#include <string>

#include "health/health_render.h"

using namespace session_cache::health;
using session_cache::BreakerState;
using session_cache::Counters;
using session_cache::Layer;

namespace {

bool
contains(const std::string &s, const std::string &part)
{
    return s.find(part) != std::string::npos;
}


/* Both backends configured, answering, fast. */
Report
good()
{
    Report r;
    r.now_ms = 1795687200123;    /* 2026-11-26T10:00:00.123Z */
    r.ttl = 300;
    r.redis.configured = true;
    r.redis.connected = true;
    r.redis.version = "7.0.15";
    r.redis.uptime = 197265;
    r.redis.used_memory = "1.75M";
    r.redis.used_memory_bytes = 1835008;
    r.redis.total_keys = 3;
    r.redis.ping_ms = 0.4;
    r.redis.set_ms = 0.5;
    r.redis.get_ms = 0.25;
    r.redis.pool = {2, 2, 0, 4};
    r.postgres.configured = true;
    r.postgres.connected = true;
    r.postgres.version = "15.18";
    r.postgres.query_ms = 0.9;
    r.postgres.pool = {1, 1, 0, 4};
    return r;
}


void
test_counters(void **)
{
    Counters c;
    assert_int_equal(total(c), 0);
    assert_true(hit_rate(c) == 0);

    c.hits = 6;
    c.negatives = 2;
    c.misses = 1;
    c.bypasses = 1;
    c.rejected = 5;
    c.errors = 3;
    c.invalidations = 7;    /* not an outcome: not in the total */
    assert_int_equal(total(c), 18);
    assert_true(hit_rate(c) > 79.99 && hit_rate(c) < 80.01);
}


void
test_healthy(void **)
{
    Report r = good();
    evaluate(&r);
    assert_int_equal(static_cast<int>(r.status),
                     static_cast<int>(Status::Healthy));
    assert_true(r.errors.empty());
    assert_int_equal(http_status(r.status), 200);
}


void
test_redis_down_is_degraded(void **)
{
    Report r = good();
    r.redis.connected = false;
    r.redis.error = "timed out after 200ms";
    r.redis.ping_ms.reset();
    evaluate(&r);
    assert_int_equal(static_cast<int>(r.status),
                     static_cast<int>(Status::Degraded));
    assert_int_equal(r.errors.size(), 1);
    assert_string_equal(r.errors[0].c_str(),
                        "redis: not answering: timed out after 200ms");
    assert_int_equal(http_status(r.status), 200);
}


void
test_postgres_down_is_degraded(void **)
{
    Report r = good();
    r.postgres.connected = false;
    r.postgres.error = "connection refused";
    evaluate(&r);
    assert_int_equal(static_cast<int>(r.status),
                     static_cast<int>(Status::Degraded));
    assert_true(contains(r.errors.at(0), "postgres"));
}


void
test_both_down_is_unhealthy(void **)
{
    Report r = good();
    r.redis.connected = false;
    r.postgres.connected = false;
    evaluate(&r);
    assert_int_equal(static_cast<int>(r.status),
                     static_cast<int>(Status::Unhealthy));
    assert_int_equal(r.errors.size(), 2);
    assert_int_equal(http_status(r.status), 503);
}


void
test_only_postgres_configured(void **)
{
    Report r = good();
    r.redis = Redis();
    evaluate(&r);
    assert_int_equal(static_cast<int>(r.status),
                     static_cast<int>(Status::Healthy));

    r.postgres.connected = false;
    evaluate(&r);
    assert_int_equal(static_cast<int>(r.status),
                     static_cast<int>(Status::Unhealthy));
}


void
test_nothing_configured(void **)
{
    Report r;
    evaluate(&r);
    assert_int_equal(static_cast<int>(r.status),
                     static_cast<int>(Status::Unhealthy));
    assert_string_equal(r.errors.at(0).c_str(), "no backend configured");
}


void
test_breakers(void **)
{
    Report r = good();
    r.redis.breaker = BreakerState::HalfOpen;
    evaluate(&r);
    assert_int_equal(static_cast<int>(r.status),
                     static_cast<int>(Status::Degraded));
    assert_string_equal(r.errors.at(0).c_str(), "redis: breaker half_open");

    /* the names the document shows, one per state */
    std::string j = render_json(r);
    assert_true(contains(j, "\"breaker\": \"half_open\", \"pool\""));
    assert_true(contains(j, "\"breaker\": \"closed\", \"pool\""));
    assert_true(contains(j, "\"sessionCache\": {\"enabled\": true, "
                            "\"healthy\": false"));

    /* one breaker open, the other backend still checks sessions */
    r.redis.breaker = BreakerState::Open;
    evaluate(&r);
    assert_int_equal(static_cast<int>(r.status),
                     static_cast<int>(Status::Degraded));
    assert_string_equal(r.errors.at(0).c_str(), "redis: breaker open");
    assert_true(contains(render_json(r), "\"breaker\": \"open\""));

    /* both answer, but both breakers are open: nothing checks a session */
    r.postgres.breaker = BreakerState::Open;
    evaluate(&r);
    assert_int_equal(static_cast<int>(r.status),
                     static_cast<int>(Status::Unhealthy));
}


/* postgres.hosts (SPEC §11): where each pool is, its role, the lag the
 * probe measured on a standby; an empty list when nothing is open */
void
test_pg_hosts(void **)
{
    Report r = good();
    assert_true(contains(render_json(r), "\"hosts\": []"));

    session_cache::health::PgHostReport main, primary;
    main.pool = "main";
    main.host = "db2.example";
    main.port = "5433";
    main.role = "standby";
    main.connections = 3;
    main.lag_ms = 12.5;
    primary.pool = "primary";
    primary.host = "db1.example";
    primary.port = "5432";
    primary.role = "primary";
    primary.connections = 1;
    r.postgres.hosts = {main, primary};
    evaluate(&r);

    std::string j = render_json(r);
    assert_true(contains(j, "\"hosts\": [{\"pool\": \"main\", \"host\": "
                            "\"db2.example\", \"port\": \"5433\", "
                            "\"role\": \"standby\", \"connections\": 3, "
                            "\"replicationLagMs\": 12.5}, {\"pool\": "
                            "\"primary\", \"host\": \"db1.example\", "
                            "\"port\": \"5432\", \"role\": \"primary\", "
                            "\"connections\": 1, \"replicationLagMs\": "
                            "null}]"));

    std::string p = render_prometheus(r);
    assert_true(contains(p, "nginx_session_cache_postgres_host_connections{"
                            "pool=\"main\",host=\"db2.example\",port=\"5433\","
                            "role=\"standby\"} 3\n"));
    assert_true(contains(p, "nginx_session_cache_postgres_host_connections{"
                            "pool=\"primary\",host=\"db1.example\","
                            "port=\"5432\",role=\"primary\"} 1\n"));
    assert_true(contains(p, "nginx_session_cache_postgres_replication_lag_"
                            "seconds{pool=\"main\",host=\"db2.example\","
                            "port=\"5433\",role=\"standby\"} 0.0125\n"));
    /* no lag where the probe did not measure one */
    assert_false(contains(p, "replication_lag_seconds{pool=\"primary\""));
    assert_int_equal(static_cast<int>(r.status),
                     static_cast<int>(Status::Healthy));
}


/* Redis Cluster (SPEC §10): each master's own breaker, in JSON and
 * Prometheus; one open makes the document degraded, naming the master,
 * and leaves redis.breaker (the cluster's) alone */
void
test_cluster_node_breakers(void **)
{
    Report r = good();
    r.redis.cluster.enabled = true;
    r.redis.cluster.slots_covered = 16384;

    ClusterNodeReport a, b;
    a.address = "10.0.0.1:7000";
    a.slots = 8192;
    a.breaker = BreakerState::Open;
    b.address = "10.0.0.2:7000";
    b.slots = 8192;
    r.redis.cluster.nodes = {a, b};
    evaluate(&r);

    assert_int_equal(static_cast<int>(r.status),
                     static_cast<int>(Status::Degraded));
    bool named = false;
    for (const std::string &e : r.errors) {
        named = named
                || e == "redis cluster: node 10.0.0.1:7000: circuit breaker "
                        "open (its slots go to postgres)";
        assert_false(contains(e, "10.0.0.2"));
    }
    assert_true(named);

    std::string j = render_json(r);
    assert_true(contains(j, "\"address\": \"10.0.0.1:7000\", \"slots\": "
                            "8192, \"breaker\": \"open\""));
    assert_true(contains(j, "\"address\": \"10.0.0.2:7000\", \"slots\": "
                            "8192, \"breaker\": \"closed\""));
    assert_true(contains(j, "\"breaker\": \"closed\", \"pool\""));

    std::string p = render_prometheus(r);
    assert_true(contains(p, "nginx_session_cache_redis_cluster_node_breaker_"
                            "state{node=\"10.0.0.1:7000\",state=\"open\"} "
                            "1\n"));
    assert_true(contains(p, "nginx_session_cache_redis_cluster_node_breaker_"
                            "state{node=\"10.0.0.1:7000\",state=\"closed\"} "
                            "0\n"));
    assert_true(contains(p, "nginx_session_cache_redis_cluster_node_breaker_"
                            "state{node=\"10.0.0.2:7000\",state=\"closed\"} "
                            "1\n"));

    /* a master without slots (met through a redirection only) is no
     * reason for degraded */
    r.redis.cluster.nodes[0].slots = 0;
    r.redis.cluster.nodes[1].slots = 16384;
    evaluate(&r);
    assert_int_equal(static_cast<int>(r.status),
                     static_cast<int>(Status::Healthy));
}


/* A session query Postgres cannot prepare is a configuration error: no
 * cache miss can be checked, whatever else answers. */
void
test_session_query_unpreparable(void **)
{
    Report r = good();
    r.postgres.query_error = "column \"nope\" does not exist";
    evaluate(&r);
    assert_int_equal(static_cast<int>(r.status),
                     static_cast<int>(Status::Unhealthy));
    assert_int_equal(http_status(r.status), 503);
    assert_int_equal(r.errors.size(), 1);
    assert_string_equal(r.errors.at(0).c_str(),
                        "postgres: the session query cannot be prepared: "
                        "column \"nope\" does not exist");

    std::string j = render_json(r);
    assert_true(contains(j, "\"status\": \"unhealthy\""));
    assert_true(contains(j, "cannot be prepared: column \\\"nope\\\""));

    /* Postgres not configured: nothing to prepare */
    r = good();
    r.postgres = {};
    r.postgres.query_error = "stale";
    evaluate(&r);
    assert_int_equal(static_cast<int>(r.status),
                     static_cast<int>(Status::Healthy));
}


void
test_latency_threshold(void **)
{
    Report r = good();
    r.threshold_ms = 100;
    r.redis.set_ms = 150.26;
    evaluate(&r);
    assert_int_equal(static_cast<int>(r.status),
                     static_cast<int>(Status::Degraded));
    assert_string_equal(r.errors.at(0).c_str(),
                        "redis: SET took 150.3 ms, above the 100 ms threshold");

    r.redis.set_ms = 100;    /* at the threshold is not above it */
    evaluate(&r);
    assert_int_equal(static_cast<int>(r.status),
                     static_cast<int>(Status::Healthy));
}


void
test_a_later_probe_failing(void **)
{
    Report r = good();
    r.redis.error = "SET: OOM command not allowed";
    evaluate(&r);
    assert_int_equal(static_cast<int>(r.status),
                     static_cast<int>(Status::Degraded));
    assert_string_equal(r.errors.at(0).c_str(),
                        "redis: SET: OOM command not allowed");
}


void
test_json(void **)
{
    Report r = good();
    r.counters.hits = 3;
    r.counters.misses = 1;
    evaluate(&r);
    std::string j = render_json(r);

    assert_true(contains(j, "\"status\": \"healthy\""));
    assert_true(contains(j, "\"timestamp\": \"2026-11-26T10:00:00.123Z\""));
    assert_true(contains(j, "\"version\": \"7.0.15\""));
    assert_true(contains(j, "\"uptime\": 197265"));
    assert_true(contains(j, "\"usedMemory\": \"1.75M\""));
    assert_true(contains(j, "\"totalKeys\": 3"));
    assert_true(contains(j, "\"hits\": 3"));
    assert_true(contains(j, "\"total\": 4"));
    assert_true(contains(j, "\"hitRate\": 75"));
    assert_true(contains(j, "\"ttl\": 300"));
    assert_true(contains(j, "\"ping\": 0.4"));
    assert_true(contains(j, "\"get\": 0.25"));
    assert_true(contains(j, "\"postgres\": 0.9"));
    assert_true(contains(j, "\"errors\": []"));
    assert_true(contains(j, "\"pool\": {\"size\": 2, \"available\": 2, "
                            "\"pending\": 0, \"max\": 4}"));
}


void
test_json_unknowns_and_escaping(void **)
{
    Report r = good();
    r.redis.connected = false;
    r.redis.version.reset();
    r.redis.uptime.reset();
    r.redis.ping_ms.reset();
    r.redis.error = "say \"no\"\n\x01";
    evaluate(&r);
    std::string j = render_json(r);

    assert_true(contains(j, "\"version\": null"));
    assert_true(contains(j, "\"uptime\": null"));
    assert_true(contains(j, "\"ping\": null"));
    assert_true(contains(j, "say \\\"no\\\"\\n\\u0001"));
    assert_true(contains(j, "\"status\": \"degraded\""));
}


void
test_prometheus(void **)
{
    Report r = good();
    r.counters.hits = 3;
    r.counters.bypasses = 1;
    r.redis.breaker = BreakerState::HalfOpen;
    r.postgres.version = "15 \"x\"";
    evaluate(&r);
    std::string p = render_prometheus(r);

    assert_true(contains(p, "# HELP nginx_session_cache_hits_total "));
    assert_true(contains(p, "# TYPE nginx_session_cache_hits_total counter\n"
                            "nginx_session_cache_hits_total 3\n"));
    assert_true(contains(p, "nginx_session_cache_requests_total 4\n"));
    assert_true(contains(p, "nginx_session_cache_hit_ratio 0.75\n"));
    assert_true(contains(p, "nginx_session_cache_status{status=\"degraded\"} 1\n"));
    assert_true(contains(p, "nginx_session_cache_status{status=\"healthy\"} 0\n"));
    assert_true(contains(p, "nginx_session_cache_breaker_state{backend=\"redis\","
                            "state=\"half_open\"} 1\n"));
    assert_true(contains(p, "nginx_session_cache_breaker_state"
                            "{backend=\"redis\",state=\"closed\"} 0\n"
                            "nginx_session_cache_breaker_state"
                            "{backend=\"redis\",state=\"open\"} 0\n"));
    assert_true(contains(p, "nginx_session_cache_breaker_state"
                            "{backend=\"postgres\",state=\"closed\"} 1\n"));
    assert_true(contains(p, "nginx_session_cache_pool_size{backend=\"redis\"} 2\n"));
    assert_true(contains(p, "nginx_session_cache_probe_duration_seconds"
                            "{probe=\"ping\"} 0.0004\n"));
    assert_true(contains(p, "version=\"15 \\\"x\\\"\""));

    /* every family announced once, with HELP before TYPE */
    std::size_t helps = 0, types = 0, pos = 0;
    while ((pos = p.find("# HELP ", pos)) != std::string::npos) {
        helps++;
        pos++;
    }
    pos = 0;
    while ((pos = p.find("# TYPE ", pos)) != std::string::npos) {
        types++;
        pos++;
    }
    assert_int_equal(helps, types);
    assert_true(helps >= 20);
}


/* Redis: 3 checks, 2 in (100µs, 250µs], 1 in (1ms, 2.5ms]; Postgres: 1
 * in +Inf; none: 1 in the first bucket; L1: nothing yet. */
Report
with_latency()
{
    Report r = good();
    auto  &redis = r.check[static_cast<int>(Layer::Redis)];
    redis.buckets[1] = 2;
    redis.buckets[4] = 1;
    redis.sum_ns = 2100000;
    auto &pg = r.check[static_cast<int>(Layer::Postgres)];
    pg.buckets[session_cache::kFiniteBuckets] = 1;
    pg.sum_ns = 1500000000;
    auto &none = r.check[static_cast<int>(Layer::None)];
    none.buckets[0] = 1;
    none.sum_ns = 1234;
    evaluate(&r);
    return r;
}


void
test_prometheus_histogram(void **)
{
    std::string p = render_prometheus(with_latency());
    const char *b = "nginx_session_cache_check_duration_seconds_bucket";

    assert_true(contains(p, "# TYPE nginx_session_cache_check_duration_seconds "
                            "histogram\n"));
    /* cumulative, every bound written in full */
    assert_true(contains(p, std::string(b) + "{layer=\"redis\",le=\"0.0001\"} 0\n"
                            + b + "{layer=\"redis\",le=\"0.00025\"} 2\n"
                            + b + "{layer=\"redis\",le=\"0.0005\"} 2\n"
                            + b + "{layer=\"redis\",le=\"0.001\"} 2\n"
                            + b + "{layer=\"redis\",le=\"0.0025\"} 3\n"));
    assert_true(contains(p, std::string(b) + "{layer=\"redis\",le=\"1\"} 3\n"
                            + b + "{layer=\"redis\",le=\"+Inf\"} 3\n"
                            "nginx_session_cache_check_duration_seconds_sum"
                            "{layer=\"redis\"} 0.0021\n"
                            "nginx_session_cache_check_duration_seconds_count"
                            "{layer=\"redis\"} 3\n"));
    assert_true(contains(p, std::string(b) + "{layer=\"postgres\",le=\"1\"} 0\n"
                            + b + "{layer=\"postgres\",le=\"+Inf\"} 1\n"
                            "nginx_session_cache_check_duration_seconds_sum"
                            "{layer=\"postgres\"} 1.5\n"));
    assert_true(contains(p, "nginx_session_cache_check_duration_seconds_sum"
                            "{layer=\"none\"} 0.000001234\n"));
    /* L1 is there, counted 0, until it exists */
    assert_true(contains(p, std::string(b) + "{layer=\"l1\",le=\"+Inf\"} 0\n"
                            "nginx_session_cache_check_duration_seconds_sum"
                            "{layer=\"l1\"} 0\n"
                            "nginx_session_cache_check_duration_seconds_count"
                            "{layer=\"l1\"} 0\n"));

    /* 14 buckets per layer, 4 layers */
    std::size_t n = 0, pos = 0;
    while ((pos = p.find(std::string(b) + "{", pos)) != std::string::npos) {
        n++;
        pos++;
    }
    assert_int_equal(n, 4 * 14);
}


void
test_json_check_latency(void **)
{
    std::string j = render_json(with_latency());

    /* the existing figures first, unchanged */
    assert_true(contains(j, "\"performance\": {\"ping\": 0.4, "));
    /* p50: rank 1.5 of 2 in (0.1, 0.25] ms, 0.2125 (0.21249..., in binary)
     * to three places; p99: rank 2.97, 0.97 of 1 in
     * (1, 2.5] ms */
    assert_true(contains(j, "\"check\": {"
                            "\"l1\": {\"count\": 0, \"p50\": null, "
                            "\"p99\": null}, "
                            "\"redis\": {\"count\": 3, \"p50\": 0.212, "
                            "\"p99\": 2.455}, "
                            "\"postgres\": {\"count\": 1, \"p50\": 1000, "
                            "\"p99\": 1000}, "
                            "\"none\": {\"count\": 1, \"p50\": 0.05, "
                            "\"p99\": 0.099}}}"));
}


void
test_redis_info(void **)
{
    RedisInfo i = parse_redis_info(
        "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n"
        "uptime_in_seconds:197265\r\n\r\n# Memory\r\nused_memory:1835008\r\n"
        "used_memory_human:1.75M\r\nused_memory_rss:99\r\n");
    assert_string_equal(i.version->c_str(), "7.0.15");
    assert_int_equal(*i.uptime, 197265);
    assert_string_equal(i.used_memory_human->c_str(), "1.75M");
    assert_int_equal(*i.used_memory, 1835008);

    i = parse_redis_info("uptime_in_seconds:x\nredis_version:\x01\n");
    assert_false(i.uptime.has_value());
    assert_false(i.version.has_value());
    assert_false(i.used_memory.has_value());

    i = parse_redis_info("");
    assert_false(i.version.has_value());
}


void
test_short_version(void **)
{
    assert_string_equal(short_version("15.18 (Debian 15.18-0+deb12u1)").c_str(),
                        "15.18");
    assert_string_equal(short_version("16.1").c_str(), "16.1");
    assert_string_equal(short_version("").c_str(), "");
}

}  // namespace


/* The top-level "l1" object and its Prometheus figures (SPEC §8). */
void
test_l1(void **)
{
    Report r;
    r.redis.configured = true;
    r.redis.connected = true;

    /* off */
    r.l1.reason = "session_cache_l1 is off";
    std::string j = render_json(r);
    assert_true(contains(j, "\"l1\": {\"enabled\": false, "
                            "\"tracking\": false, \"armed\": false, "
                            "\"entries\": 0"));
    assert_true(contains(j, "\"reason\": \"session_cache_l1 is off\", "
                            "\"listener\": null}"));

    /* armed, with figures and flushes by reason */
    r.l1.enabled = true;
    r.l1.tracking = true;
    r.l1.armed = true;
    r.l1.entries = 12;
    r.l1.capacity = 1048576;
    r.l1.used_bytes = 4096;
    r.l1.hits = 7;
    r.l1.invalidations = 3;
    r.l1.flushes[static_cast<int>(
        session_cache::l1::FlushReason::Heartbeat)] = 2;
    r.l1.reason.reset();
    r.l1.listener = 4242;
    j = render_json(r);
    assert_true(contains(j, "\"armed\": true, \"entries\": 12, "
                            "\"capacity\": 1048576, \"usedBytes\": 4096, "
                            "\"hits\": 7"));
    assert_true(contains(j, "\"flushes\": {\"flush\": 0, "
                            "\"listener_lost\": 0, \"heartbeat\": 2, "
                            "\"takeover\": 0, \"reconnect\": 0, "
                            "\"topology\": 0, \"revocation\": 0, "
                            "\"revocation_lost\": 0}"));
    assert_true(contains(j, "\"reason\": null, \"listener\": 4242}"));

    std::string p = render_prometheus(r);
    assert_true(contains(p, "\nnginx_session_cache_l1_armed 1\n"));
    assert_true(contains(p, "\nnginx_session_cache_l1_entries 12\n"));
    assert_true(contains(p, "\nnginx_session_cache_l1_hits_total 7\n"));
    assert_true(contains(p,
                         "\nnginx_session_cache_l1_invalidations_total 3\n"));
    assert_true(contains(p, "# TYPE nginx_session_cache_l1_flushes_total "
                            "counter\n"));
    assert_true(contains(p, "\nnginx_session_cache_l1_flushes_total"
                            "{reason=\"heartbeat\"} 2\n"));
    assert_true(contains(p, "\nnginx_session_cache_l1_flushes_total"
                            "{reason=\"topology\"} 0\n"));
}

/* sentinel:// (SPEC §10): the "sentinel" object, its error, Prometheus */
void
test_sentinel(void **)
{
    Report r = good();
    evaluate(&r);
    assert_false(contains(render_json(r), "\"sentinel\""));
    assert_false(contains(render_prometheus(r), "sentinel"));

    SentinelReport s;
    s.master_name = "mymaster";
    s.address = "10.0.0.8:6379";
    s.switches = 2;
    s.last_switch_ms = 1764482345123;
    r.redis.sentinel = s;
    evaluate(&r);
    assert_int_equal(r.status, Status::Healthy);

    std::string j = render_json(r);
    assert_true(contains(j, "\"sentinel\": {\"master\": \"mymaster\", "
                            "\"address\": \"10.0.0.8:6379\", "
                            "\"switches\": 2, \"lastSwitch\": "
                            "\"2025-11-30T05:59:05.123Z\", \"error\": null}"));

    std::string p = render_prometheus(r);
    assert_true(contains(p, "nginx_session_cache_redis_sentinel_master_info"
                            "{master=\"mymaster\",address=\"10.0.0.8:6379\"} 1\n"));
    assert_true(contains(p, "nginx_session_cache_redis_sentinel_switches_total 2\n"));
    assert_true(contains(p, "nginx_session_cache_redis_sentinel_last_switch_"
                            "timestamp_seconds 1764482345.123\n"));
    assert_true(contains(p, "nginx_session_cache_redis_sentinel_discovery_failing 0\n"));

    /* no master known: null address, the reason in errors, degraded */
    r.redis.sentinel->address.reset();
    r.redis.sentinel->last_switch_ms.reset();
    r.redis.sentinel->switches = 0;
    r.redis.sentinel->error = "sentinel 10.0.0.1:26379: AUTH refused: WRONGPASS";
    evaluate(&r);
    assert_int_equal(r.status, Status::Degraded);
    j = render_json(r);
    assert_true(contains(j, "\"address\": null"));
    assert_true(contains(j, "\"lastSwitch\": null"));
    assert_true(contains(j, "redis: sentinel: sentinel 10.0.0.1:26379: AUTH "
                            "refused: WRONGPASS"));
    p = render_prometheus(r);
    assert_false(contains(p, "sentinel_master_info{"));
    assert_true(contains(p, "nginx_session_cache_redis_sentinel_discovery_failing 1\n"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counters),
        cmocka_unit_test(test_healthy),
        cmocka_unit_test(test_redis_down_is_degraded),
        cmocka_unit_test(test_postgres_down_is_degraded),
        cmocka_unit_test(test_both_down_is_unhealthy),
        cmocka_unit_test(test_only_postgres_configured),
        cmocka_unit_test(test_nothing_configured),
        cmocka_unit_test(test_breakers),
        cmocka_unit_test(test_session_query_unpreparable),
        cmocka_unit_test(test_latency_threshold),
        cmocka_unit_test(test_a_later_probe_failing),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_sentinel),
        cmocka_unit_test(test_json_unknowns_and_escaping),
        cmocka_unit_test(test_prometheus),
        cmocka_unit_test(test_prometheus_histogram),
        cmocka_unit_test(test_json_check_latency),
        cmocka_unit_test(test_redis_info),
        cmocka_unit_test(test_short_version),
        cmocka_unit_test(test_l1),
        cmocka_unit_test(test_pg_hosts),
        cmocka_unit_test(test_cluster_node_breakers),
    };

    return cmocka_run_group_tests_name("health_render", tests, NULL, NULL);
}
