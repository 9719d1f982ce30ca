/*
 * ngx_session_cache: session cookies checked at the edge, against Redis
 * with a Postgres fallback. This file is what nginx sees: the module,
 * its directives and configuration, the access phase handler and the
 * variables. How the check works lives in src/ (C++17).
 */

#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_session_cache.h"


#define NGX_HTTP_SESSION_CACHE_MAX_POOL  1024
#define NGX_HTTP_SESSION_CACHE_IDLE_TIMEOUT  60000   /* ms, both backends */
#define NGX_HTTP_SESSION_CACHE_MAX_BUCKETS  100   /* kBreakerMaxBuckets */
#define NGX_HTTP_SESSION_CACHE_L1_MIN_SIZE  (256 * 1024)  /* race counters */
#define NGX_HTTP_SESSION_CACHE_L1_TTL       30000  /* ms */


/* the names of time parameters, for ngx_http_session_cache_time_param() */
static ngx_str_t  ngx_http_session_cache_connect_timeout =
    ngx_string("connect_timeout");
static ngx_str_t  ngx_http_session_cache_timeout = ngx_string("timeout");
static ngx_str_t  ngx_http_session_cache_idle_timeout =
    ngx_string("idle_timeout");
static ngx_str_t  ngx_http_session_cache_window = ngx_string("window");
static ngx_str_t  ngx_http_session_cache_cooldown = ngx_string("cooldown");
static ngx_str_t  ngx_http_session_cache_threshold = ngx_string("threshold");
static ngx_str_t  ngx_http_session_cache_ttl_name = ngx_string("ttl");

#define NGX_HTTP_SESSION_CACHE_DEFAULT_QUERY                                 \
    "SELECT user_id, extract(epoch FROM expires_at)::bigint"                 \
    " FROM platform.user_sessions"                                           \
    " WHERE token = $1 AND revoked_at IS NULL AND expires_at > now()"


static ngx_int_t ngx_http_session_cache_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_session_cache_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_session_cache_attr_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static char *ngx_http_session_cache_sentinel_password(ngx_conf_t *cf,
    ngx_str_t *arg, ngx_http_session_cache_redis_conf_t *rcf);
