/*
 * The L1 zone: see l1_zone.h. Critical sections hold the slab pool's
 * mutex for a tree walk, a copy and a few stores; nothing in them logs or
 * does I/O (the slab pool's "no memory" line is switched off: a full
 * zone is the normal case, handled by eviction).
 */
#include "l1/l1_zone.h"

#include "l1/lease_slot.h"

#include <cstddef>

namespace session_cache::l1 {

struct Node {
    ngx_rbtree_node_t node;  /* key: hash(token) */
    ngx_queue_t       queue; /* most recently used at the head */
    std::uint64_t     epoch;
    std::uint64_t     deadline; /* Unix ms */
    std::uint32_t     size;     /* bytes allocated for this node */
    std::uint32_t     value_len;
    std::uint16_t     token_len;
    std::uint8_t      negative;
    u_char            data[1]; /* the token, then the value */
};

struct Shared {
    ngx_rbtree_t      rbtree;
    ngx_rbtree_node_t sentinel;
    ngx_queue_t       lru;
    std::uint64_t     epoch;
    std::uint64_t     entries;    /* nodes of the current epoch */
    std::uint64_t     used_bytes; /* all nodes */
    std::uint64_t     hits;
    std::uint64_t     negatives;
    std::uint64_t     invalidations;
    std::uint64_t     evictions;
    std::uint64_t     flushes[kFlushReasons];
    /* the listener's, with tracking=on */
    ngx_atomic_t  armed;     /* subscribed */
    ngx_atomic_t  last_pong; /* ngx_current_msec */
    Lease         lease;
    ngx_atomic_t  generations; /* configuration cycles seen */
    char          reason[160];
    std::uint32_t race[kRaceBuckets];
};

/* The longest token is 512 bytes (token.h); the node's length field is
 * 16 bits. */
static_assert(sizeof(std::uint16_t) == 2, "token length fits");

/* this worker's view */
static const ngx_http_session_cache_l1_conf_t *conf;
static ngx_slab_pool_t                        *shpool;
static Shared                                 *sh;
static Lifetimes                               lifetimes;

static std::uint64_t now_ms()
{
    ngx_time_t *tp = ngx_timeofday();
    return static_cast<std::uint64_t>(tp->sec) * 1000 + tp->msec;
}

static std::string_view token_of(const Node *n)
{
    return std::string_view(reinterpret_cast<const char *>(n->data),
                            n->token_len);
}

static Node *node_of(ngx_rbtree_node_t *node)
{
    return reinterpret_cast<Node *>(reinterpret_cast<u_char *>(node)
                                    - offsetof(Node, node));
}

/* hash first, then the token itself */
static int compare(std::uint32_t h, std::string_view token, Node *n)
{
    if (h != n->node.key) {
        return h < n->node.key ? -1 : 1;
    }
    return token.compare(token_of(n));
}

static void insert_value(ngx_rbtree_node_t *temp, ngx_rbtree_node_t *node,
                         ngx_rbtree_node_t *sentinel)
{
    Node               *n = node_of(node);
    ngx_rbtree_node_t **p;

    for (;;) {
        int c = compare(static_cast<std::uint32_t>(node->key), token_of(n),
                        node_of(temp));
        p = (c < 0) ? &temp->left : &temp->right;

        if (*p == sentinel) {
            break;
        }
        temp = *p;
    }

    *p = node;
    node->parent = temp;
    node->left = sentinel;
    node->right = sentinel;
    ngx_rbt_red(node);
}

static Node *find(std::uint32_t h, std::string_view token)
{
    ngx_rbtree_node_t *node = sh->rbtree.root;
    ngx_rbtree_node_t *sentinel = sh->rbtree.sentinel;

    while (node != sentinel) {
        int c = compare(h, token, node_of(node));
        if (c == 0) {
            return node_of(node);
        }
        node = (c < 0) ? node->left : node->right;
    }

    return nullptr;
}

/* under the lock */
static void drop(Node *n)
{
    if (n->epoch == sh->epoch && sh->entries > 0) {
        sh->entries--;
    }
    sh->used_bytes -= n->size;
    ngx_queue_remove(&n->queue);
    ngx_rbtree_delete(&sh->rbtree, &n->node);
    ngx_slab_free_locked(shpool, n);
}

/* under the lock: the least recently used node goes; false if none */
static bool evict_one()
{
    if (ngx_queue_empty(&sh->lru)) {
        return false;
    }

    ngx_queue_t *q = ngx_queue_last(&sh->lru);
    Node        *n = ngx_queue_data(q, Node, queue);

    if (n->epoch == sh->epoch) {
        sh->evictions++;
    }
    drop(n);
    return true;
}

/* under the lock: up to two dead nodes (flushed or expired) at the tail */
static void expire(std::uint64_t now)
{
    for (int i = 0; i < 2 && !ngx_queue_empty(&sh->lru); i++) {
        Node *n = ngx_queue_data(ngx_queue_last(&sh->lru), Node, queue);

        if (fresh(n->epoch, n->deadline, sh->epoch, now)) {
            return;
        }
        drop(n);
    }
}

void start(const ngx_http_session_cache_main_conf_t *smcf)
{
    const ngx_http_session_cache_l1_conf_t *lc = &smcf->l1;

    if (lc->enabled != 1 || lc->zone == nullptr || lc->shared == nullptr) {
        stop();
        return;
    }

    conf = lc;
    shpool = reinterpret_cast<ngx_slab_pool_t *>(lc->zone->shm.addr);
    sh = static_cast<Shared *>(lc->shared);
    lifetimes.ttl = lc->ttl;
    lifetimes.negative_ttl =
        static_cast<std::uint64_t>(smcf->negative_ttl) * 1000;
}

void stop()
{
    conf = nullptr;
    shpool = nullptr;
    sh = nullptr;
}

static bool armed()
{
    return armed_now(sh->armed != 0, sh->last_pong, ngx_current_msec);
}

bool usable()
{
    return sh != nullptr && l1::usable(conf->tracking == 1, armed());
}

Found lookup(std::string_view token, ngx_pool_t *pool, ngx_str_t *value)
{
    if (!usable()) {
        return Found::None;
    }

    std::uint32_t h = hash(token);
    std::uint64_t now = now_ms();
    Found         found = Found::None;

    ngx_shmtx_lock(&shpool->mutex);

    Node *n = find(h, token);

    if (n != nullptr && !fresh(n->epoch, n->deadline, sh->epoch, now)) {
        drop(n);
        n = nullptr;
    }

    if (n != nullptr && n->negative) {
        found = Found::Negative;

    } else if (n != nullptr) {
        /* copied while the entry cannot go */
        auto *p = static_cast<u_char *>(ngx_pnalloc(pool, n->value_len));
        if (p != nullptr) {
            ngx_memcpy(p, n->data + n->token_len, n->value_len);
            value->data = p;
            value->len = n->value_len;
            found = Found::Session;
        }
    }

    if (n != nullptr) {
        ngx_queue_remove(&n->queue);
        ngx_queue_insert_head(&sh->lru, &n->queue);
    }

    ngx_shmtx_unlock(&shpool->mutex);

    return found;
}

Mark mark(std::string_view token)
{
    Mark m;

    if (!usable()) {
        return m;
    }

    std::uint32_t b = race_bucket(hash(token));

    ngx_shmtx_lock(&shpool->mutex);
    m.epoch = sh->epoch;
    m.counter = sh->race[b];
    ngx_shmtx_unlock(&shpool->mutex);

    m.taken = true;
    return m;
}

void store(std::string_view token, const Mark &m, bool negative,
           std::string_view value, bool has_expiry, std::int64_t expires_at)
{
    if (!usable() || !m.taken || token.size() > UINT16_MAX
        || value.size() > UINT32_MAX / 2)
    {
        return;
    }

    std::uint64_t now = now_ms();
    std::uint64_t until =
        deadline(lifetimes, now, negative, has_expiry, expires_at);

    if (until == 0) {
        return;
    }

    if (negative) {
        value = std::string_view();
    }

    std::uint32_t h = hash(token);
    std::size_t   size = offsetof(Node, data) + token.size() + value.size();

    ngx_shmtx_lock(&shpool->mutex);

    if (!may_store(m, sh->epoch, sh->race[race_bucket(h)])) {
        /* an invalidation or a flush passed since the GET went out */
        ngx_shmtx_unlock(&shpool->mutex);
        return;
    }

    expire(now);

    if (Node *old = find(h, token)) {
        drop(old);
    }

    auto *n = static_cast<Node *>(ngx_slab_alloc_locked(shpool, size));

    while (n == nullptr && evict_one()) {
        n = static_cast<Node *>(ngx_slab_alloc_locked(shpool, size));
    }

    if (n == nullptr) {
        /* larger than the whole zone: the answer stands, uncached */
        ngx_shmtx_unlock(&shpool->mutex);
        return;
    }

    n->node.key = h;
    n->epoch = sh->epoch;
    n->deadline = until;
    n->size = static_cast<std::uint32_t>(size);
    n->value_len = static_cast<std::uint32_t>(value.size());
    n->token_len = static_cast<std::uint16_t>(token.size());
    n->negative = negative ? 1 : 0;
    ngx_memcpy(n->data, token.data(), token.size());
    if (!value.empty()) {
        ngx_memcpy(n->data + token.size(), value.data(), value.size());
    }

    /* the insert function is this module's: set it each time, so that a
     * zone kept over a reload never calls into an unloaded copy */
    sh->rbtree.insert = insert_value;
    ngx_rbtree_insert(&sh->rbtree, &n->node);
    ngx_queue_insert_head(&sh->lru, &n->queue);
    sh->entries++;
    sh->used_bytes += size;

    ngx_shmtx_unlock(&shpool->mutex);
}

void invalidate(std::string_view token, bool counted)
{
    if (sh == nullptr) {
        return;
    }

    std::uint32_t h = hash(token);

    ngx_shmtx_lock(&shpool->mutex);

    sh->race[race_bucket(h)]++;
    if (counted) {
        sh->invalidations++;
    }

    if (Node *n = find(h, token)) {
        drop(n);
    }

    ngx_shmtx_unlock(&shpool->mutex);
}

void flush(FlushReason reason, ngx_log_t *log)
{
    if (sh == nullptr) {
        return;
    }

    ngx_shmtx_lock(&shpool->mutex);
    sh->epoch++;
    sh->entries = 0;
    sh->flushes[static_cast<std::size_t>(reason)]++;
    ngx_shmtx_unlock(&shpool->mutex);

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log, 0, "session_cache: l1 flushed (%s)",
                   flush_reason_name(reason));
    (void) log;
}

