#include "metrics/metrics.h"

#include <signal.h>

#include <cerrno>

namespace session_cache {

/* Worker processes, old and new during a reload, that can hold a slot. */
static const ngx_uint_t kSlots = 128;

struct Slot {
    ngx_atomic_t  pid;                 /* 0: free */
    PoolGauges    pools[2];            /* by Backend */
};

struct MetricsShm {
    ngx_atomic_t  counters[static_cast<int>(Counter::Count)];
    Slot          slots[kSlots];
};

/* This worker's view: the zone, and its own slot. */
static MetricsShm *shm;
static Slot *own;

void count(Counter c)
{
    if (shm) {
        (void) ngx_atomic_fetch_add(&shm->counters[static_cast<int>(c)], 1);
    }
}

PoolGauges *pool_gauges(Backend backend)
{
    return own ? &own->pools[static_cast<int>(backend)] : nullptr;
}

Counters counters_total()
{
    Counters c;

    if (shm == nullptr) {
        return c;
    }

    auto get = [](Counter k) -> std::uint64_t {
        return shm->counters[static_cast<int>(k)];
    };

    c.hits = get(Counter::Hits);
    c.misses = get(Counter::Misses);
    c.negatives = get(Counter::Negatives);
    c.bypasses = get(Counter::Bypasses);
    c.rejected = get(Counter::Rejected);
    c.errors = get(Counter::Errors);
    c.invalidations = get(Counter::Invalidations);
    return c;
}

/* A worker that crashed leaves its slot behind: its pid is gone. EPERM
 * means alive (another user), as kill(2) says. */
static bool alive(ngx_atomic_uint_t pid)
{
    if (pid == 0) {
        return false;
    }
    if (pid == static_cast<ngx_atomic_uint_t>(ngx_pid)) {
        return true;
    }
    return kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

PoolFigures pool_total(Backend backend)
{
    PoolFigures p;

    if (shm == nullptr) {
        return p;
    }

    int b = static_cast<int>(backend);

    for (ngx_uint_t i = 0; i < kSlots; i++) {
        Slot &s = shm->slots[i];

        if (!alive(s.pid)) {
            continue;
        }

        p.size += s.pools[b].size;
        p.available += s.pools[b].available;
        p.pending += s.pools[b].pending;
        p.max += s.pools[b].max;
    }

    return p;
}

static void clear(Slot *s)
{
    for (PoolGauges &g : s->pools) {
        g.size = 0;
        g.available = 0;
        g.pending = 0;
        g.max = 0;
    }
}

void metrics_attach(ngx_cycle_t *cycle, ngx_shm_zone_t *zone)
{
    shm = zone ? static_cast<MetricsShm *>(zone->data) : nullptr;
    own = nullptr;

    if (shm == nullptr) {
        return;
    }

    ngx_atomic_uint_t me = ngx_pid;

    /* a free slot first; else one a dead worker left */
    for (int pass = 0; pass < 2; pass++) {
        for (ngx_uint_t i = 0; i < kSlots; i++) {
            Slot &s = shm->slots[i];
            ngx_atomic_uint_t pid = s.pid;

            bool take = pass == 0 ? pid == 0 : pid != 0 && !alive(pid);

            if (take && ngx_atomic_cmp_set(&s.pid, pid, me)) {
                clear(&s);
                own = &s;
                return;
            }
        }
    }

    ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                  "session_cache: no free metrics slot: this worker's "
                  "pools are left out of the health document");
}

void metrics_detach()
{
    if (own) {
        clear(own);
        ngx_memory_barrier();
        own->pid = 0;
    }

    own = nullptr;
    shm = nullptr;
}

static ngx_int_t init_zone(ngx_shm_zone_t *zone, void *data)
{
    if (data) {
        /* a reload: the same memory, the counters go on */
        zone->data = data;
        return NGX_OK;
    }

    auto *shpool = reinterpret_cast<ngx_slab_pool_t *>(zone->shm.addr);

    if (zone->shm.exists) {
        zone->data = shpool->data;
        return NGX_OK;
    }

    auto *m = static_cast<MetricsShm *>(
        ngx_slab_calloc(shpool, sizeof(MetricsShm)));
    if (m == nullptr) {
        return NGX_ERROR;
    }

    shpool->data = m;
    zone->data = m;

    return NGX_OK;
}

}  // namespace session_cache

extern "C" ngx_shm_zone_t *
ngx_http_session_cache_metrics_zone(ngx_conf_t *cf)
{
    static ngx_str_t name = ngx_string("session_cache_metrics");

    /* the slab pool's own pages, plus ours */
    size_t size = 8 * ngx_pagesize
                  + ngx_align(sizeof(session_cache::MetricsShm),
                              ngx_pagesize);

    ngx_shm_zone_t *zone = ngx_shared_memory_add(
        cf, &name, size, &ngx_http_session_cache_module);
    if (zone == nullptr) {
        return nullptr;
    }

    zone->init = session_cache::init_zone;

    return zone;
}