static char *ngx_http_session_cache_redis(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_session_cache_postgres(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_session_cache_backend(ngx_conf_t *cf,
    ngx_command_t *cmd, ngx_http_session_cache_backend_t *bcf,
    ngx_http_session_cache_redis_conf_t *rcf, ngx_str_t *source);
static char *ngx_http_session_cache_read_source(ngx_conf_t *cf,
    ngx_str_t *arg, ngx_str_t *source);
static char *ngx_http_session_cache_auth_session(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_session_cache_require(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static ngx_int_t ngx_http_session_cache_require_name(ngx_str_t *name);
static char *ngx_http_session_cache_enum(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_session_cache_breaker(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_session_cache_l1(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_session_cache_time_param(ngx_conf_t *cf,
    ngx_command_t *cmd, ngx_str_t *value, ngx_str_t *name, ngx_uint_t zero,
    ngx_msec_t *ms);
static char *ngx_http_session_cache_health(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_session_cache_revocation(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_session_cache_query(ngx_conf_t *cf, void *post,
    void *data);
static char *ngx_http_session_cache_positive(ngx_conf_t *cf, void *post,
    void *data);
static ngx_int_t ngx_http_session_cache_add_variables(ngx_conf_t *cf);
static void *ngx_http_session_cache_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_session_cache_init_main_conf(ngx_conf_t *cf,
    void *conf);
static void *ngx_http_session_cache_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_session_cache_merge_loc_conf(ngx_conf_t *cf,
    void *parent, void *child);
static ngx_int_t ngx_http_session_cache_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_session_cache_init_process(ngx_cycle_t *cycle);
static void ngx_http_session_cache_exit_process(ngx_cycle_t *cycle);


static ngx_conf_enum_t  ngx_http_session_cache_fail_modes[] = {
    { ngx_string("closed"), NGX_HTTP_SESSION_CACHE_FAIL_CLOSED },
    { ngx_string("open"), NGX_HTTP_SESSION_CACHE_FAIL_OPEN },
    { ngx_null_string, 0 }
};


static ngx_conf_post_t  ngx_http_session_cache_query_post =
    { ngx_http_session_cache_query };

static ngx_conf_post_t  ngx_http_session_cache_positive_post =
    { ngx_http_session_cache_positive };


static ngx_command_t  ngx_http_session_cache_commands[] = {

    { ngx_string("auth_session"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_session_cache_auth_session,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("auth_session_fail"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_session_cache_enum,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_session_cache_loc_conf_t, fail),
      &ngx_http_session_cache_fail_modes },

    { ngx_string("auth_session_require"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_1MORE,
      ngx_http_session_cache_require,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("session_cache_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_session_cache_redis,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("session_cache_postgres"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_session_cache_postgres,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("session_cache_query"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_session_cache_main_conf_t, query),
      &ngx_http_session_cache_query_post },

    { ngx_string("session_cache_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_session_cache_main_conf_t, ttl),
      &ngx_http_session_cache_positive_post },

    { ngx_string("session_cache_negative_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_session_cache_main_conf_t, negative_ttl),
      NULL },

    { ngx_string("session_cache_breaker"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_session_cache_breaker,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("session_cache_l1"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_session_cache_l1,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("session_cache_key_prefix"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_session_cache_main_conf_t, key_prefix),
      NULL },

    { ngx_string("session_cache_revocation"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_session_cache_revocation,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("session_cache_health"),
      NGX_HTTP_LOC_CONF|NGX_CONF_ANY,
      ngx_http_session_cache_health,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_session_cache_module_ctx = {
    ngx_http_session_cache_add_variables,  /* preconfiguration */
    ngx_http_session_cache_init,           /* postconfiguration */

    ngx_http_session_cache_create_main_conf, /* create main configuration */
    ngx_http_session_cache_init_main_conf, /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_session_cache_create_loc_conf, /* create location configuration */
    ngx_http_session_cache_merge_loc_conf  /* merge location configuration */
};


ngx_module_t  ngx_http_session_cache_module = {
    NGX_MODULE_V1,
    &ngx_http_session_cache_module_ctx,    /* module context */
    ngx_http_session_cache_commands,       /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_session_cache_init_process,   /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_session_cache_exit_process,   /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


enum {
    ngx_http_session_cache_var_user_id = 0,
    ngx_http_session_cache_var_expires_at,
    ngx_http_session_cache_var_status,
    ngx_http_session_cache_var_layer
};


static ngx_http_variable_t  ngx_http_session_cache_vars[] = {

    { ngx_string("session_user_id"), NULL,
      ngx_http_session_cache_variable,
      ngx_http_session_cache_var_user_id, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("session_expires_at"), NULL,
      ngx_http_session_cache_variable,
      ngx_http_session_cache_var_expires_at, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("session_cache_status"), NULL,
      ngx_http_session_cache_variable,
      ngx_http_session_cache_var_status, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("session_cache_layer"), NULL,
      ngx_http_session_cache_variable,
      ngx_http_session_cache_var_layer, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    /* $session_attr_<name>, as $cookie_<name> */
    { ngx_string("session_attr_"), NULL,
      ngx_http_session_cache_attr_variable,
      0, NGX_HTTP_VAR_NOCACHEABLE|NGX_HTTP_VAR_PREFIX, 0 },

      ngx_http_null_variable
};


static ngx_int_t
ngx_http_session_cache_handler(ngx_http_request_t *r)
{
    ngx_http_session_cache_loc_conf_t   *slcf;
    ngx_http_session_cache_main_conf_t  *smcf;

    slcf = ngx_http_get_module_loc_conf(r, ngx_http_session_cache_module);

    if (slcf->token == NULL) {
        return NGX_DECLINED;
    }

    smcf = ngx_http_get_module_main_conf(r, ngx_http_session_cache_module);

    return ngx_http_session_cache_check(r, smcf, slcf);
}


static ngx_int_t
ngx_http_session_cache_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                        *s;
    ngx_http_session_cache_result_t  *res;

    res = ngx_http_session_cache_result(r);

    if (res == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    switch (data) {
    case ngx_http_session_cache_var_user_id:
        s = &res->user_id;
        break;
    case ngx_http_session_cache_var_expires_at:
        s = &res->expires_at;
        break;
    case ngx_http_session_cache_var_layer:
        s = &res->layer;
        break;
    default:
        s = &res->status;
        break;
    }

    if (s->len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = s->len;
    v->data = s->data;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;

    return NGX_OK;
}


static char *
ngx_http_session_cache_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_session_cache_main_conf_t *smcf = conf;

    char       *rv;
    ngx_str_t   source;

    if (smcf->redis.backend.configured) {
        return "is duplicate";
    }

    smcf->redis.backend.pool = 8;
    smcf->redis.backend.connect_timeout = 1000;
    smcf->redis.backend.timeout = 200;
    smcf->redis.backend.idle_timeout = NGX_HTTP_SESSION_CACHE_IDLE_TIMEOUT;
    smcf->redis.tls_verify = NGX_CONF_UNSET;

    rv = ngx_http_session_cache_backend(cf, cmd, &smcf->redis.backend,
                                        &smcf->redis, &source);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    rv = ngx_http_session_cache_parse_redis(cf, &source, &smcf->redis);

    ngx_explicit_memzero(source.data, source.len);
    ngx_explicit_memzero(smcf->redis.sentinel_password.data,
                         smcf->redis.sentinel_password.len);
    ngx_str_null(&smcf->redis.sentinel_password);

    if (rv != NGX_CONF_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%V: %s", &cmd->name, rv);
        return NGX_CONF_ERROR;
    }

    smcf->redis.backend.configured = 1;

    return NGX_CONF_OK;
}


static char *
ngx_http_session_cache_postgres(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_session_cache_main_conf_t *smcf = conf;

    char       *rv;
    ngx_str_t   source;

    if (smcf->pg.backend.configured) {
        return "is duplicate";
    }

    smcf->pg.backend.pool = 4;
    smcf->pg.backend.connect_timeout = 2000;
    smcf->pg.backend.timeout = 1000;
    smcf->pg.backend.idle_timeout = NGX_HTTP_SESSION_CACHE_IDLE_TIMEOUT;

    rv = ngx_http_session_cache_backend(cf, cmd, &smcf->pg.backend, NULL,
                                        &source);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    rv = ngx_http_session_cache_parse_postgres(cf, &source, &smcf->pg);

    ngx_explicit_memzero(source.data, source.len);

    if (rv != NGX_CONF_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%V: %s", &cmd->name, rv);
        return NGX_CONF_ERROR;
    }

    smcf->pg.backend.configured = 1;

    return NGX_CONF_OK;
}


/*
 * The parts both backends share: where the secret comes from (the first
 * argument) and pool=N connect_timeout=T timeout=T idle_timeout=T (0: a
 * connection without a job is never closed for it); for Redis (rcf set)
 * also tls_ca=PATH and tls_verify=on|off. Error messages never repeat the
 * first argument: it may hold a password.
 */
static char *
ngx_http_session_cache_backend(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_http_session_cache_backend_t *bcf,
    ngx_http_session_cache_redis_conf_t *rcf, ngx_str_t *source)
{
    char        *rv;
    ngx_int_t    n, rc;
    ngx_str_t   *value;
    ngx_uint_t   i;

    value = cf->args->elts;

    rv = ngx_http_session_cache_read_source(cf, &value[1], source);
    if (rv != NGX_CONF_OK) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%V: %s", &cmd->name, rv);
        return NGX_CONF_ERROR;
    }

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "pool=", 5) == 0) {
            n = ngx_atoi(value[i].data + 5, value[i].len - 5);

            if (n == NGX_ERROR || n < 1
                || n > NGX_HTTP_SESSION_CACHE_MAX_POOL)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "%V: invalid pool size \"%V\", "
                                   "expected 1..%d", &cmd->name, &value[i],
                                   NGX_HTTP_SESSION_CACHE_MAX_POOL);
                return NGX_CONF_ERROR;
            }

            bcf->pool = n;
            continue;
        }

        rc = ngx_http_session_cache_time_param(cf, cmd, &value[i],
                 &ngx_http_session_cache_connect_timeout, 0,
                 &bcf->connect_timeout);
        if (rc == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }
        if (rc == NGX_OK) {
            continue;
        }

        rc = ngx_http_session_cache_time_param(cf, cmd, &value[i],
                 &ngx_http_session_cache_timeout, 0, &bcf->timeout);
        if (rc == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }
        if (rc == NGX_OK) {
            continue;
        }

        rc = ngx_http_session_cache_time_param(cf, cmd, &value[i],
                 &ngx_http_session_cache_idle_timeout, 1,
                 &bcf->idle_timeout);
        if (rc == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }
        if (rc == NGX_OK) {
            continue;
        }

        if (rcf && ngx_strncmp(value[i].data, "tls_ca=", 7) == 0
            && value[i].len > 7)
        {
            rcf->tls_ca.data = value[i].data + 7;
            rcf->tls_ca.len = value[i].len - 7;
            continue;
        }

        if (rcf && ngx_strcmp(value[i].data, "tls_verify=on") == 0) {
            rcf->tls_verify = 1;
            continue;
        }

        if (rcf && ngx_strcmp(value[i].data, "tls_verify=off") == 0) {
            rcf->tls_verify = 0;
            continue;
        }

        /* Postgres: each worker shuffles the host list (SPEC §11) */
        if (rcf == NULL
            && ngx_strncmp(value[i].data, "load_balance=", 13) == 0)
        {
            if (ngx_strcmp(value[i].data + 13, "random") != 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "%V: invalid load_balance \"%s\", "
                                   "expected \"random\"", &cmd->name,
                                   value[i].data + 13);
                return NGX_CONF_ERROR;
            }

            bcf->load_balance = 1;
            continue;
        }

        if (rcf && ngx_strncmp(value[i].data, "sentinel_password=", 18)
                   == 0)
        {
            rv = ngx_http_session_cache_sentinel_password(cf, &value[i],
                                                          rcf);
            if (rv != NGX_CONF_OK) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%V: %s",
                                   &cmd->name, rv);
                return NGX_CONF_ERROR;
            }
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: unknown parameter \"%V\"",
                           &cmd->name, &value[i]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * sentinel_password=P (sentinel://, SPEC §10): inline, or env=NAME or
 * file=PATH as for the URL. A copy in the temporary pool, wiped once the
 * URL is parsed; never repeated in a message.
 */
static char *
ngx_http_session_cache_sentinel_password(ngx_conf_t *cf, ngx_str_t *arg,
    ngx_http_session_cache_redis_conf_t *rcf)
{
    char       *rv;
    ngx_str_t   value;

    if (rcf->sentinel_password.len) {
        return "duplicate sentinel_password=";
    }

    value.data = arg->data + 18;
    value.len = arg->len - 18;

    if (value.len == 0) {
        return "empty sentinel_password=";
    }

    if (ngx_strncmp(value.data, "env=", 4) == 0
        || ngx_strncmp(value.data, "file=", 5) == 0)
    {
        rv = ngx_http_session_cache_read_source(cf, &value,
                                                &rcf->sentinel_password);
        if (rv != NGX_CONF_OK) {
            return rv;
        }

        if (rcf->sentinel_password.len == 0) {
            return "empty sentinel_password=";
        }

        return NGX_CONF_OK;
    }

    rcf->sentinel_password.data = ngx_pnalloc(cf->temp_pool, value.len);
    if (rcf->sentinel_password.data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(rcf->sentinel_password.data, value.data, value.len);
    rcf->sentinel_password.len = value.len;

    return NGX_CONF_OK;
}


/*
 * The connection string: inline, env=NAME (read by the master at start and
 * on reload) or file=PATH (read at start and on reload; trailing white
 * space stripped). The copy is the caller's to wipe.
 */
static char *
ngx_http_session_cache_read_source(ngx_conf_t *cf, ngx_str_t *arg,
    ngx_str_t *source)
{
    u_char           *p, *name, *last;
    ssize_t           n;
    ngx_err_t         err;
    ngx_fd_t          fd;
    ngx_str_t         path;
    ngx_file_info_t   fi;

    if (ngx_strncmp(arg->data, "env=", 4) == 0) {
        name = arg->data + 4;

        if (*name == '\0') {
            return "empty name in \"env=\"";
        }

        p = (u_char *) getenv((char *) name);

        if (p == NULL) {
            p = ngx_pnalloc(cf->temp_pool, arg->len + 64);
            if (p == NULL) {
                return NGX_CONF_ERROR;
            }

            *ngx_sprintf(p, "environment variable \"%s\" is not set",
                         name) = '\0';
            return (char *) p;
        }

        source->len = ngx_strlen(p);
        source->data = ngx_pnalloc(cf->temp_pool, source->len + 1);
        if (source->data == NULL) {
            return NGX_CONF_ERROR;
        }

        ngx_memcpy(source->data, p, source->len + 1);

    } else if (ngx_strncmp(arg->data, "file=", 5) == 0) {
        path.data = arg->data + 5;
        path.len = arg->len - 5;

        if (path.len == 0) {
            return "empty path in \"file=\"";
        }

        if (ngx_conf_full_name(cf->cycle, &path, 1) != NGX_OK) {
            return NGX_CONF_ERROR;
        }

        fd = ngx_open_file(path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
        if (fd == NGX_INVALID_FILE) {
            err = ngx_errno;
            p = ngx_pnalloc(cf->temp_pool, path.len + NGX_MAX_ERROR_STR);
            if (p == NULL) {
                return NGX_CONF_ERROR;
            }

            last = ngx_sprintf(p, "cannot open \"%V\": ", &path);
            last = ngx_strerror(err, last, NGX_MAX_ERROR_STR - 32);
            *last = '\0';
            return (char *) p;
        }

        if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR
            || ngx_file_size(&fi) > 65536)
        {
            ngx_close_file(fd);
            return "the file= secret is unreadable or larger than 64k";
        }

        source->data = ngx_pnalloc(cf->temp_pool, ngx_file_size(&fi) + 1);
        if (source->data == NULL) {
            ngx_close_file(fd);
            return NGX_CONF_ERROR;
        }

        n = ngx_read_fd(fd, source->data, ngx_file_size(&fi));
        ngx_close_file(fd);

        if (n < 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                               ngx_read_fd_n " \"%V\" failed", &path);
            return "cannot read the file= secret";
        }

        while (n > 0 && (source->data[n - 1] == '\n'
                         || source->data[n - 1] == '\r'
                         || source->data[n - 1] == ' '
                         || source->data[n - 1] == '\t'))
        {
            n--;
        }

        source->len = n;
        source->data[n] = '\0';

    } else {
        *source = *arg;
        return NGX_CONF_OK;
    }

    if (source->len == 0) {
        return "the connection string is empty";
    }

    return NGX_CONF_OK;
}


/* $session_attr_<name>: the attribute's value, empty when it is not there
 * (a column not in the query, SQL NULL, a session cached without it) */
static ngx_int_t
ngx_http_session_cache_attr_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t *var = (ngx_str_t *) data;

    ngx_str_t                         name;
    ngx_uint_t                        i;
    ngx_http_session_cache_result_t  *res;

    name.len = var->len - (sizeof("session_attr_") - 1);
    name.data = var->data + sizeof("session_attr_") - 1;

    res = ngx_http_session_cache_result(r);

    if (res != NULL) {
        for (i = 0; i < res->nattrs; i++) {
            if (res->attr_name[i].len == name.len
                && ngx_strncmp(res->attr_name[i].data, name.data, name.len)
                   == 0)
            {
                v->len = res->attr_value[i].len;
                v->data = res->attr_value[i].data;
                v->valid = 1;
                v->no_cacheable = 1;
                v->not_found = 0;
                return NGX_OK;
            }
        }
    }

    v->not_found = 1;
    return NGX_OK;
}


static char *
ngx_http_session_cache_auth_session(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_session_cache_loc_conf_t *slcf = conf;

    ngx_str_t                         *value;
    ngx_http_compile_complex_value_t   ccv;

    if (slcf->token != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        slcf->token = NULL;
        return NGX_CONF_OK;
    }

    slcf->token = ngx_palloc(cf->pool, sizeof(ngx_http_complex_value_t));
    if (slcf->token == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = slcf->token;

    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        /* nginx's script compiler said what is wrong, not where */
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: invalid token expression \"%V\"",
                           &cmd->name, &value[1]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * auth_session_require NAME=VALUE[,VALUE...] ... | off: what the names mean
 * is known only when Postgres describes the session query, so nginx -t
 * checks their form alone.
 */
static char *
ngx_http_session_cache_require(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_session_cache_loc_conf_t *slcf = conf;

    u_char                            *p, *last, *comma;
    ngx_str_t                         *value, v;
    ngx_uint_t                         i, j;
    ngx_http_complex_value_t          *cv;
    ngx_http_compile_complex_value_t   ccv;
    ngx_http_session_cache_require_t  *rule, *rules;

    if (slcf->require != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (cf->args->nelts == 2 && ngx_strcmp(value[1].data, "off") == 0) {
        slcf->require = NULL;
        return NGX_CONF_OK;
    }

    slcf->require = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                     sizeof(ngx_http_session_cache_require_t));
    if (slcf->require == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 1; i < cf->args->nelts; i++) {
        p = value[i].data;
        last = p + value[i].len;

        rule = ngx_array_push(slcf->require);
        if (rule == NULL) {
            return NGX_CONF_ERROR;
        }

        rule->name.data = p;
        p = ngx_strlchr(p, last, '=');

        if (p == NULL) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%V: \"%V\" is not NAME=VALUE[,VALUE...]",
                               &cmd->name, &value[i]);
            return NGX_CONF_ERROR;
        }

        rule->name.len = p - rule->name.data;

        if (ngx_http_session_cache_require_name(&rule->name) != NGX_OK) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "%V: \"%V\" is not user_id or an attribute "
                               "name (a lower-case identifier: "
                               "[a-z_][a-z0-9_]*, at most 63 bytes)",
                               &cmd->name, &rule->name);
            return NGX_CONF_ERROR;
        }

        rules = slcf->require->elts;

        for (j = 0; j + 1 < slcf->require->nelts; j++) {
            if (rules[j].name.len == rule->name.len
                && ngx_strncmp(rules[j].name.data, rule->name.data,
                               rule->name.len) == 0)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "%V: \"%V\" is named twice: list its "
                                   "values once, separated by commas",
                                   &cmd->name, &rule->name);
                return NGX_CONF_ERROR;
            }
        }

        if (ngx_array_init(&rule->values, cf->pool, 2,
                           sizeof(ngx_http_complex_value_t))
            != NGX_OK)
        {
            return NGX_CONF_ERROR;
        }

        for (p++; /* void */; p = comma + 1) {
            comma = ngx_strlchr(p, last, ',');

            v.data = p;
            v.len = (comma ? comma : last) - p;

            if (v.len == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "%V: \"%V\" has an empty value",
                                   &cmd->name, &value[i]);
                return NGX_CONF_ERROR;
            }

            cv = ngx_array_push(&rule->values);
            if (cv == NULL) {
                return NGX_CONF_ERROR;
            }

            ngx_memzero(&ccv, sizeof(ngx_http_compile_complex_value_t));

            ccv.cf = cf;
            ccv.value = &v;
            ccv.complex_value = cv;

            if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "%V: invalid value \"%V\"",
                                   &cmd->name, &v);
                return NGX_CONF_ERROR;
            }

            if (comma == NULL) {
                break;
            }
        }
    }

    return NGX_CONF_OK;
}


/* "user_id", or an attribute name as session_value.h's
 * attr_name_acceptable() takes it */
static ngx_int_t
ngx_http_session_cache_require_name(ngx_str_t *name)
{
    u_char      c;
    ngx_uint_t  i;

    if (name->len == 0 || name->len > 63) {
        return NGX_ERROR;
    }

    for (i = 0; i < name->len; i++) {
        c = name->data[i];

        if (!((c >= 'a' && c <= 'z') || c == '_'
              || (i > 0 && c >= '0' && c <= '9')))
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/*
 * ngx_conf_set_enum_slot(), with a message that names the directive and
 * what it takes: nginx's own says only 'invalid value "maybe"'.
 */
static char *
ngx_http_session_cache_enum(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    char  *p = conf;

    u_char           *last;
    ngx_str_t        *value;
    ngx_uint_t       *np;
    ngx_conf_enum_t  *e;
    u_char            expected[128];

    np = (ngx_uint_t *) (p + cmd->offset);

    if (*np != NGX_CONF_UNSET_UINT) {
        return "is duplicate";
    }

    value = cf->args->elts;
    e = cmd->post;
    last = expected;

    for ( /* void */ ; e->name.len; e++) {
        if (e->name.len == value[1].len
            && ngx_strcasecmp(e->name.data, value[1].data) == 0)
        {
            *np = e->value;
            return NGX_CONF_OK;
        }

        last = ngx_slprintf(last, expected + sizeof(expected), "%s%V",
                            last == expected ? "" : ", ", &e->name);
    }

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "%V: invalid value \"%V\" (expected %*s)",
                       &cmd->name, &value[1], (size_t) (last - expected),
                       expected);

    return NGX_CONF_ERROR;
}


/*
 * session_cache_breaker off
 * session_cache_breaker [errors=P%] [window=T] [buckets=N] [cooldown=T]
 *                       [min_requests=N]
 */
static char *
ngx_http_session_cache_breaker(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_session_cache_main_conf_t *smcf = conf;

    ngx_int_t    n, rc;
    ngx_str_t   *value, s;
    ngx_uint_t   i;

    ngx_http_session_cache_breaker_conf_t  *bc = &smcf->breaker;

    if (bc->enabled != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (cf->args->nelts == 2 && ngx_strcmp(value[1].data, "off") == 0) {
        bc->enabled = 0;
        return NGX_CONF_OK;
    }

    bc->enabled = 1;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "errors=", 7) == 0) {
            s.data = value[i].data + 7;
            s.len = value[i].len - 7;

            if (s.len && s.data[s.len - 1] == '%') {
                s.len--;
            }

            n = ngx_atoi(s.data, s.len);
            if (n == NGX_ERROR || n > 100) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "%V: invalid errors \"%V\" "
                                   "(expected 0%%..100%%)",
                                   &cmd->name, &value[i]);
                return NGX_CONF_ERROR;
            }

            bc->errors = n;
            continue;
        }

        rc = ngx_http_session_cache_time_param(cf, cmd, &value[i],
                 &ngx_http_session_cache_window, 0, &bc->window);
        if (rc == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }
        if (rc == NGX_OK) {
            continue;
        }

        rc = ngx_http_session_cache_time_param(cf, cmd, &value[i],
                 &ngx_http_session_cache_cooldown, 0, &bc->cooldown);
        if (rc == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }
        if (rc == NGX_OK) {
            continue;
        }

        if (ngx_strncmp(value[i].data, "buckets=", 8) == 0) {
            n = ngx_atoi(value[i].data + 8, value[i].len - 8);

            if (n == NGX_ERROR || n < 1
                || n > NGX_HTTP_SESSION_CACHE_MAX_BUCKETS)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "%V: invalid buckets \"%V\" "
                                   "(expected 1..%d)", &cmd->name,
                                   &value[i],
                                   NGX_HTTP_SESSION_CACHE_MAX_BUCKETS);
                return NGX_CONF_ERROR;
            }

            bc->buckets = n;
            continue;
        }

        if (ngx_strncmp(value[i].data, "min_requests=", 13) == 0) {
            n = ngx_atoi(value[i].data + 13, value[i].len - 13);

            if (n == NGX_ERROR || n < 1) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "%V: invalid min_requests \"%V\" "
                                   "(expected 1 or more)",
                                   &cmd->name, &value[i]);
                return NGX_CONF_ERROR;
            }

            bc->min_requests = n;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: unknown parameter \"%V\"",
                           &cmd->name, &value[i]);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/*
 * session_cache_l1 off
 * session_cache_l1 size=SIZE [ttl=T] [tracking=on|off]
 */
static char *
ngx_http_session_cache_l1(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_session_cache_main_conf_t *smcf = conf;

    ssize_t      size;
    ngx_int_t    rc;
    ngx_str_t   *value, s;
    ngx_uint_t   i;

    ngx_http_session_cache_l1_conf_t  *lc = &smcf->l1;

    if (lc->enabled != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (cf->args->nelts == 2 && ngx_strcmp(value[1].data, "off") == 0) {
        lc->enabled = 0;
        return NGX_CONF_OK;
    }

    lc->enabled = 1;

    for (i = 1; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "size=", 5) == 0) {
            s.data = value[i].data + 5;
            s.len = value[i].len - 5;

            size = ngx_parse_size(&s);

            if (size == NGX_ERROR
                || size < NGX_HTTP_SESSION_CACHE_L1_MIN_SIZE)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "%V: invalid size \"%V\" "
                                   "(expected at least 256k)",
                                   &cmd->name, &s);
                return NGX_CONF_ERROR;
            }

            lc->size = size;
            continue;
        }

        rc = ngx_http_session_cache_time_param(cf, cmd, &value[i],
                 &ngx_http_session_cache_ttl_name, 0, &lc->ttl);
        if (rc == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }
        if (rc == NGX_OK) {
            continue;
        }

        if (ngx_strcmp(value[i].data, "tracking=on") == 0) {
            lc->tracking = 1;
            continue;
        }

        if (ngx_strcmp(value[i].data, "tracking=off") == 0) {
            lc->tracking = 0;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: unknown parameter \"%V\"",
                           &cmd->name, &value[i]);
        return NGX_CONF_ERROR;
    }

    if (lc->size == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: size= is required (e.g. size=32m)",
                           &cmd->name);
        return NGX_CONF_ERROR;
    }

    ngx_conf_init_msec_value(lc->ttl, NGX_HTTP_SESSION_CACHE_L1_TTL);
    ngx_conf_init_value(lc->tracking, 1);

    return NGX_CONF_OK;
}


