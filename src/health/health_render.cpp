#include "health/health_render.h"

#include "integer.h"

#include <cmath>
#include <cstdio>
#include <initializer_list>
#include <ctime>

namespace session_cache::health {

std::uint64_t total(const Counters &c)
{
    return c.hits + c.misses + c.negatives + c.bypasses + c.rejected + c.errors;
}

double hit_rate(const Counters &c)
{
    std::uint64_t answered = c.hits + c.negatives;
    std::uint64_t lookups = answered + c.misses + c.bypasses;

    if (lookups == 0) {
        return 0;
    }

    return 100.0 * static_cast<double>(answered) / static_cast<double>(lookups);
}

const char *status_name(Status s)
{
    switch (s) {
    case Status::Healthy:
        return "healthy";
    case Status::Degraded:
        return "degraded";
    case Status::Unhealthy:
        break;
    }
    return "unhealthy";
}

int http_status(Status s)
{
    return s == Status::Unhealthy ? 503 : 200;
}

/* A number as JSON and Prometheus both read it: no exponent, no trailing
 * zeros, at most `decimals` places. */
static std::string number(double v, int decimals = 3)
{
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
    std::string s(buf);

    if (s.find('.') != std::string::npos) {
        while (s.back() == '0') {
            s.pop_back();
        }
        if (s.back() == '.') {
            s.pop_back();
        }
    }

    if (s == "-0") {
        s = "0";
    }

    return s;
}

static std::string number(std::uint64_t v)
{
    return std::to_string(v);
}

static std::string number(std::int64_t v)
{
    return std::to_string(v);
}

static void slow(Report *r, const char *backend, const char *probe,
                 const std::optional<double> &ms)
{
    if (ms && *ms > r->threshold_ms) {
        r->errors.push_back(std::string(backend) + ": " + probe + " took "
                            + number(*ms, 1) + " ms, above the "
                            + number(r->threshold_ms, 1) + " ms threshold");
    }
}

/* Adds the backend's problems to errors; true if it can check sessions. */
static bool assess(Report *r, const BackendReport &b, const char *name)
{
    if (!b.configured) {
        return false;
    }

    bool usable = b.connected;

    if (!b.connected) {
        r->errors.push_back(std::string(name) + ": not answering: "
                            + (b.error.empty() ? "no answer" : b.error));
    } else if (!b.error.empty()) {
        r->errors.push_back(std::string(name) + ": " + b.error);
    }

    if (b.breaker != BreakerState::Closed) {
        r->errors.push_back(std::string(name) + ": breaker "
                            + breaker_state_name(b.breaker));
        if (b.breaker == BreakerState::Open) {
            usable = false;
        }
    }

    return usable;
}

/* A cluster without a fresh map, or with slots no master serves: those
 * sessions go to Postgres, the others are still checked (degraded). */
static void cluster_assess(Report *r, const ClusterReport &c)
{
    if (!c.enabled) {
        return;
    }

    if (!c.error.empty()) {
        r->errors.push_back("redis cluster: " + c.error);
    }

    if (c.slots_covered < 16384) {
        r->errors.push_back("redis cluster: " + std::to_string(c.slots_covered)
                            + " of 16384 slots served");
    }

    for (const ClusterNodeReport &n : c.nodes) {
        if (!n.error.empty() && n.slots) {
            r->errors.push_back("redis cluster: node " + n.address + " "
                                + n.error);
        }
        if (n.breaker != BreakerState::Closed && n.slots) {
            r->errors.push_back("redis cluster: node " + n.address
                                + ": circuit breaker "
                                + breaker_state_name(n.breaker)
                                + " (its slots go to postgres)");
        }
    }
}

void evaluate(Report *r)
{
    r->errors.clear();

    bool redis = assess(r, r->redis, "redis");
    bool pg = assess(r, r->postgres, "postgres");

    if (r->redis.sentinel && !r->redis.sentinel->error.empty()) {
        r->errors.push_back("redis: sentinel: " + r->redis.sentinel->error);
    }

    slow(r, "redis", "PING", r->redis.ping_ms);
    slow(r, "redis", "SET", r->redis.set_ms);
    slow(r, "redis", "GET", r->redis.get_ms);
    slow(r, "postgres", "SELECT 1", r->postgres.query_ms);

    cluster_assess(r, r->redis.cluster);

    if (!r->redis.configured && !r->postgres.configured) {
        r->errors.push_back("no backend configured");
    }

    bool misconfigured =
        r->postgres.configured && !r->postgres.query_error.empty();

    if (misconfigured) {
        r->errors.push_back("postgres: the session query cannot be "
                            "prepared: "
                            + r->postgres.query_error);
    }

    if ((!redis && !pg) || misconfigured) {
        r->status = Status::Unhealthy;
    } else if (!r->errors.empty()) {
        r->status = Status::Degraded;
    } else {
        r->status = Status::Healthy;
    }
}

/* ------------------------------------------------------------ JSON */

static void json_string(std::string *out, std::string_view s)
{
    static const char hex[] = "0123456789abcdef";

    out->push_back('"');

    for (unsigned char c : s) {
        switch (c) {
        case '"':
            out->append("\\\"");
            break;
        case '\\':
            out->append("\\\\");
            break;
        case '\n':
            out->append("\\n");
            break;
        case '\r':
            out->append("\\r");
            break;
        case '\t':
            out->append("\\t");
            break;
        default:
            if (c < 0x20 || c == 0x7f) {
                out->append("\\u00");
                out->push_back(hex[c >> 4]);
                out->push_back(hex[c & 0xf]);
            } else {
                out->push_back(static_cast<char>(c));
            }
        }
    }

    out->push_back('"');
}

/* A small writer for one flat level of an object at a time. */
class Object {
public:
    explicit Object(std::string *out) : out_(out) { out_->push_back('{'); }

