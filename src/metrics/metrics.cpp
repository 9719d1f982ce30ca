#include "metrics/metrics.h"

#include <signal.h>

#include <cerrno>

namespace session_cache {

/* Slots per worker process: the old and the new workers of a reload live
 * together for a while. */
static const ngx_uint_t kSlotsPerWorker = 2;

/* The slab pool's own header and page table, before the counters and the
 * slots (region()). */
static const ngx_uint_t kSlabPages = 8;

/* How often a worker without a slot looks for one. */
static const ngx_msec_t kRetryMs = 1000;

/* One pool's figures in shared memory: one writer (the slot's worker). */
struct Gauges {
    ngx_atomic_t size;
    ngx_atomic_t available;
    ngx_atomic_t pending;
    ngx_atomic_t max;
};

/* One layer's histogram in shared memory: the per-bucket counts (as in
 * Latency), then the sum of the durations in nanoseconds. */
constexpr int kSumNs = kLatencyBuckets;

using Histogram = ngx_atomic_t[kLatencyBuckets + 1];

struct Slot {
    ngx_atomic_t pid;      /* 0: free */
    Gauges       pools[2]; /* by Backend */
    Histogram    latency[kLayers];
};

/* The zone: this header, then `capacity` slots, of which the first
 * `nslots` are in use (a reload may change it within the capacity). */
struct MetricsShm {
    ngx_atomic_t counters[static_cast<int>(Counter::Count)];
    ngx_atomic_t nslots;
    ngx_uint_t   capacity;
    Histogram    spare[kLayers]; /* for workers without a slot */
};

static_assert(sizeof(MetricsShm) % alignof(Slot) == 0,
              "the slots follow the header");

static Slot *slots(MetricsShm *m)
{
    return reinterpret_cast<Slot *>(m + 1);
}

/* What the configuration asks of the zone, for init_zone. */
struct MetricsConf {
    ngx_uint_t  nslots;
    MetricsShm *previous; /* the last cycle's zone, when its size
                           * differs: its counters go on */
};

/* This worker's view: the zone, its own slot, and its figures, kept here
 * too for the day it gets a slot. */
static MetricsShm *shm;
static Slot       *own;
static PoolFigures mine[2];
static ngx_event_t retry;

void count(Counter c)
{
    if (shm) {
        (void) ngx_atomic_fetch_add(&shm->counters[static_cast<int>(c)], 1);
    }
}

void observe(Layer layer, std::uint64_t ns)
{
    int l = static_cast<int>(layer);

    if (shm == nullptr || l < 0 || l >= kLayers) {
        return;
    }

    ngx_atomic_t *h = own ? own->latency[l] : shm->spare[l];

    (void) ngx_atomic_fetch_add(&h[latency_bucket(ns)], 1);
    (void) ngx_atomic_fetch_add(&h[kSumNs], static_cast<ngx_atomic_int_t>(ns));
}

static void add(Latency *to, const Histogram &h)
{
    for (int i = 0; i < kLatencyBuckets; i++) {
        to->buckets[i] += h[i];
    }
    to->sum_ns += h[kSumNs];
}

Latency latency_total(Layer layer)
{
    Latency t;
    int     l = static_cast<int>(layer);

    if (shm == nullptr || l < 0 || l >= kLayers) {
        return t;
    }

    /* every slot, in use or not: a slot keeps the counts of the workers
     * that had it */
    add(&t, shm->spare[l]);
    for (ngx_uint_t i = 0; i < shm->capacity; i++) {
        add(&t, slots(shm)[i].latency[l]);
    }

    return t;
}

static void store(Gauges *g, const PoolFigures &f)
{
    g->size = f.size;
    g->available = f.available;
    g->pending = f.pending;
    g->max = f.max;
}

void publish_pool(Backend backend, const PoolFigures &figures)
{
    int b = static_cast<int>(backend);

    mine[b] = figures;

    if (own) {
        store(&own->pools[b], figures);
    }
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
    c.moved = get(Counter::Moved);
    c.asks = get(Counter::Asks);
    return c;
}

/* Is slot s's worker alive? A worker that crashed leaves its slot
 * behind: its pid is gone, or (reused) it is this worker's own pid on a
 * slot that is not this worker's. EPERM means alive (another user), as
 * kill(2) says. */
static bool alive(const Slot &s, ngx_atomic_uint_t pid)
{
    if (pid == 0) {
        return false;
    }
    if (pid == static_cast<ngx_atomic_uint_t>(ngx_pid)) {
        return &s == own;
    }
    return kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

PoolFigures pool_total(Backend backend)
{
    PoolFigures p;

    if (shm == nullptr) {
        return p;
    }

    int        b = static_cast<int>(backend);
    ngx_uint_t n = shm->nslots;

    for (ngx_uint_t i = 0; i < n; i++) {
        Slot             &s = slots(shm)[i];
        ngx_atomic_uint_t pid = s.pid;

        if (!alive(s, pid)) {
            if (pid != 0) {
                /* its worker is gone: free it for the next one */
                (void) ngx_atomic_cmp_set(&s.pid, pid, 0);
            }
            continue;
        }

        p.size += s.pools[b].size;
        p.available += s.pools[b].available;
        p.pending += s.pools[b].pending;
        p.max += s.pools[b].max;
    }

    return p;
}

/* Take a free slot, or one whose worker is gone; fill it with this
 * worker's figures. A slot holding this worker's pid was left by a dead
 * process that had the same pid: it is free too. */
static bool claim()
{
    ngx_atomic_uint_t me = ngx_pid;
    ngx_uint_t        n = shm->nslots;

    for (int pass = 0; pass < 2; pass++) {
        for (ngx_uint_t i = 0; i < n; i++) {
            Slot             &s = slots(shm)[i];
            ngx_atomic_uint_t pid = s.pid;

            bool take =
                pass == 0 ? pid == 0 || pid == me : pid != 0 && !alive(s, pid);

            if (take && ngx_atomic_cmp_set(&s.pid, pid, me)) {
                for (int b = 0; b < 2; b++) {
                    store(&s.pools[b], mine[b]);
                }
                own = &s;
                return true;
            }
        }
    }

    return false;
}

static void retry_claim(ngx_event_t *ev)
{
    if (shm == nullptr || own != nullptr || ngx_exiting || ngx_quit
        || ngx_terminate)
    {
        return;
    }

    if (claim()) {
        ngx_log_error(NGX_LOG_NOTICE, ev->log, 0,
                      "session_cache: metrics slot found: this worker's "
                      "pools are in the health document again");
        return;
    }

    ngx_add_timer(ev, kRetryMs);
}

void metrics_attach(ngx_cycle_t *cycle, ngx_shm_zone_t *zone)
{
    shm = zone ? static_cast<MetricsShm *>(zone->data) : nullptr;
    own = nullptr;
    mine[0] = mine[1] = PoolFigures();

    if (shm == nullptr) {
        return;
    }

    auto *ccf = reinterpret_cast<ngx_core_conf_t *>(
        ngx_get_conf(cycle->conf_ctx, ngx_core_module));
    ngx_uint_t n = shm->nslots;

    if (ngx_worker == 0 && ccf->worker_processes > 0
        && n < kSlotsPerWorker * ccf->worker_processes)
    {
        /* worker_processes came after http{}: the zone was sized before
         * it was known */
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "session_cache: %ui metrics slots for %i worker "
                      "processes: put worker_processes before the http "
                      "block",
                      n, ccf->worker_processes);
    }

    if (claim()) {
        return;
    }

    ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                  "session_cache: no free metrics slot (%ui slots): this "
                  "worker's pools are left out of the health document "
                  "until one frees",
                  n);