/* The listener's lease, in this zone, under its mutex. */
static LeaseSlot slot()
{
    LeaseSlot s;
    s.mutex = &shpool->mutex;
    s.lease = &sh->lease;
    s.generation = conf->generation;
    return s;
}

LeaseAction lease_tick(ngx_pid_t me, ngx_log_t *log)
{
    if (sh == nullptr) {
        return LeaseAction::Wait;
    }

    std::int64_t previous;

    LeaseAction a = slot().step(me, &previous, [](std::int64_t prev) {
        sh->armed = 0;

        /* what the old listener missed, or what was cached before any
         * listener (a reload from tracking=off): drop everything; counted
         * as a takeover when another worker held the lease */
        sh->epoch++;
        sh->entries = 0;

        if (prev != 0) {
            sh->flushes[static_cast<std::size_t>(FlushReason::Takeover)]++;
        }
    });

    if (a == LeaseAction::Take) {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, log, 0,
                       "session_cache: l1 listener lease taken%s%L",
                       previous ? " over from pid " : ", it was free",
                       previous);
        if (previous != 0) {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, log, 0,
                           "session_cache: l1 flushed (%s)",
                           flush_reason_name(FlushReason::Takeover));
        }
    }
    (void) log;

    return a;
}

void lease_release(ngx_pid_t me)
{
    if (sh == nullptr) {
        return;
    }

    slot().release(me, [] { sh->armed = 0; });
}

