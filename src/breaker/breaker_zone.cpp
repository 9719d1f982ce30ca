/*
 * One shared memory zone, "session_cache_breaker", holds both breakers. It
 * is added at configuration time with a fixed size, so that nginx hands the
 * same memory to the next cycle on reload (init_zone gets the old data) and
 * the breakers keep their state. Critical sections are a few arithmetic
 * steps under the slab pool's mutex; logging happens after unlocking.
 */
#include "breaker/breaker_zone.h"

#include "breaker/breaker.h"

namespace session_cache {

/* A Redis Cluster node's breaker: taken by the first worker that meets
 * the node, never given back (a node that comes back finds it again). */
struct NodeBreaker {
    char        address[NGX_MAXHOSTNAMELEN + sizeof(":65535")];
    BreakerData data;
};

struct BreakerZone {
    BreakerData   backends[2];
    std::uint32_t nnodes; /* nodes[] taken */
    NodeBreaker   nodes[kNodeBreakers];
};

static const char *const kNames[] = {"redis", "postgres"};

static_assert(sizeof(kNames) / sizeof(kNames[0])
                  == sizeof(BreakerZone::backends) / sizeof(BreakerData),
              "a name for each backend's breaker");

/* The zone: the slab pool's header and page table, then BreakerZone.
 * Its size never changes, so that a reload finds the zone it can reuse;
 * half of it is room enough on the smallest pages (4 KiB). */
static constexpr std::size_t kBreakerZonePages = 64;

static_assert(sizeof(BreakerZone) <= kBreakerZonePages / 2 * 4096,
              "the breakers fit in their zone");

/* this worker's view: the cycle's configuration and the shared data */
static const ngx_http_session_cache_breaker_conf_t *conf;
static BreakerConfig                                config;
static ngx_slab_pool_t                             *shpool;
static BreakerZone                                 *zone;

static BreakerConfig to_config(const ngx_http_session_cache_breaker_conf_t *bc)
{
    BreakerConfig c;
    c.errors = static_cast<std::uint32_t>(bc->errors);
    c.window = bc->window;
    c.buckets = static_cast<std::uint32_t>(bc->buckets);
    c.cooldown = bc->cooldown;
    c.min_requests = static_cast<std::uint32_t>(bc->min_requests);
    return c;
}

static std::uint64_t now()
{
    /* monotonic, the same clock in every worker (ngx_time_update) */
    return ngx_current_msec;
}

static int slot_of(BreakerId id)
{
    return static_cast<int>(id);
}

static BreakerData *data(BreakerId id)
{
    int i = slot_of(id);
    return i < 2 ? &zone->backends[i] : &zone->nodes[i - 2].data;
}

/* "redis", "postgres", "redis cluster node 10.0.0.1:7000" (a node's
 * address is written once, before its breaker is handed out) */
static const char *name_of(BreakerId id, char *buf, std::size_t size)
{
    int i = slot_of(id);

    if (i < 2) {
        return kNames[i];
    }

    *ngx_snprintf(reinterpret_cast<u_char *>(buf), size - 1,
                  "redis cluster node %s", zone->nodes[i - 2].address) = '\0';
    return buf;
}

static constexpr std::size_t kNameSize = sizeof(NodeBreaker::address) + 32;

static void log_transition(BreakerId id, Transition t, BreakerStats s,
                           ngx_log_t *log)
{
    if (t == Transition::None) {
        return;
    }

    char        buf[kNameSize];
    const char *name = name_of(id, buf, sizeof(buf));

    switch (t) {
    case Transition::None:
        return;

    case Transition::Opened:
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "session_cache: %s circuit breaker opened: %uD of %uD "
                      "calls failed in the last %Mms; calls skip %s for "
                      "%Mms",
                      name, s.failures, s.calls, conf->window, name,
                      conf->cooldown);
        return;

    case Transition::HalfOpened:
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "session_cache: %s circuit breaker half-open: "
                      "one trial call goes through",
                      name);
        return;

    case Transition::Closed:
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "session_cache: %s circuit breaker closed: "
                      "the trial call succeeded",
                      name);
        return;

    case Transition::Reopened:
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "session_cache: %s circuit breaker opened again: "
                      "the trial call failed; calls skip %s for %Mms",
                      name, name, conf->cooldown);
        return;
    }
}

void breaker_start(const ngx_http_session_cache_breaker_conf_t *bc)
{
    if (bc->zone == nullptr || !bc->enabled || bc->shared == nullptr) {
        conf = nullptr;
        zone = nullptr;
        return;
    }

    conf = bc;
    config = to_config(bc);
    shpool = reinterpret_cast<ngx_slab_pool_t *>(bc->zone->shm.addr);
    zone = static_cast<BreakerZone *>(bc->shared);
}

