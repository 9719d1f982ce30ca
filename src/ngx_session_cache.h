/*
 * The seam between ngx_session_cache_module.c (what nginx sees) and the
 * C++ runtime in src/. Plain C, included by both; the C++ side includes it
 * through src/nginx.h, inside extern "C".
 */
#ifndef NGX_SESSION_CACHE_H_INCLUDED_
#define NGX_SESSION_CACHE_H_INCLUDED_

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


#define NGX_HTTP_SESSION_CACHE_FAIL_CLOSED  0
#define NGX_HTTP_SESSION_CACHE_FAIL_OPEN    1

/* session_cache_health's defaults: threshold= and timeout= */
#define NGX_HTTP_SESSION_CACHE_HEALTH_THRESHOLD  100
#define NGX_HTTP_SESSION_CACHE_HEALTH_TIMEOUT    1000


typedef struct {
    ngx_uint_t                  configured;
    ngx_str_t                   display;         /* masked, for logs */
    ngx_uint_t                  pool;            /* connections per worker */
    ngx_msec_t                  connect_timeout;
    ngx_msec_t                  timeout;
    ngx_msec_t                  idle_timeout;    /* 0: never closed idle */
    ngx_uint_t                  load_balance;    /* postgres: 1 for
                                                  * load_balance=random */
} ngx_http_session_cache_backend_t;


/* sentinel:// (SPEC §10, src/redis/sentinel.cpp): where to ask for the
 * master; the master's address is learned at run time */
typedef struct {
    ngx_addr_t                 *addrs;           /* the sentinels, resolved
                                                  * at start */
    ngx_uint_t                  naddrs;
    ngx_str_t                  *names;           /* rediss-sentinel://: the
                                                  * host each address came
                                                  * from, as the URL gave
                                                  * it (TLS: SNI and the
                                                  * name verified); NULL
                                                  * without TLS */
    ngx_str_t                   master;          /* MASTER */
    ngx_str_t                   handshake;       /* AUTH to the sentinels,
                                                  * as RESP; may be empty */
    ngx_shm_zone_t             *zone;            /* the instance's view */
    void                       *shared;          /* in the zone */
} ngx_http_session_cache_sentinel_conf_t;


typedef struct {
    ngx_http_session_cache_backend_t  backend;

    ngx_addr_t                 *addrs;           /* resolved at start */
    ngx_uint_t                  naddrs;

    /* rediss:// */
    ngx_flag_t                  tls_verify;      /* NGX_CONF_UNSET: on */
    ngx_str_t                   tls_ca;          /* empty: system CAs */
    ngx_str_t                   tls_name;        /* SNI, certificate name */
#if (NGX_SSL)
    ngx_ssl_t                  *ssl;
#endif
    ngx_str_t                   handshake;       /* AUTH/SELECT, as RESP */

    /* redis-cluster:// (SPEC §10): addrs are the seeds' addresses; the
     * nodes are learned at run time (src/redis/cluster.cpp) */
    ngx_uint_t                  cluster;
    ngx_str_t                  *seed_names;      /* the seed host each of
                                                  * addrs came from, as
                                                  * written: its TLS name */
    /* sentinel://: NULL otherwise (then addrs is empty: the master is
     * asked for); sentinel_password= as the directive gave it, wiped once
     * parsed */
    ngx_http_session_cache_sentinel_conf_t *sentinel;
    ngx_str_t                   sentinel_password;
} ngx_http_session_cache_redis_conf_t;


typedef struct {
    ngx_http_session_cache_backend_t  backend;

    /* NULL-terminated, for PQconnectStartParams; hostaddr filled in at
     * start so that no worker ever resolves a name */
    const char                **keywords;
    const char                **values;
} ngx_http_session_cache_pg_conf_t;


/* session_cache_breaker (SPEC §5): one breaker per backend */
typedef struct {
    ngx_flag_t                  enabled;         /* NGX_CONF_UNSET: on */
    ngx_uint_t                  errors;          /* percent */
    ngx_msec_t                  window;
    ngx_uint_t                  buckets;
    ngx_msec_t                  cooldown;
    ngx_uint_t                  min_requests;
    ngx_shm_zone_t             *zone;            /* NULL: no backend */
    void                       *shared;          /* in the zone */
} ngx_http_session_cache_breaker_conf_t;


/* session_cache_l1 (SPEC §8): sessions in shared memory */
typedef struct {
    ngx_flag_t                  enabled;         /* NGX_CONF_UNSET: off */
    size_t                      size;
    ngx_msec_t                  ttl;
    ngx_flag_t                  tracking;        /* NGX_CONF_UNSET: on */
    ngx_uint_t                  generation;      /* of the listener lease */
    ngx_shm_zone_t             *zone;
    void                       *shared;          /* in the zone */
} ngx_http_session_cache_l1_conf_t;