/*
 * session_cache_revocation channel=NAME | off (SPEC §9): NAME must be a
 * lowercase Postgres identifier; session_cache_postgres is required (its
 * presence is checked in init_main_conf, whatever the order).
 */
static char *
ngx_http_session_cache_revocation(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_session_cache_main_conf_t *smcf = conf;

    ngx_str_t                                 *value, name;
    const char                                *problem;
    ngx_http_session_cache_revocation_conf_t  *rv = &smcf->revocation;

    if (rv->enabled != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strcmp(value[1].data, "off") == 0) {
        rv->enabled = 0;
        return NGX_CONF_OK;
    }

    if (value[1].len < sizeof("channel=") - 1
        || ngx_strncmp(value[1].data, "channel=", sizeof("channel=") - 1)
           != 0)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: expected channel=NAME or off, not \"%V\"",
                           &cmd->name, &value[1]);
        return NGX_CONF_ERROR;
    }

    name.data = value[1].data + sizeof("channel=") - 1;
    name.len = value[1].len - (sizeof("channel=") - 1);

    problem = ngx_http_session_cache_channel_problem(&name);

    if (problem != NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: invalid channel \"%V\": the name %s",
                           &cmd->name, &name, problem);
        return NGX_CONF_ERROR;
    }

    rv->enabled = 1;
    rv->channel = name;    /* ends with the argument's own '\0' */

    return NGX_CONF_OK;
}


