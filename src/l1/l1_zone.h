/*
 * The L1 zone (SPEC §8): checked sessions in shared memory, shared by all
 * workers, kept by nginx's slab allocator in a red-black tree (keyed by
 * the token's hash, then the whole token) with a queue in least recently
 * used order, as limit_req and proxy_cache's keys zone do. A full zone
 * evicts from the queue's tail; it never fails a request. The zone is
 * reused on reload, with its entries. The rules (lifetimes, epoch, the
 * GET race) are l1_logic.h's.
 */
#pragma once

#include "nginx_cpp.h"

#include <cstdint>
#include <string_view>

#include "l1/l1_logic.h"

namespace session_cache::l1 {

/* Per worker: this cycle's configuration (init_process), and its end. */
void start(const ngx_http_session_cache_main_conf_t *smcf);
void stop();

/* L1 is configured, and may be consulted and filled now. */
bool usable();

enum class Found { None, Session, Negative };

/* The entry for token: a session's cached value (copied into pool), a
 * negative entry, or none (absent, expired, or flushed). */
Found lookup(std::string_view token, ngx_pool_t *pool, ngx_str_t *value);

/* Before a GET (or any lookup whose answer may be stored): see Mark. */
Mark mark(std::string_view token);

/* Store an answer, if the mark still holds; negative: value is ignored. */
void store(std::string_view token, const Mark &m, bool negative,
           std::string_view value, bool has_expiry, std::int64_t expires_at);

/* An invalidation for a key: the entry goes, the race bucket moves;
 * counted in l1.invalidations unless counted is false (the health
 * probe's own key, written by every health document). */
void invalidate(std::string_view token, bool counted = true);

/* Drop the whole L1: one increment of the epoch. */
void flush(FlushReason reason, ngx_log_t *log);

/* An answer served from L1. */
void count_answer(bool negative);

/*
 * The listener's side (tracking=on; src/redis/redis_listener.cpp), all in
 * the zone so that every worker sees one listener per nginx instance.
 *
 * lease_tick(): each worker, every second. Hold: this worker is the
 * listener (lease renewed). Take: it has just become the listener; when
 * it took the lease from another worker (failover, reload), L1 has been
 * flushed (takeover) and disarmed. Wait: another worker is.
 */
LeaseAction lease_tick(ngx_pid_t me, ngx_log_t *log);
void        lease_release(ngx_pid_t me); /* exit, or the lease is lost */

/* Armed (subscribed) or not; a PONG; why L1 is not armed (health). */
void set_armed(ngx_pid_t me, bool armed); /* only while me holds the lease */
void pong(ngx_pid_t me);
/* unset_only: only where no reason is known (a worker starting must not
 * hide why the listener of another is not armed) */
void set_reason(std::string_view reason, bool unset_only = false);

/* The health document's figures. */
struct Figures {
    bool          configured = false;
    bool          tracking = false;
    bool          armed = false;
    std::uint64_t entries = 0;
    std::uint64_t capacity = 0;   /* the zone's size, bytes */
    std::uint64_t used_bytes = 0; /* held by entries */
    std::uint64_t hits = 0;
    std::uint64_t negatives = 0;
    std::uint64_t invalidations = 0;
    std::uint64_t evictions = 0;
    std::uint64_t flushes[kFlushReasons] = {};
    char          reason[160] = {}; /* why not armed, "" if none known */
    std::int64_t  listener = 0;     /* the lease holder's pid, 0: none */
};

Figures figures();

} // namespace session_cache::l1