/* session_cache_revocation (SPEC §9): LISTEN on a Postgres channel */
typedef struct {
    ngx_flag_t                  enabled;         /* NGX_CONF_UNSET: off */
    ngx_str_t                   channel;         /* checked, null-terminated */
    ngx_uint_t                  generation;      /* of the listener lease */
    ngx_shm_zone_t             *zone;
    void                       *shared;          /* in the zone */
} ngx_http_session_cache_revocation_conf_t;


typedef struct {
    ngx_http_session_cache_redis_conf_t  redis;
    ngx_http_session_cache_pg_conf_t     pg;
    ngx_http_session_cache_breaker_conf_t breaker;
    ngx_http_session_cache_l1_conf_t     l1;

    ngx_str_t                   query;
    time_t                      ttl;
    time_t                      negative_ttl;
    ngx_str_t                   key_prefix;

    ngx_shm_zone_t             *metrics_zone;    /* src/metrics.cpp */

    ngx_http_session_cache_revocation_conf_t  revocation;
} ngx_http_session_cache_main_conf_t;


/* auth_session_require: one NAME=VALUE[,VALUE...] */
typedef struct {
    ngx_str_t                   name;            /* "user_id" or attr */
    ngx_array_t                 values;          /* complex values */
} ngx_http_session_cache_require_t;


typedef struct {
    ngx_http_complex_value_t   *token;           /* NULL: off */
    ngx_uint_t                  fail;
    ngx_array_t                *require;         /* NULL: off */

    /* session_cache_health */
    ngx_flag_t                  health;          /* this location serves it */
    ngx_msec_t                  health_threshold;
    ngx_msec_t                  health_timeout;
} ngx_http_session_cache_loc_conf_t;


/* at most this many attributes per session (SPEC §12) */
#define NGX_HTTP_SESSION_CACHE_MAX_ATTRS  16


/* what the variables show; filled by the check, read by the C side */
typedef struct {
    ngx_str_t                   status;
    ngx_str_t                   user_id;
    ngx_str_t                   expires_at;
    ngx_uint_t                  nattrs;
    ngx_str_t                   attr_name[NGX_HTTP_SESSION_CACHE_MAX_ATTRS];
    ngx_str_t                   attr_value[NGX_HTTP_SESSION_CACHE_MAX_ATTRS];
    ngx_str_t                   layer;           /* l1, redis, postgres */
} ngx_http_session_cache_result_t;


extern ngx_module_t  ngx_http_session_cache_module;


#ifdef __cplusplus
extern "C" {
#endif

/* configuration (src/conf.cpp): parse a URL or conninfo into the conf; on
 * failure return a message naming the problem, never the password */
char *ngx_http_session_cache_parse_redis(ngx_conf_t *cf, ngx_str_t *url,
    ngx_http_session_cache_redis_conf_t *rcf);
char *ngx_http_session_cache_parse_postgres(ngx_conf_t *cf,
    ngx_str_t *conninfo, ngx_http_session_cache_pg_conf_t *pcf);

/* session_cache_query (src/conf/query_check.cpp): $1 and no other
 * placeholder, as Postgres reads the text */
char *ngx_http_session_cache_check_query(ngx_conf_t *cf, ngx_str_t *sql);

/* the breakers' shared memory zone (src/breaker_zone.cpp) */
char *ngx_http_session_cache_breaker_zone(ngx_conf_t *cf,
    ngx_http_session_cache_main_conf_t *smcf);

/* the L1 zone (src/l1/l1_zone.cpp) */
char *ngx_http_session_cache_l1_zone(ngx_conf_t *cf,
    ngx_http_session_cache_main_conf_t *smcf);

/* session_cache_revocation (src/pg/pg_listener.cpp): NULL if channel is
 * a usable channel name, else what is wrong with it; and its zone */
const char *ngx_http_session_cache_channel_problem(ngx_str_t *channel);
char *ngx_http_session_cache_revocation_zone(ngx_conf_t *cf,
    ngx_http_session_cache_main_conf_t *smcf);

/* per worker (src/worker.cpp) */
ngx_int_t ngx_http_session_cache_init_worker(ngx_cycle_t *cycle,
    ngx_http_session_cache_main_conf_t *smcf);
void ngx_http_session_cache_exit_worker(ngx_cycle_t *cycle);

/* the access-phase check (src/session_check.cpp) */
ngx_int_t ngx_http_session_cache_check(ngx_http_request_t *r,
    ngx_http_session_cache_main_conf_t *smcf,
    ngx_http_session_cache_loc_conf_t *slcf);
ngx_http_session_cache_result_t *ngx_http_session_cache_result(
    ngx_http_request_t *r);

/* metrics (src/metrics.cpp): the shared zone, added at configuration */
ngx_shm_zone_t *ngx_http_session_cache_metrics_zone(ngx_conf_t *cf);

/* the session_cache_health content handler (src/health.cpp) */
ngx_int_t ngx_http_session_cache_health_handler(ngx_http_request_t *r);

#ifdef __cplusplus
}
#endif

#endif /* NGX_SESSION_CACHE_H_INCLUDED_ */