/*
 * session_cache_health [threshold=time] [timeout=time]: the location
 * answers the health document. threshold: a probe slower than this makes
 * the status degraded (default 100ms); timeout: the longest a backend's
 * probe may take in all (default 1s).
 */
static char *
ngx_http_session_cache_health(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_session_cache_loc_conf_t *slcf = conf;

    ngx_int_t                  rc;
    ngx_str_t                 *value;
    ngx_uint_t                 i;
    ngx_http_core_loc_conf_t  *clcf;

    if (slcf->health) {
        return "is duplicate";
    }

    slcf->health = 1;

    value = cf->args->elts;

    for (i = 1; i < cf->args->nelts; i++) {

        /* threshold=0 is allowed: any latency then counts as slow */
        rc = ngx_http_session_cache_time_param(cf, cmd, &value[i],
                 &ngx_http_session_cache_threshold, 1, &slcf->health_threshold);
        if (rc == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }
        if (rc == NGX_OK) {
            continue;
        }

        rc = ngx_http_session_cache_time_param(cf, cmd, &value[i],
                 &ngx_http_session_cache_timeout, 0, &slcf->health_timeout);
        if (rc == NGX_ERROR) {
            return NGX_CONF_ERROR;
        }
        if (rc == NGX_OK) {
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "%V: unknown parameter \"%V\"",
                           &cmd->name, &value[i]);
        return NGX_CONF_ERROR;
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_session_cache_health_handler;

    return NGX_CONF_OK;
}


/*
 * A "name=time" parameter: NGX_DECLINED if value is not one, NGX_OK with
 * *ms set, or NGX_ERROR (logged) for a bad time, or 0 unless zero is set.
 */
static ngx_int_t
ngx_http_session_cache_time_param(ngx_conf_t *cf, ngx_command_t *cmd,
    ngx_str_t *value, ngx_str_t *name, ngx_uint_t zero, ngx_msec_t *ms)
{
    ngx_str_t   s;
    ngx_msec_t  t;

    if (value->len <= name->len
        || ngx_strncmp(value->data, name->data, name->len) != 0
        || value->data[name->len] != '=')
    {
        return NGX_DECLINED;
    }

    s.data = value->data + name->len + 1;
    s.len = value->len - name->len - 1;
    t = ngx_parse_time(&s, 0);

    if (s.len == 0 || t == (ngx_msec_t) NGX_ERROR || (t == 0 && !zero)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%V: invalid %V \"%V\"",
                           &cmd->name, name, &s);
        return NGX_ERROR;
    }

    *ms = t;
    return NGX_OK;
}