void set_armed(ngx_pid_t me, bool on)
{
    if (sh == nullptr) {
        return;
    }

    slot().if_holder(me, [on] {
        if (on) {
            sh->last_pong = ngx_current_msec;
        }
        sh->armed = on ? 1 : 0;
    });
}

void pong(ngx_pid_t me)
{
    if (sh == nullptr) {
        return;
    }

    slot().if_holder(me, [] { sh->last_pong = ngx_current_msec; });
}

void set_reason(std::string_view reason, bool unset_only)
{
    if (sh == nullptr) {
        return;
    }

    std::size_t n = ngx_min(reason.size(), sizeof(sh->reason) - 1);

    ngx_shmtx_lock(&shpool->mutex);
    if (!unset_only || sh->reason[0] == '\0') {
        ngx_memcpy(sh->reason, reason.data(), n);
        sh->reason[n] = '\0';
    }
    ngx_shmtx_unlock(&shpool->mutex);
}

void count_answer(bool negative)
{
    if (sh == nullptr) {
        return;
    }

    /* the hit path: no lock */
    __atomic_fetch_add(negative ? &sh->negatives : &sh->hits, 1,
                       __ATOMIC_RELAXED);
}

Figures figures()
{
    Figures f;

    if (sh == nullptr) {
        return f;
    }

    f.configured = true;
    f.tracking = conf->tracking == 1;
    f.armed = armed();
    f.capacity = conf->size;

    ngx_shmtx_lock(&shpool->mutex);
    f.entries = sh->entries;
    f.used_bytes = sh->used_bytes;
    f.hits = __atomic_load_n(&sh->hits, __ATOMIC_RELAXED);
    f.negatives = __atomic_load_n(&sh->negatives, __ATOMIC_RELAXED);
    f.invalidations = sh->invalidations;
    f.evictions = sh->evictions;
    for (std::size_t i = 0; i < kFlushReasons; i++) {
        f.flushes[i] = sh->flushes[i];
    }
    ngx_memcpy(f.reason, sh->reason, sizeof(f.reason));
    f.listener = sh->lease.owner;
    ngx_shmtx_unlock(&shpool->mutex);
    f.reason[sizeof(f.reason) - 1] = '\0';

    return f;
}