    void close() { out_->push_back('}'); }

    std::string *key(std::string_view k)
    {
        if (!first_) {
            out_->append(", ");
        }
        first_ = false;
        json_string(out_, k);
        out_->append(": ");
        return out_;
    }

    void raw(std::string_view k, std::string_view v) { key(k)->append(v); }
    void str(std::string_view k, std::string_view v) { json_string(key(k), v); }
    void boolean(std::string_view k, bool v) { raw(k, v ? "true" : "false"); }
    void num(std::string_view k, std::uint64_t v) { raw(k, number(v)); }

    template <class T>
    void opt_num(std::string_view k, const std::optional<T> &v)
    {
        raw(k, v ? number(*v) : std::string("null"));
    }

    void opt_str(std::string_view k, const std::optional<std::string> &v)
    {
        if (v) {
            str(k, *v);
        } else {
            raw(k, "null");
        }
    }

private:
    std::string *out_;
    bool         first_ = true;
};

/* A quantile in milliseconds, null when nothing was counted. */
static std::string quantile_ms(const Latency &h, double q)
{
    double s = latency_quantile(h, q);
    return std::isnan(s) ? std::string("null") : number(s * 1e3, 3);
}

static std::string iso8601(std::int64_t ms)
{
    std::time_t sec = static_cast<std::time_t>(ms / 1000);
    std::tm     tm{};
    gmtime_r(&sec, &tm);

    char buf[64];
    std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                  tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                  tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
    return buf;
}

static void pool_json(Object *o, std::string_view k, const PoolFigures &p)
{
    Object pool(o->key(k));
    pool.num("size", p.size);
    pool.num("available", p.available);
    pool.num("pending", p.pending);
    pool.num("max", p.max);
    pool.close();
}

/* postgres.hosts (SPEC §11): where this worker's pools are, what each
 * server is, and how far a standby the probe ran on replays behind. */
static void pg_hosts_json(Object *o, const std::vector<PgHostReport> &hosts)
{
    std::string *out = o->key("hosts");

    out->push_back('[');

    for (std::size_t i = 0; i < hosts.size(); i++) {
        const PgHostReport &h = hosts[i];

        if (i) {
            out->append(", ");
        }

        Object e(out);
        e.str("pool", h.pool);
        e.str("host", h.host);
        e.str("port", h.port);
        e.str("role", h.role);
        e.num("connections", h.connections);
        e.opt_num("replicationLagMs", h.lag_ms);
        e.close();
    }

    out->push_back(']');
}

/* The top-level "l1" object (SPEC §8). */
static void l1_json(Object *doc, const L1Report &l)
{
    Object o(doc->key("l1"));
    o.boolean("enabled", l.enabled);
    o.boolean("tracking", l.tracking);
    o.boolean("armed", l.armed);
    o.num("entries", l.entries);
    o.num("capacity", l.capacity);
    o.num("usedBytes", l.used_bytes);
    o.num("hits", l.hits);
    o.num("negatives", l.negatives);
    o.num("invalidations", l.invalidations);
    o.num("evictions", l.evictions);

    {
        Object f(o.key("flushes"));
        for (std::size_t i = 0; i < l1::kFlushReasons; i++) {
            f.num(l1::flush_reason_name(static_cast<l1::FlushReason>(i)),
                  l.flushes[i]);
        }
        f.close();
    }

    o.opt_str("reason", l.reason);
    o.opt_num("listener", l.listener);
    o.close();
}

/* The top-level "revocation" object (SPEC §9). */
static void revocation_json(Object *doc, const RevocationReport &v)
{
    Object o(doc->key("revocation"));
    o.boolean("enabled", v.enabled);
    if (v.enabled) {
        o.str("channel", v.channel);
    }
    o.str("state", v.state);
    o.boolean("listening", v.listening);
    o.num("notifications", v.notifications);
    o.num("revoked", v.revoked);
    o.num("flushes", v.flushes);
    o.num("ignored", v.ignored);
    o.num("reconnects", v.reconnects);
    o.opt_str("reason", v.reason);
    o.opt_num("listener", v.listener);
    o.close();
}

/* "redis": {"mode": "cluster", "cluster": {...}} (SPEC §10) */
static void cluster_json(Object *redis, const ClusterReport &c,
                         const Counters &k)
{
    redis->str("mode", "cluster");

    Object o(redis->key("cluster"));
    o.str("state",
          c.error.empty() && c.slots_covered == 16384 ? "ok" : "degraded");
    if (c.error.empty()) {
        o.raw("error", "null");
    } else {
        o.str("error", c.error);
    }
    o.num("slotsCovered", c.slots_covered);
    o.num("moved", k.moved);
    o.num("ask", k.asks);

    std::string *out = o.key("nodes");
    out->push_back('[');
    for (std::size_t i = 0; i < c.nodes.size(); i++) {
        if (i) {
            out->append(", ");
        }
        const ClusterNodeReport &n = c.nodes[i];
        Object                   node(out);
        node.str("address", n.address);
        node.num("slots", n.slots);
        if (!n.error.empty()) {
            node.str("error", n.error);
        }
        node.str("breaker", breaker_state_name(n.breaker));
        pool_json(&node, "pool", n.pool);
        node.close();
    }
    out->push_back(']');
    o.close();
}

/* sentinel:// (SPEC §10) */
static void sentinel_json(Object *o, const SentinelReport &s)
{
    Object j(o->key("sentinel"));
    j.str("master", s.master_name);
    j.opt_str("address", s.address);
    j.num("switches", s.switches);
    j.opt_str("lastSwitch", s.last_switch_ms ? std::optional<std::string>(
                                iso8601(*s.last_switch_ms))
                                             : std::nullopt);
    j.opt_str("error", s.error.empty() ? std::nullopt
                                       : std::optional<std::string>(s.error));
    j.close();
}

std::string render_json(const Report &r)
{
    std::string out;
    out.reserve(1024);

    Object doc(&out);
    doc.str("status", status_name(r.status));
    doc.str("timestamp", iso8601(r.now_ms));

    {
        const Redis &b = r.redis;
        Object       o(doc.key("redis"));
        o.boolean("configured", b.configured);
        o.boolean("connected", b.connected);
        o.opt_str("version", b.version);
        o.opt_num("uptime", b.uptime);
        o.opt_str("usedMemory", b.used_memory);
        o.opt_num("totalKeys", b.total_keys);
        o.str("breaker", breaker_state_name(b.breaker));
        pool_json(&o, "pool", b.pool);
        if (b.cluster.enabled) {
            cluster_json(&o, b.cluster, r.counters);
        }
        if (b.sentinel) {
            sentinel_json(&o, *b.sentinel);
        }
        o.close();
    }

    {
        const Postgres &b = r.postgres;
        Object          o(doc.key("postgres"));
        o.boolean("configured", b.configured);
        o.boolean("connected", b.connected);
        o.opt_str("version", b.version);
        o.str("breaker", breaker_state_name(b.breaker));
        pool_json(&o, "pool", b.pool);
        pg_hosts_json(&o, b.hosts);
        o.close();
    }

    {
        Object sc(doc.key("sessionCache"));
        sc.boolean("enabled", r.redis.configured);
        sc.boolean("healthy", r.redis.configured && r.redis.connected
                                  && r.redis.error.empty()
                                  && r.redis.breaker == BreakerState::Closed);

        const Counters &c = r.counters;
        Object          m(sc.key("metrics"));
        m.num("hits", c.hits);
        m.num("misses", c.misses);
        m.num("negatives", c.negatives);
        m.num("bypasses", c.bypasses);
        m.num("rejected", c.rejected);
        m.num("errors", c.errors);
        m.num("invalidations", c.invalidations);
        m.num("total", total(c));
        m.raw("hitRate", number(hit_rate(c), 2));
        m.boolean("enabled", true);
        m.raw("ttl", number(r.ttl));
        m.close();

        /* SPEC §6's one pool object: the cache's (Redis) pool; both
         * backends' are under redis.pool and postgres.pool */
        pool_json(&sc, "pool", r.redis.pool);
        sc.close();
    }

    {
        Object p(doc.key("performance"));
        p.opt_num("ping", r.redis.ping_ms);
        p.opt_num("set", r.redis.set_ms);
        p.opt_num("get", r.redis.get_ms);
        p.opt_num("postgres", r.postgres.query_ms);
        p.raw("threshold", number(r.threshold_ms));

        /* the check's latency by layer, estimated from the histogram as
         * Prometheus' histogram_quantile() would */
        Object check(p.key("check"));
        for (int l = 0; l < kLayers; l++) {
            const Latency &h = r.check[l];
            Object         o(check.key(layer_name(static_cast<Layer>(l))));
            o.num("count", h.count());
            o.raw("p50", quantile_ms(h, 0.5));
            o.raw("p99", quantile_ms(h, 0.99));
            o.close();
        }
        check.close();

        p.close();
    }

    l1_json(&doc, r.l1);
    revocation_json(&doc, r.revocation);

    std::string *e = doc.key("errors");
    e->push_back('[');
    for (std::size_t i = 0; i < r.errors.size(); i++) {
        if (i) {
            e->append(", ");
        }
        json_string(e, r.errors[i]);
    }
    e->push_back(']');

    doc.close();
    out.push_back('\n');

    return out;
}

/* ------------------------------------------------------ Prometheus */

static const char kPrefix[] = "nginx_session_cache_";

static std::string label_value(std::string_view v)
{
    std::string s;
    for (char c : v) {
        switch (c) {
        case '\\':
            s.append("\\\\");
            break;
        case '"':
            s.append("\\\"");
            break;
        case '\n':
            s.append("\\n");
            break;
        default:
            s.push_back(c);
        }
    }
    return s;
}

class Exposition {
public:
    explicit Exposition(std::string *out) : out_(out) {}