static char *
ngx_http_session_cache_query(ngx_conf_t *cf, void *post, void *data)
{
    return ngx_http_session_cache_check_query(cf, data);
}


static char *
ngx_http_session_cache_positive(ngx_conf_t *cf, void *post, void *data)
{
    time_t  *sp = data;

    if (*sp <= 0) {
        return "must be positive";
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_session_cache_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_session_cache_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static void *
ngx_http_session_cache_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_session_cache_main_conf_t  *smcf;

    smcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_session_cache_main_conf_t));
    if (smcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     smcf->redis = { 0 };
     *     smcf->pg = { 0 };
     *     smcf->query = { 0, NULL };
     *     smcf->key_prefix = { 0, NULL };
     *     smcf->metrics_zone = NULL;
     */

    smcf->ttl = NGX_CONF_UNSET;
    smcf->negative_ttl = NGX_CONF_UNSET;

    smcf->breaker.enabled = NGX_CONF_UNSET;
    smcf->breaker.errors = NGX_CONF_UNSET_UINT;
    smcf->breaker.window = NGX_CONF_UNSET_MSEC;
    smcf->breaker.buckets = NGX_CONF_UNSET_UINT;
    smcf->breaker.cooldown = NGX_CONF_UNSET_MSEC;
    smcf->breaker.min_requests = NGX_CONF_UNSET_UINT;

    smcf->l1.enabled = NGX_CONF_UNSET;
    smcf->l1.ttl = NGX_CONF_UNSET_MSEC;
    smcf->l1.tracking = NGX_CONF_UNSET;

    smcf->revocation.enabled = NGX_CONF_UNSET;

    return smcf;
}