void breaker_stop()
{
    conf = nullptr;
    zone = nullptr;
}

BreakerId breaker_for_node(const char *address, ngx_log_t *log)
{
    static bool said_full = false;

    if (zone == nullptr) {
        return breaker_id(Backend::Redis);
    }

    std::size_t len = ngx_strlen(address);

    if (len >= sizeof(NodeBreaker::address)) {
        return breaker_id(Backend::Redis); /* no such host name */
    }

    int found = -1;

    ngx_shmtx_lock(&shpool->mutex);

    for (std::uint32_t i = 0; i < zone->nnodes; i++) {
        if (ngx_strcmp(zone->nodes[i].address, address) == 0) {
            found = static_cast<int>(i);
            break;
        }
    }

    if (found < 0 && zone->nnodes < kNodeBreakers) {
        NodeBreaker *n = &zone->nodes[zone->nnodes];

        ngx_memcpy(n->address, address, len + 1);
        breaker_init(&n->data, config);
        found = static_cast<int>(zone->nnodes++);
    }

    ngx_shmtx_unlock(&shpool->mutex);

    if (found < 0) {
        if (!said_full) {
            ngx_log_error(NGX_LOG_WARN, log, 0,
                          "session_cache: redis cluster node %s: no room for "
                          "a breaker of its own (%d nodes have one since "
                          "nginx started); its calls count in the redis "
                          "breaker",
                          address, kNodeBreakers);
            said_full = true;
        }
        return breaker_id(Backend::Redis);
    }

    return static_cast<BreakerId>(found + 2);
}

#if (NGX_DEBUG)

static const char *admit_name(Admit a)
{
    switch (a) {
    case Admit::Trial:
        return "let through as the half-open trial";
    case Admit::Reject:
        return "refused";
    case Admit::Allow:
        break;
    }
    return "let through";
}
#endif

/* Decisions are traced at debug level on log: the pool's log, so they
 * show with a debug error_log; the request's own trace says whether its
 * call went out. */
bool breaker_allow(BreakerId id, bool *trial, ngx_log_t *log)
{
    *trial = false;

    if (zone == nullptr) {
        return true;
    }

    BreakerData *b = data(id);
#if (NGX_DEBUG)
    char buf[kNameSize];
#endif

    /* the common case, without the lock: a stale read only delays the
     * moment this worker notices an opening by one call */
    if (__atomic_load_n(&b->phase, __ATOMIC_RELAXED) == BreakerState::Closed) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log, 0,
                       "session_cache: %s breaker closed: call let through",
                       name_of(id, buf, sizeof(buf)));
        return true;
    }

    Transition t;

    ngx_shmtx_lock(&shpool->mutex);
    Admit a = breaker_admit(b, config, now(), &t);
#if (NGX_DEBUG)
    BreakerState phase = b->phase;
#endif
    ngx_shmtx_unlock(&shpool->mutex);

    log_transition(id, t, BreakerStats{0, 0}, log);

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, log, 0,
                   "session_cache: %s breaker %s: call %s",
                   name_of(id, buf, sizeof(buf)), breaker_state_name(phase),
                   admit_name(a));

    *trial = (a == Admit::Trial);
    return a != Admit::Reject;
}

void breaker_report(BreakerId id, bool success, bool trial, ngx_log_t *log)
{
    if (zone == nullptr) {
        return;
    }

    BreakerData *b = data(id);
    BreakerStats s{0, 0};
#if (NGX_DEBUG)
    char buf[kNameSize];
#endif

    ngx_log_debug3(
        NGX_LOG_DEBUG_HTTP, log, 0, "session_cache: %s breaker: %s %s",
        name_of(id, buf, sizeof(buf)), trial ? "the trial call" : "a call",
        success ? "succeeded" : "failed");

    ngx_shmtx_lock(&shpool->mutex);
    Transition t = breaker_record(b, config, now(), success, trial);
    if (t == Transition::Opened) {
        s = breaker_stats(b, config, now());
    }
    ngx_shmtx_unlock(&shpool->mutex);

    log_transition(id, t, s, log);
}

void breaker_give_back(BreakerId id)
{
    if (zone == nullptr) {
        return;
    }

    ngx_shmtx_lock(&shpool->mutex);
    breaker_release_trial(data(id));
    ngx_shmtx_unlock(&shpool->mutex);
}