    /* HELP and TYPE, once per metric family */
    void family(const char *name, const char *type, const char *help)
    {
        name_ = std::string(kPrefix) + name;
        out_->append("# HELP " + name_ + " " + help + "\n");
        out_->append("# TYPE " + name_ + " " + type + "\n");
    }

    void sample(const std::string &value, const std::string &labels = "",
                const char *suffix = "")
    {
        out_->append(name_);
        out_->append(suffix);
        if (!labels.empty()) {
            out_->append("{" + labels + "}");
        }
        out_->append(" " + value + "\n");
    }

    /* Unlabelled counters, each its own family. */
    struct Counter {
        const char   *name;
        const char   *help;
        std::uint64_t value;
    };

    void counters(std::initializer_list<Counter> list)
    {
        for (const Counter &k : list) {
            family(k.name, "counter", k.help);
            sample(number(k.value));
        }
    }

private:
    std::string *out_;
    std::string  name_;
};

static std::string backend_label(const char *b)
{
    return std::string("backend=\"") + b + "\"";
}

/* The L1 figures (SPEC §8): nginx_session_cache_l1_*. */
static void l1_prometheus(Exposition *x, const L1Report &l)
{
    x->family("l1_enabled", "gauge", "1 if session_cache_l1 is configured.");
    x->sample(l.enabled ? "1" : "0");

    x->family("l1_armed", "gauge", "1 while L1 is consulted.");
    x->sample(l.armed ? "1" : "0");

    x->family("l1_entries", "gauge", "Entries in L1.");
    x->sample(number(l.entries));

    x->family("l1_capacity_bytes", "gauge", "Size of the L1 zone.");
    x->sample(number(l.capacity));

    x->family("l1_used_bytes", "gauge", "Bytes held by L1 entries.");
    x->sample(number(l.used_bytes));

    x->counters({
        {"l1_hits_total", "Sessions found valid in L1.", l.hits},
        {"l1_negatives_total", "Tokens refused by a negative entry in L1.",
         l.negatives},
        {"l1_invalidations_total", "Keys invalidated by Redis.",
         l.invalidations},
        {"l1_evictions_total", "Entries evicted from a full L1.", l.evictions},
    });

    x->family("l1_flushes_total", "counter", "Drops of the whole L1.");
    for (std::size_t i = 0; i < l1::kFlushReasons; i++) {
        x->sample(number(l.flushes[i]),
                  std::string("reason=\"")
                      + l1::flush_reason_name(static_cast<l1::FlushReason>(i))
                      + "\"");
    }
}

/* Revocation from Postgres (SPEC §9): nginx_session_cache_revocation_*. */
static void revocation_prometheus(Exposition *x, const RevocationReport &v)
{
    x->family("revocation_enabled", "gauge",
              "1 if session_cache_revocation is configured.");
    x->sample(v.enabled ? "1" : "0");

    x->family("revocation_listening", "gauge",
              "1 while the revocation listener listens on its channel.");
    x->sample(v.listening ? "1" : "0");

    x->counters({
        {"revocation_notifications_total",
         "Notifications received on the revocation channel.", v.notifications},
        {"revocation_revoked_total",
         "Tokens revoked by a notification (L1 entry and Redis key dropped).",
         v.revoked},
        {"revocation_flushes_total", "Notifications \"*\": all of L1 dropped.",
         v.flushes},
        {"revocation_ignored_total",
         "Notifications ignored: their payload is not a token.", v.ignored},
        {"revocation_reconnects_total",
         "Times the revocation listener listened again after a loss.",
         v.reconnects},
    });
}

/* Redis Cluster (SPEC §10): nginx_session_cache_redis_cluster_*. */
static void cluster_prometheus(Exposition *x, const ClusterReport &c,
                               const Counters &k)
{
    x->family("redis_cluster_slots_covered", "gauge",
              "Hash slots a reachable master serves, of 16384.");
    x->sample(number(c.slots_covered));

    x->family("redis_cluster_redirects_total", "counter",
              "MOVED and ASK replies followed or counted, over all workers.");
    x->sample(number(k.moved), "type=\"moved\"");
    x->sample(number(k.asks), "type=\"ask\"");

    x->family("redis_cluster_node_slots", "gauge",
              "Hash slots each master serves.");
    for (const ClusterNodeReport &n : c.nodes) {
        x->sample(number(n.slots), "node=\"" + label_value(n.address) + "\"");
    }

    x->family("redis_cluster_node_pool_size", "gauge",
              "Connections open to each master, in the worker that "
              "answered.");
    for (const ClusterNodeReport &n : c.nodes) {
        x->sample(number(n.pool.size),
                  "node=\"" + label_value(n.address) + "\"");
    }

    x->family("redis_cluster_node_breaker_state", "gauge",
              "Each master's own circuit breaker: 1 for the current one of "
              "closed, open, half_open.");
    for (const ClusterNodeReport &n : c.nodes) {
        for (BreakerState s :
             {BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen})
        {
            x->sample(n.breaker == s ? "1" : "0",
                      "node=\"" + label_value(n.address) + "\",state=\""
                          + breaker_state_name(s) + "\"");
        }
    }
}

/* postgres.hosts (SPEC §11): nginx_session_cache_postgres_host_* */
static void pg_hosts_prometheus(Exposition                      *x,
                                const std::vector<PgHostReport> &hosts)
{
    auto labels = [](const PgHostReport &h) {
        return "pool=\"" + label_value(h.pool) + "\",host=\""
               + label_value(h.host) + "\",port=\"" + label_value(h.port)
               + "\",role=\"" + label_value(h.role) + "\"";
    };

    x->family("postgres_host_connections", "gauge",
              "Connections open to each Postgres server, per pool (main, or "
              "primary for the lag guard), in the worker that answered.");
    for (const PgHostReport &h : hosts) {
        x->sample(number(h.connections), labels(h));
    }

    x->family("postgres_replication_lag_seconds", "gauge",
              "now() - pg_last_xact_replay_timestamp() on the standby the "
              "health probe ran on.");
    for (const PgHostReport &h : hosts) {
        if (h.lag_ms) {
            x->sample(number(*h.lag_ms / 1000.0, 6), labels(h));
        }
    }
}

/* sentinel:// (SPEC §10): nginx_session_cache_redis_sentinel_* */
static void sentinel_prometheus(Exposition *x, const SentinelReport &s)
{
    x->family("redis_sentinel_master_info", "gauge",
              "The Redis master Sentinel named and ROLE confirmed, as "
              "labels; always 1.");
    if (s.address) {
        x->sample("1", "master=\"" + label_value(s.master_name)
                           + "\",address=\"" + label_value(*s.address) + "\"");
    }

    x->counters({
        {"redis_sentinel_switches_total",
         "Changes of the Redis master seen by this nginx instance.",
         s.switches},
    });

    x->family("redis_sentinel_last_switch_timestamp_seconds", "gauge",
              "When the Redis master last changed (Unix time).");
    if (s.last_switch_ms) {
        x->sample(number(static_cast<double>(*s.last_switch_ms) / 1000.0, 3));
    }

    x->family("redis_sentinel_discovery_failing", "gauge",
              "1 while the last discovery found no master.");
    x->sample(s.error.empty() ? "0" : "1");
}

std::string render_prometheus(const Report &r)
{
    std::string out;
    out.reserve(4096);
    Exposition x(&out);

    const Counters &c = r.counters;
    x.counters({
        {"hits_total", "Sessions found valid in Redis.", c.hits},
        {"misses_total", "Sessions not in Redis, checked in Postgres.",
         c.misses},
        {"negatives_total", "Tokens refused by a negative entry in Redis.",
         c.negatives},
        {"bypasses_total", "Sessions checked in Postgres because Redis failed.",
         c.bypasses},
        {"rejected_total", "Tokens refused before any lookup (implausible).",
         c.rejected},
        {"errors_total",
         "Requests no store could answer (503 or auth_session_fail open).",
         c.errors},
        {"invalidations_total",
         "Cached entries found expired or unreadable and re-checked in "
         "Postgres.",
         c.invalidations},
        {"requests_total", "Requests checked, every outcome.", total(c)},
    });

    x.family("hit_ratio", "gauge",
             "Share of cache lookups answered by Redis (hits and negatives "
             "over hits, negatives, misses and bypasses), 0 to 1.");
    x.sample(number(hit_rate(c) / 100.0, 4));

    x.family("status", "gauge",
             "Health status: 1 for the current one of healthy, degraded, "
             "unhealthy.");
    for (Status s : {Status::Healthy, Status::Degraded, Status::Unhealthy}) {
        x.sample(r.status == s ? "1" : "0",
                 std::string("status=\"") + status_name(s) + "\"");
    }

    struct Named {
        const char          *name;
        const BackendReport *b;
    } backends[] = {{"redis", &r.redis}, {"postgres", &r.postgres}};

    x.family("backend_configured", "gauge", "1 if the backend is configured.");
    for (const auto &n : backends) {
        x.sample(n.b->configured ? "1" : "0", backend_label(n.name));
    }

    x.family("backend_up", "gauge",
             "1 if the backend answered the health probe.");
    for (const auto &n : backends) {
        x.sample(n.b->connected ? "1" : "0", backend_label(n.name));
    }

    x.family("backend_info", "gauge",
             "The backend's server version, as a label; always 1.");
    for (const auto &n : backends) {
        if (n.b->version) {
            x.sample("1", backend_label(n.name) + ",version=\""
                              + label_value(*n.b->version) + "\"");
        }
    }

    x.family("breaker_state", "gauge",
             "Circuit breaker state per backend: 1 for the current one of "
             "closed, open, half_open.");
    for (const auto &n : backends) {
        for (BreakerState s :
             {BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen})
        {
            x.sample(n.b->breaker == s ? "1" : "0",
                     backend_label(n.name) + ",state=\"" + breaker_state_name(s)
                         + "\"");
        }
    }

    struct {
        const char   *name;
        const char   *help;
        std::uint64_t PoolFigures::*field;
    } gauges[] = {
        {"pool_size", "Connections open, over all workers.",
         &PoolFigures::size},
        {"pool_available", "Connections open and idle, over all workers.",
         &PoolFigures::available},
        {"pool_pending", "Requests waiting for a connection, over all workers.",
         &PoolFigures::pending},
        {"pool_max", "Connections allowed, over all workers.",
         &PoolFigures::max},
    };

    for (const auto &g : gauges) {
        x.family(g.name, "gauge", g.help);
        for (const auto &n : backends) {
            if (n.b->configured) {
                x.sample(number(n.b->pool.*g.field), backend_label(n.name));
            }
        }
    }

    x.family("probe_duration_seconds", "gauge",
             "Round trip of the health probes: Redis PING, SET, GET and "
             "Postgres SELECT 1.");
    struct {
        const char                  *probe;
        const std::optional<double> *ms;
    } probes[] = {{"ping", &r.redis.ping_ms},
                  {"set", &r.redis.set_ms},
                  {"get", &r.redis.get_ms},
                  {"postgres", &r.postgres.query_ms}};
    for (const auto &p : probes) {
        if (*p.ms) {
            x.sample(number(**p.ms / 1000.0, 6),
                     std::string("probe=\"") + p.probe + "\"");
        }
    }

    x.family("check_duration_seconds", "histogram",
             "Time from the access handler's first call to the check's "
             "outcome, by the layer that answered (none: refused before "
             "any lookup, or no store answered).");
    for (int l = 0; l < kLayers; l++) {
        const Latency &h = r.check[l];
        std::string    layer =
            std::string("layer=\"") + layer_name(static_cast<Layer>(l)) + "\"";
        std::uint64_t cumulative = 0;

        for (int i = 0; i < kLatencyBuckets; i++) {
            cumulative += h.buckets[i];
            std::string le =
                i < kFiniteBuckets
                    ? number(static_cast<double>(kLatencyBounds[i]) / 1e9, 6)
                    : std::string("+Inf");
            x.sample(number(cumulative), layer + ",le=\"" + le + "\"",
                     "_bucket");
        }
        x.sample(number(static_cast<double>(h.sum_ns) / 1e9, 9), layer, "_sum");
        x.sample(number(cumulative), layer, "_count");
    }

    x.family("redis_keys", "gauge", "Keys in the Redis database (DBSIZE).");
    if (r.redis.total_keys) {
        x.sample(number(*r.redis.total_keys));
    }

    x.family("redis_uptime_seconds", "gauge", "Redis server uptime.");
    if (r.redis.uptime) {
        x.sample(number(*r.redis.uptime));
    }

    x.family("redis_memory_used_bytes", "gauge",
             "Memory used by Redis (INFO used_memory).");
    if (r.redis.used_memory_bytes) {
        x.sample(number(*r.redis.used_memory_bytes));
    }

    x.family("session_ttl_seconds", "gauge",
             "session_cache_ttl: how long a valid session stays cached.");
    x.sample(number(r.ttl));

    if (r.redis.cluster.enabled) {
        cluster_prometheus(&x, r.redis.cluster, r.counters);
    }

    pg_hosts_prometheus(&x, r.postgres.hosts);
    l1_prometheus(&x, r.l1);
    revocation_prometheus(&x, r.revocation);

    if (r.redis.sentinel) {
        sentinel_prometheus(&x, *r.redis.sentinel);
    }

    return out;
}

/* ------------------------------------------------------ Redis INFO */

/* Safe for the document: printable ASCII only, bounded. */
static bool printable(std::string_view s)
{
    if (s.empty() || s.size() > 64) {
        return false;
    }
    for (unsigned char c : s) {
        if (c < 0x20 || c > 0x7e) {
            return false;
        }
    }
    return true;
}

RedisInfo parse_redis_info(std::string_view text)
{
    RedisInfo info;

    while (!text.empty()) {
        std::size_t      nl = text.find('\n');
        std::string_view line = text.substr(0, nl);
        text = nl == std::string_view::npos ? std::string_view()
                                            : text.substr(nl + 1);

        if (!line.empty() && line.back() == '\r') {
            line.remove_suffix(1);
        }

        std::size_t colon = line.find(':');
        if (colon == std::string_view::npos || line[0] == '#') {
            continue;
        }

        std::string_view k = line.substr(0, colon);
        std::string_view v = line.substr(colon + 1);
        std::uint64_t    n;

        if (k == "redis_version" && printable(v)) {
            info.version = std::string(v);
        } else if (k == "uptime_in_seconds" && parse_integer(v, &n)
                   && n <= INT64_MAX) {
            info.uptime = static_cast<std::int64_t>(n);
        } else if (k == "used_memory_human" && printable(v)) {
            info.used_memory_human = std::string(v);
        } else if (k == "used_memory" && parse_integer(v, &n)) {
            info.used_memory = n;
        }
    }

    return info;
}

std::string short_version(std::string_view v)
{
    std::size_t sp = v.find(' ');
    if (sp != std::string_view::npos) {
        v = v.substr(0, sp);
    }
    return printable(v) ? std::string(v) : std::string();
}

} // namespace session_cache::health