static char *
ngx_http_session_cache_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_session_cache_main_conf_t *smcf = conf;

    ngx_http_session_cache_breaker_conf_t  *bc;

    ngx_conf_init_value(smcf->ttl, 300);
    ngx_conf_init_value(smcf->negative_ttl, 10);

    if (smcf->query.data == NULL) {
        ngx_str_set(&smcf->query, NGX_HTTP_SESSION_CACHE_DEFAULT_QUERY);
    }

    if (smcf->key_prefix.data == NULL) {
        ngx_str_set(&smcf->key_prefix, "session:");
    }

    smcf->metrics_zone = ngx_http_session_cache_metrics_zone(cf);
    if (smcf->metrics_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    bc = &smcf->breaker;

    ngx_conf_init_value(bc->enabled, 1);
    ngx_conf_init_uint_value(bc->errors, 50);
    ngx_conf_init_msec_value(bc->window, 10000);
    ngx_conf_init_uint_value(bc->buckets, 10);
    ngx_conf_init_msec_value(bc->cooldown, 30000);
    ngx_conf_init_uint_value(bc->min_requests, 5);

    if (bc->enabled && bc->window < bc->buckets) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "session_cache_breaker: window of %Mms cannot "
                           "hold %ui buckets (at least 1ms each)",
                           bc->window, bc->buckets);
        return NGX_CONF_ERROR;
    }

    if (ngx_http_session_cache_breaker_zone(cf, smcf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    ngx_conf_init_value(smcf->l1.enabled, 0);

    if (smcf->l1.enabled && smcf->l1.tracking) {
        /* never trust entries that nothing invalidates */
        if (!smcf->redis.backend.configured) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "session_cache_l1: tracking=on (the default) "
                               "needs session_cache_redis; without Redis "
                               "write tracking=off (ttl= is then the "
                               "revocation bound)");
            return NGX_CONF_ERROR;
        }

        /* with rediss://, the listener speaks TLS as the pool does */
    }

    if (ngx_http_session_cache_l1_zone(cf, smcf) != NGX_CONF_OK) {
        return NGX_CONF_ERROR;
    }

    ngx_conf_init_value(smcf->revocation.enabled, 0);

    if (smcf->revocation.enabled && !smcf->pg.backend.configured) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "session_cache_revocation needs "
                           "session_cache_postgres: it listens on that "
                           "server");
        return NGX_CONF_ERROR;
    }

    return ngx_http_session_cache_revocation_zone(cf, smcf);
}


