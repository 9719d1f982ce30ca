/*
 * Redis Sentinel (SPEC §10), per worker: which server is the master now.
 *
 * Discovery as Redis's guide for sentinel clients says: ask the sentinels
 * in turn (SENTINEL get-master-addr-by-name MASTER), connect to the
 * address named, and confirm with ROLE that it is a master; the first
 * sentinel to answer is asked first next time. Again when a pool
 * connection fails, when a server refuses as a master (READONLY,
 * LOADING, MASTERDOWN), and at once on +switch-master, which one
 * subscription per worker to a sentinel receives. All on nginx's event
 * loop: nginx connections, nginx's resolver for an address given as a
 * name. The pure rules are sentinel_logic.h's.
 */
#pragma once

#include "nginx_cpp.h"

#include <cstdint>
#include <string>
#include <string_view>

namespace session_cache::sentinel {

/* At configuration (src/conf/conf.cpp): the shared memory zone where the
 * workers of an instance count the switches they see. */
char *add_zone(ngx_conf_t *cf, ngx_http_session_cache_sentinel_conf_t *scf);

/* Per worker, in init_process (before the pools) and exit_process;
 * nothing without sentinel://. */
void start(ngx_cycle_t *cycle, const ngx_http_session_cache_main_conf_t *smcf);
void stop();

/* The confirmed master, or nullptr while none is known. */
const ngx_addr_t *master();

/*
 * The confirmed master's host as the sentinel named it: an IP literal
 * (Sentinel's default), or a host name (resolve-hostnames,
 * announce-hostnames). The name its TLS certificate must carry
 * (rediss-sentinel://: the pool's and the L1 listener's connections to
 * the master verify it, and send it as SNI when it is a name).
 * NUL-terminated, at the same place for the worker's life; its text
 * stays the same while that master is current (unless a sentinel names
 * the same address otherwise). Empty while none is known.
 */
const ngx_str_t &master_host();

/* Something says the master may have changed: a pool connection failed,
 * a reply refused (READONLY, ...). Coalesced; never runs at once (a
 * posted event), so any caller may call it. */
void suspect(const char *why);

/*
 * Called, in order of observe(), when a master is confirmed that is not
 * the one before (the first one too): the pool closes its connections,
 * the L1 listener follows. Then L1 is dropped (topology).
 */
using Observer = void (*)(void *data);
void observe(Observer f, void *data);
void unobserve(void *data);

/* The health document's view, from this worker. */
struct View {
    bool          enabled = false;
    std::string   master_name;
    std::string   address;             /* empty: none known */
    std::uint64_t switches = 0;        /* by this nginx instance */
    std::int64_t  last_switch_ms = -1; /* Unix ms; -1: none yet */
    std::string   error;               /* the last round's failure */
};

View figures();

} // namespace session_cache::sentinel