/*
 * In the master, for each cycle. data is the previous cycle's conf when
 * the zone is carried over a reload: its entries stay.
 */
static ngx_int_t init_zone(ngx_shm_zone_t *shm_zone, void *old)
{
    auto *lc = static_cast<ngx_http_session_cache_l1_conf_t *>(shm_zone->data);
    auto *pool = reinterpret_cast<ngx_slab_pool_t *>(shm_zone->shm.addr);

    if (old != nullptr || shm_zone->shm.exists) {
        lc->shared =
            old ? static_cast<ngx_http_session_cache_l1_conf_t *>(old)->shared
                : pool->data;

        /* a new configuration cycle: its workers take the listener over */
        auto *s = static_cast<Shared *>(lc->shared);
        lc->generation = lease_generation(&s->generations, false);
        return NGX_OK;
    }

    auto *s = static_cast<Shared *>(ngx_slab_calloc(pool, sizeof(Shared)));
    if (s == nullptr) {
        return NGX_ERROR;
    }

    ngx_rbtree_init(&s->rbtree, &s->sentinel, insert_value);
    lc->generation = lease_generation(&s->generations, true);
    ngx_queue_init(&s->lru);

    pool->data = s;
    lc->shared = s;

    static const char ctx[] = " in session_cache_l1 zone";
    pool->log_ctx = static_cast<u_char *>(ngx_slab_alloc(pool, sizeof(ctx)));
    if (pool->log_ctx == nullptr) {
        return NGX_ERROR;
    }
    ngx_memcpy(pool->log_ctx, ctx, sizeof(ctx));

    /* a full zone evicts: not worth a line in the log */
    pool->log_nomem = 0;

    return NGX_OK;
}

} // namespace session_cache::l1

extern "C" char *
ngx_http_session_cache_l1_zone(ngx_conf_t                         *cf,
                               ngx_http_session_cache_main_conf_t *smcf)
{
    static ngx_str_t name = ngx_string("session_cache_l1");

    ngx_http_session_cache_l1_conf_t *lc = &smcf->l1;

    if (lc->enabled != 1) {
        return NGX_CONF_OK;
    }

    lc->zone = ngx_shared_memory_add(cf, &name, lc->size,
                                     &ngx_http_session_cache_module);
    if (lc->zone == nullptr) {
        return static_cast<char *>(NGX_CONF_ERROR);
    }

    if (lc->zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "session_cache_l1: zone is duplicate");
        return static_cast<char *>(NGX_CONF_ERROR);
    }

    lc->zone->init = session_cache::l1::init_zone;
    lc->zone->data = lc;

    return NGX_CONF_OK;
}