void breaker_probe_answered(BreakerId id, ngx_log_t *log)
{
    if (zone == nullptr) {
        return;
    }

    ngx_shmtx_lock(&shpool->mutex);
    bool was_open = breaker_probe_reached(data(id));
    ngx_shmtx_unlock(&shpool->mutex);

    if (was_open) {
        char        buf[kNameSize];
        const char *name = name_of(id, buf, sizeof(buf));
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "session_cache: %s circuit breaker half-open: a probe "
                      "reached %s before the cooldown ended; the next call "
                      "is the trial",
                      name, name);
    }
}

void breaker_reset(Backend backend, ngx_log_t *log)
{
    if (zone == nullptr) {
        return;
    }

    ngx_shmtx_lock(&shpool->mutex);
    BreakerState was = data(breaker_id(backend))->phase;
    breaker_init(data(breaker_id(backend)), config);
    ngx_shmtx_unlock(&shpool->mutex);

    if (was != BreakerState::Closed) {
        ngx_log_error(NGX_LOG_WARN, log, 0,
                      "session_cache: %s circuit breaker closed: a new "
                      "master",
                      backend == Backend::Redis ? "redis" : "postgres");
    }
}

BreakerState breaker_state(BreakerId id)
{
    if (zone == nullptr) {
        return BreakerState::Closed;
    }

    ngx_shmtx_lock(&shpool->mutex);
    BreakerState s = data(id)->phase;
    ngx_shmtx_unlock(&shpool->mutex);

    return s;
}

ngx_msec_t breaker_wait(Backend backend)
{
    if (zone == nullptr) {
        return 0;
    }

    ngx_shmtx_lock(&shpool->mutex);
    std::uint64_t ms =
        session_cache::breaker_wait(data(breaker_id(backend)), config, now());
    ngx_shmtx_unlock(&shpool->mutex);

    return static_cast<ngx_msec_t>(ms);
}

/*
 * In the master, for each cycle. data is the previous cycle's conf when
 * the zone is carried over a reload: keep its breakers, adopt the new
 * window layout.
 */
static ngx_int_t init_zone(ngx_shm_zone_t *shm_zone, void *old)
{
    auto *bc =
        static_cast<ngx_http_session_cache_breaker_conf_t *>(shm_zone->data);
    auto *pool = reinterpret_cast<ngx_slab_pool_t *>(shm_zone->shm.addr);
    BreakerConfig c = to_config(bc);

    if (old != nullptr) {
        auto *oc = static_cast<ngx_http_session_cache_breaker_conf_t *>(old);
        bc->shared = oc->shared;

        auto *z = static_cast<BreakerZone *>(bc->shared);
        ngx_shmtx_lock(&pool->mutex);
        for (BreakerData &b : z->backends) {
            breaker_adopt(&b, c);
        }
        for (std::uint32_t i = 0; i < z->nnodes; i++) {
            breaker_adopt(&z->nodes[i].data, c);
        }
        ngx_shmtx_unlock(&pool->mutex);
        return NGX_OK;
    }

    if (shm_zone->shm.exists) {
        bc->shared = pool->data;
        return NGX_OK;
    }

    auto *z =
        static_cast<BreakerZone *>(ngx_slab_calloc(pool, sizeof(BreakerZone)));
    if (z == nullptr) {
        return NGX_ERROR;
    }

    for (BreakerData &b : z->backends) {
        breaker_init(&b, c);
    }

    pool->data = z;
    bc->shared = z;

    static const char ctx[] = " in session_cache_breaker zone";
    pool->log_ctx = static_cast<u_char *>(ngx_slab_alloc(pool, sizeof(ctx)));
    if (pool->log_ctx == nullptr) {
        return NGX_ERROR;
    }
    ngx_memcpy(pool->log_ctx, ctx, sizeof(ctx));

    return NGX_OK;
}

} // namespace session_cache

extern "C" char *
ngx_http_session_cache_breaker_zone(ngx_conf_t                         *cf,
                                    ngx_http_session_cache_main_conf_t *smcf)
{
    static ngx_str_t name = ngx_string("session_cache_breaker");

    ngx_http_session_cache_breaker_conf_t *bc = &smcf->breaker;

    if (!bc->enabled
        || (!smcf->redis.backend.configured && !smcf->pg.backend.configured))
    {
        return NGX_CONF_OK;
    }

    /* fixed (see kBreakerZonePages) */
    size_t size = session_cache::kBreakerZonePages * ngx_pagesize;

    bc->zone =
        ngx_shared_memory_add(cf, &name, size, &ngx_http_session_cache_module);
    if (bc->zone == nullptr) {
        return static_cast<char *>(NGX_CONF_ERROR);
    }

    if (bc->zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "session_cache_breaker: zone is duplicate");
        return static_cast<char *>(NGX_CONF_ERROR);
    }

    bc->zone->init = session_cache::init_zone;
    bc->zone->data = bc;

    return NGX_CONF_OK;
}
