/*
 * The health document (SPEC §6) as data, the rules that turn it into a
 * status, and its two renderings: JSON and Prometheus text. Pure logic: no
 * nginx types, so the unit tests link this file alone. health_handler.cpp
 * fills a Report from the probes, the shared figures (metrics/figures.h)
 * and the breakers' states (breaker/breaker_state.h).
 */
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "breaker/breaker_state.h"
#include "l1/l1_logic.h"
#include "metrics/figures.h"
#include "metrics/latency.h"

namespace session_cache::health {

/* Every request checked: each one has exactly one outcome. */
std::uint64_t total(const Counters &c);

/* Percentage of cache lookups the cache answered:
 * (hits + negatives) / (hits + negatives + misses + bypasses); 0 if none. */
double hit_rate(const Counters &c);

enum class Status { Healthy, Degraded, Unhealthy };

const char *status_name(Status s);

struct BackendReport {
    bool         configured = false;
    bool         connected = false; /* it answered the first probe */
    std::string  error;             /* why a probe failed; empty if none */
    BreakerState breaker = BreakerState::Closed;
    PoolFigures  pool; /* summed over all workers */
    std::optional<std::string> version;
};

/* Redis Cluster (SPEC §10): "redis.cluster", as the worker that answers
 * sees it (its node pools; the redirections are summed over workers). */
struct ClusterNodeReport {
    std::string   address; /* "127.0.0.1:7000" */
    std::uint64_t slots = 0;
    std::string   error; /* why it has no pool; empty if it has one */
    PoolFigures   pool;  /* this worker's */
    BreakerState  breaker = BreakerState::Closed; /* its own */
};

struct ClusterReport {
    bool                           enabled = false; /* redis-cluster:// */
    std::string                    error; /* why the map is not fresh */
    std::uint64_t                  slots_covered = 0;
    std::vector<ClusterNodeReport> nodes;
};

/* sentinel:// (SPEC §10): "redis": {"sentinel": {...}} */
struct SentinelReport {
    std::string                 master_name;
    std::optional<std::string>  address;        /* the master now, if known */
    std::uint64_t               switches = 0;   /* by this nginx instance */
    std::optional<std::int64_t> last_switch_ms; /* Unix ms */
    std::string error; /* why the last discovery failed; empty if none */
};

struct Redis : BackendReport {
    std::optional<SentinelReport> sentinel;    /* sentinel:// only */
    std::optional<std::int64_t>   uptime;      /* seconds */
    std::optional<std::string>    used_memory; /* "1.75M" */
    std::optional<std::uint64_t>  used_memory_bytes;
    std::optional<std::int64_t>   total_keys; /* DBSIZE */
    std::optional<double>         ping_ms, set_ms, get_ms;
    ClusterReport                 cluster;
};

/* Where one of the answering worker's Postgres pools is (SPEC §11). */
struct PgHostReport {
    std::string           pool; /* main, or primary (the lag guard) */
    std::string           host;
    std::string           port;
    std::string           role; /* primary, standby, unknown */
    std::uint64_t         connections = 0;
    std::optional<double> lag_ms; /* a standby the probe ran on */
};

struct Postgres : BackendReport {
    std::optional<double> query_ms; /* SELECT 1 */
    /* why the session query cannot be prepared (Postgres's words), empty
     * if it can: a configuration error, no session can be checked there */
    std::string query_error;
    /* the pools' hosts, in the worker that answers (SPEC §11) */
    std::vector<PgHostReport> hosts;
};

/* The L1 cache (SPEC §8): the top-level "l1" object. */
struct L1Report {
    bool          enabled = false;  /* session_cache_l1 configured */
    bool          tracking = false; /* tracking=on */
    bool          armed = false;    /* consulted now */
    std::uint64_t entries = 0;
    std::uint64_t capacity = 0; /* bytes */
    std::uint64_t used_bytes = 0;
    std::uint64_t hits = 0;
    std::uint64_t negatives = 0;
    std::uint64_t invalidations = 0;
    std::uint64_t evictions = 0;
    std::uint64_t flushes[l1::kFlushReasons] = {};
    std::optional<std::string>  reason;   /* why not armed; none while armed */
    std::optional<std::int64_t> listener; /* pid of the listening worker */
};

/* Revocation from Postgres (SPEC §9): the top-level "revocation" object. */
struct RevocationReport {
    bool          enabled = false;   /* session_cache_revocation on */
    std::string   channel;           /* the channel's name */
    std::string   state = "off";     /* closed, connecting, subscribing,
                                      * listening */
    bool          listening = false; /* LISTEN on, heartbeat answered */
    std::uint64_t notifications = 0;
    std::uint64_t revoked = 0;
    std::uint64_t flushes = 0; /* "*" */
    std::uint64_t ignored = 0;
    std::uint64_t reconnects = 0;
    std::optional<std::string>  reason;   /* why not listening */
    std::optional<std::int64_t> listener; /* pid of the listening worker */
};

struct Report {
    std::int64_t now_ms = 0; /* Unix time, milliseconds */
    Redis        redis;
    Postgres     postgres;
    Counters     counters;
    Latency      check[kLayers];     /* the check's duration, by Layer */
    std::int64_t ttl = 0;            /* session_cache_ttl, seconds */
    double       threshold_ms = 100; /* a probe slower than this: degraded */
    L1Report     l1;
    RevocationReport revocation;

    /* set by evaluate() */
    Status                   status = Status::Unhealthy;
    std::vector<std::string> errors;
};

/*
 * SPEC §6: healthy when every configured backend answers, every breaker
 * is closed and no probe is slower than the threshold; unhealthy when no
 * backend can check a session (none answers, or the breakers of those that
 * do are open) or the session query cannot be prepared (a configuration
 * error: every cache miss fails); degraded otherwise. The reasons go to
 * errors.
 */
void evaluate(Report *r);

/* 200 for healthy and degraded, 503 for unhealthy. */
int http_status(Status s);

std::string render_json(const Report &r);

/* Prometheus text exposition format 0.0.4. */
std::string render_prometheus(const Report &r);

/* The fields of an INFO reply the document shows. */
struct RedisInfo {
    std::optional<std::string>   version;
    std::optional<std::int64_t>  uptime;
    std::optional<std::string>   used_memory_human;
    std::optional<std::uint64_t> used_memory;
};

RedisInfo parse_redis_info(std::string_view text);

/* "15.18 (Debian 15.18-0+deb12u1)" -> "15.18" */
std::string short_version(std::string_view server_version);

} // namespace session_cache::health