static void *
ngx_http_session_cache_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_session_cache_loc_conf_t  *slcf;

    slcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_session_cache_loc_conf_t));
    if (slcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     slcf->health = 0;
     */

    slcf->token = NGX_CONF_UNSET_PTR;
    slcf->fail = NGX_CONF_UNSET_UINT;
    slcf->require = NGX_CONF_UNSET_PTR;
    slcf->health_threshold = NGX_CONF_UNSET_MSEC;
    slcf->health_timeout = NGX_CONF_UNSET_MSEC;

    return slcf;
}


static char *
ngx_http_session_cache_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child)
{
    ngx_http_session_cache_loc_conf_t *prev = parent;
    ngx_http_session_cache_loc_conf_t *conf = child;

    ngx_http_session_cache_main_conf_t  *smcf;

    ngx_conf_merge_ptr_value(conf->token, prev->token, NULL);
    ngx_conf_merge_uint_value(conf->fail, prev->fail,
                              NGX_HTTP_SESSION_CACHE_FAIL_CLOSED);
    ngx_conf_merge_ptr_value(conf->require, prev->require, NULL);

    ngx_conf_merge_msec_value(conf->health_threshold, prev->health_threshold,
                              NGX_HTTP_SESSION_CACHE_HEALTH_THRESHOLD);
    ngx_conf_merge_msec_value(conf->health_timeout, prev->health_timeout,
                              NGX_HTTP_SESSION_CACHE_HEALTH_TIMEOUT);

    if (conf->token) {
        smcf = ngx_http_conf_get_module_main_conf(cf,
                                              ngx_http_session_cache_module);

        if (!smcf->redis.backend.configured
            && !smcf->pg.backend.configured)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "auth_session needs a store: add "
                               "session_cache_postgres and/or "
                               "session_cache_redis to the http block");
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_session_cache_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_ACCESS_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_session_cache_handler;

    return NGX_OK;
}


static ngx_int_t
ngx_http_session_cache_init_process(ngx_cycle_t *cycle)
{
    ngx_http_session_cache_main_conf_t  *smcf;

    smcf = ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_session_cache_module);
    if (smcf == NULL) {
        return NGX_OK;
    }

    return ngx_http_session_cache_init_worker(cycle, smcf);
}


static void
ngx_http_session_cache_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_session_cache_exit_worker(cycle);
}