    ngx_memzero(&retry, sizeof(ngx_event_t));
    retry.handler = retry_claim;
    retry.log = cycle->log;
    retry.cancelable = 1; /* never delays a graceful exit */
    ngx_add_timer(&retry, kRetryMs);
}

void metrics_detach()
{
    if (retry.timer_set) {
        ngx_del_timer(&retry);
    }

    if (own) {
        for (Gauges &g : own->pools) {
            store(&g, PoolFigures());
        }
        ngx_memory_barrier();
        own->pid = 0;
    }

    own = nullptr;
    shm = nullptr;
}

/* The bytes for the header and n slots, in whole pages. */
static size_t region(ngx_uint_t n)
{
    return ngx_align(sizeof(MetricsShm) + n * sizeof(Slot), ngx_pagesize);
}

static ngx_int_t init_zone(ngx_shm_zone_t *zone, void *data)
{
    auto *mc = static_cast<MetricsConf *>(zone->data);

    if (data) {
        /* a reload, the same size: the same memory, the counters go on;
         * the slots in use follow worker_processes, within the capacity
         * that the same size guarantees */
        auto *m = static_cast<MetricsShm *>(data);
        m->nslots = ngx_min(mc->nslots, m->capacity);
        zone->data = m;
        return NGX_OK;
    }

    auto *shpool = reinterpret_cast<ngx_slab_pool_t *>(zone->shm.addr);

    if (zone->shm.exists) {
        zone->data = shpool->data;
        return NGX_OK;
    }

    size_t bytes = region(mc->nslots);

    auto *m = static_cast<MetricsShm *>(ngx_slab_calloc(shpool, bytes));
    if (m == nullptr) {
        return NGX_ERROR;
    }

    m->capacity = (bytes - sizeof(MetricsShm)) / sizeof(Slot);
    m->nslots = mc->nslots;

    if (mc->previous) {
        /* worker_processes changed the zone's size: a new zone, the same
         * counters (the old zone is still mapped, in the master) */
        MetricsShm *old = mc->previous;

        for (int i = 0; i < static_cast<int>(Counter::Count); i++) {
            m->counters[i] = old->counters[i];
        }

        /* and the histograms, summed into the spare ones */
        for (int l = 0; l < kLayers; l++) {
            for (int i = 0; i <= kLatencyBuckets; i++) {
                ngx_atomic_uint_t v = old->spare[l][i];
                for (ngx_uint_t k = 0; k < old->capacity; k++) {
                    v += slots(old)[k].latency[l][i];
                }
                m->spare[l][i] = v;
            }
        }
    }

    shpool->data = m;
    zone->data = m;

    return NGX_OK;
}

/* The last cycle's zone of this name and module, if its size differs. */
static MetricsShm *previous_zone(ngx_conf_t *cf, const ngx_str_t *name,
                                 size_t size)
{
    ngx_cycle_t *old = cf->cycle->old_cycle;

    if (old == nullptr || old->shared_memory.part.elts == nullptr) {
        return nullptr;
    }

    ngx_list_part_t *part = &old->shared_memory.part;
    auto            *z = static_cast<ngx_shm_zone_t *>(part->elts);

    for (ngx_uint_t i = 0; /* void */; i++) {
        if (i >= part->nelts) {
            if (part->next == nullptr) {
                return nullptr;
            }
            part = part->next;
            z = static_cast<ngx_shm_zone_t *>(part->elts);
            i = 0;
        }

        if (z[i].tag == &ngx_http_session_cache_module
            && z[i].shm.name.len == name->len
            && ngx_strncmp(z[i].shm.name.data, name->data, name->len) == 0)
        {
            return z[i].shm.size == size ? nullptr
                                         : static_cast<MetricsShm *>(z[i].data);
        }
    }
}

} // namespace session_cache

extern "C" ngx_shm_zone_t *ngx_http_session_cache_metrics_zone(ngx_conf_t *cf)
{
    using namespace session_cache;

    static ngx_str_t name = ngx_string("session_cache_metrics");

    auto *mc =
        static_cast<MetricsConf *>(ngx_pcalloc(cf->pool, sizeof(MetricsConf)));
    if (mc == nullptr) {
        return nullptr;
    }

    /* worker_processes, if it came before http{}; else the default of
     * "auto", and a warning at start if that was too few */
    auto *ccf = reinterpret_cast<ngx_core_conf_t *>(
        ngx_get_conf(cf->cycle->conf_ctx, ngx_core_module));
    ngx_int_t workers = ccf->worker_processes;

    if (workers == NGX_CONF_UNSET || workers <= 0) {
        workers = ngx_ncpu > 0 ? ngx_ncpu : 1;
    }

    mc->nslots = kSlotsPerWorker * static_cast<ngx_uint_t>(workers);

    /* the slab pool's own pages, plus ours */
    size_t size = kSlabPages * ngx_pagesize + region(mc->nslots);

    mc->previous = previous_zone(cf, &name, size);

    ngx_shm_zone_t *zone =
        ngx_shared_memory_add(cf, &name, size, &ngx_http_session_cache_module);
    if (zone == nullptr) {
        return nullptr;
    }

    zone->init = init_zone;
    zone->data = mc;

    return zone;
}
