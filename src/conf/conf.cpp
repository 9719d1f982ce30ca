/*
 * Configuration-time parsing of the backends' addresses. Runs in the
 * master (or nginx -t) only: the host names are resolved here, once, so
 * that no worker ever makes a blocking DNS call.
 */
#include "nginx_cpp.h"

#include "integer.h"

#include <new>
#include <string>
#include <vector>

#include "pg/pg_conninfo.h"
#include "redis/redis_url.h"
#include "redis/resp.h"
#include "redis/sentinel.h"

namespace session_cache {

static char *conf_error(ngx_conf_t *cf, const std::string &msg)
{
    u_char *p = static_cast<u_char *>(ngx_pnalloc(cf->pool, msg.size() + 1));
    if (p == nullptr) {
        return const_cast<char *>("out of memory");
    }
    ngx_memcpy(p, msg.data(), msg.size());
    p[msg.size()] = '\0';
    return reinterpret_cast<char *>(p);
}

static bool copy_str(ngx_conf_t *cf, const std::string &s, ngx_str_t *out)
{
    out->len = s.size();
    out->data = static_cast<u_char *>(ngx_pnalloc(cf->pool, s.size() + 1));
    if (out->data == nullptr) {
        return false;
    }
    ngx_memcpy(out->data, s.data(), s.size());
    out->data[s.size()] = '\0';
    return true;
}

/* nginx's parser for "host:port" and "unix:/path"; names resolve here */
static bool parse_url(ngx_conf_t *cf, const std::string &text,
                      in_port_t default_port, ngx_url_t *u)
{
    ngx_memzero(u, sizeof(ngx_url_t));

    /* in the configuration's pool: for a unix socket nginx keeps pointing
     * at this text as the address's name */
    u->url.len = text.size();
    u->url.data = static_cast<u_char *>(ngx_pnalloc(cf->pool, text.size()));
    if (u->url.data == nullptr) {
        return false;
    }
    ngx_memcpy(u->url.data, text.data(), text.size());
    u->default_port = default_port;

    return ngx_parse_url(cf->pool, u) == NGX_OK && u->naddrs > 0;
}

/*
 * Resolve host (a name or an address) with nginx's own parser, as the
 * upstream module does for its servers at start. The host is quoted in
 * the message only when quote is set: what a URI's authority gives as a
 * host may be a piece of a password.
 */
static std::string resolve(ngx_conf_t *cf, const std::string &host, int port,
                           bool quote, ngx_url_t *u)
{
    std::string url;

    if (host.find(':') != std::string::npos) {
        url = "[" + host + "]";
    } else {
        url = host;
    }
    url += ":" + std::to_string(port);

    if (!parse_url(cf, url, static_cast<in_port_t>(port), u)) {
        std::string name = quote ? " \"" + host + "\"" : std::string();
        const char *field = quote ? ""
                                  : " (not shown: the address has a "
                                    "user, password or port part)";

        if (u->err && std::string(u->err) == "host not found") {
            return "could not translate host name" + name + field;
        }
        return "invalid host" + name + field
               + (u->err ? std::string(": ") + u->err : std::string());
    }

    return std::string();
}

/*
 * rediss://, rediss-sentinel://: an nginx SSL context, as proxy_ssl
 * builds one (with Sentinel, for the sentinels and the data nodes alike;
 * the names are the sentinels' and the master's, not tls_name). The server's
 * certificate is checked (chain and name) unless tls_verify=off; against
 * tls_ca= when given, else against the system's trusted CAs.
 */
static char *tls_context(ngx_conf_t *cf, const RedisUrl &url,
                         ngx_http_session_cache_redis_conf_t *rcf)
{
#if (NGX_SSL)
    if (url.unix_socket) {
        return conf_error(cf, "TLS over a unix socket is not supported");
    }

    if (rcf->tls_verify == NGX_CONF_UNSET) {
        rcf->tls_verify = 1;
    }

    if (!copy_str(cf, url.host, &rcf->tls_name)) {
        return const_cast<char *>("out of memory");
    }

    auto *ssl =
        static_cast<ngx_ssl_t *>(ngx_pcalloc(cf->pool, sizeof(ngx_ssl_t)));
    if (ssl == nullptr) {
        return const_cast<char *>("out of memory");
    }

    ssl->log = cf->log;

    if (ngx_ssl_create(ssl, NGX_SSL_TLSv1_2 | NGX_SSL_TLSv1_3, nullptr)
        != NGX_OK) {
        return const_cast<char *>("cannot create a TLS context");
    }

    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == nullptr) {
        ngx_ssl_cleanup_ctx(ssl);
        return const_cast<char *>("out of memory");
    }

    cln->handler = ngx_ssl_cleanup_ctx;
    cln->data = ssl;

    if (rcf->tls_verify) {
        if (rcf->tls_ca.len) {
            if (ngx_ssl_trusted_certificate(cf, ssl, &rcf->tls_ca, 4) != NGX_OK)
            {
                return conf_error(cf, "cannot load tls_ca=\""
                                          + std::string(view(rcf->tls_ca))
                                          + "\"");
            }

        } else if (SSL_CTX_set_default_verify_paths(ssl->ctx) != 1) {
            return conf_error(cf, "cannot load the system's trusted CAs; "
                                  "give tls_ca=");
        }
    }

    rcf->ssl = ssl;

    return NGX_CONF_OK;
#else
    return conf_error(cf, "rediss:// needs nginx built with "
                          "--with-http_ssl_module");
#endif
}

/*
 * The addresses of a list of hosts (redis-cluster:// seeds, sentinels),
 * each resolved here like any host, into one array: a name may give
 * several. names (when not nullptr): the host each address came from,
 * NUL-terminated, side by side with the addresses (for TLS).
 */
static char *resolve_list(ngx_conf_t *cf, const RedisUrl &url,
                          const std::vector<RedisUrl::Endpoint> &list,
                          const char *what, ngx_addr_t **out, ngx_uint_t *n,
                          ngx_str_t **names = nullptr)
{
    std::vector<ngx_addr_t> addrs;
    std::vector<ngx_str_t>  hosts;

    for (const RedisUrl::Endpoint &e : list) {
        ngx_url_t   u;
        std::string err =
            resolve(cf, e.host, e.port, !url.secret_authority, &u);
        if (!err.empty()) {
            return conf_error(cf, what + err);
        }

        addrs.insert(addrs.end(), u.addrs, u.addrs + u.naddrs);

        ngx_str_t host = ngx_null_string;
        if (names != nullptr && !copy_str(cf, e.host, &host)) {
            return const_cast<char *>("out of memory");
        }
        hosts.insert(hosts.end(), u.naddrs, host);
    }

    if (names != nullptr) {
        *names = static_cast<ngx_str_t *>(
            ngx_palloc(cf->pool, hosts.size() * sizeof(ngx_str_t)));
        if (*names == nullptr) {
            return const_cast<char *>("out of memory");
        }
        ngx_memcpy(*names, hosts.data(), hosts.size() * sizeof(ngx_str_t));
    }

    *out = static_cast<ngx_addr_t *>(
        ngx_palloc(cf->pool, addrs.size() * sizeof(ngx_addr_t)));
    if (*out == nullptr) {
        return const_cast<char *>("out of memory");
    }

    ngx_memcpy(*out, addrs.data(), addrs.size() * sizeof(ngx_addr_t));
    *n = addrs.size();

    return NGX_CONF_OK;
}

/*
 * sentinel:// (SPEC §10): the sentinels are resolved here like any host;
 * the master's address is asked for at run time (src/redis/sentinel.cpp).
 * The sentinels' password comes with the URL (its source may hold
 * "sentinel_password=") or as the directive's sentinel_password=.
 */
static char *sentinel_conf(ngx_conf_t *cf, const RedisUrl &url,
                           ngx_http_session_cache_redis_conf_t *rcf)
{
    auto *scf = static_cast<ngx_http_session_cache_sentinel_conf_t *>(
        ngx_pcalloc(cf->pool, sizeof(ngx_http_session_cache_sentinel_conf_t)));
    if (scf == nullptr) {
        return const_cast<char *>("out of memory");
    }

    std::string password = url.sentinel_password;

    if (rcf->sentinel_password.len) {
        if (!password.empty()) {
            return conf_error(cf, "sentinel_password= is given twice (with "
                                  "the URL and as a parameter)");
        }
        password.assign(view(rcf->sentinel_password));
    }

    /* rediss-sentinel://: each sentinel's certificate must name its host
     * as the URL gave it */
    char *rv = resolve_list(cf, url, url.sentinels, "sentinel: ", &scf->addrs,
                            &scf->naddrs, url.tls ? &scf->names : nullptr);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    std::string hs;

    if (!password.empty()) {
        resp_append(&hs, {"AUTH", password});
    }

    if (!copy_str(cf, url.master, &scf->master)
        || !copy_str(cf, hs, &scf->handshake))
    {
        return const_cast<char *>("out of memory");
    }

    rcf->sentinel = scf;
    return sentinel::add_zone(cf, scf);
}

static char *parse_redis(ngx_conf_t *cf, ngx_str_t *source,
                         ngx_http_session_cache_redis_conf_t *rcf)
{
    RedisUrl    url;
    std::string err = parse_redis_url(view(*source), &url);

    if (!err.empty()) {
        return conf_error(cf, err);
    }

    if (url.tls) {
        char *rv = tls_context(cf, url, rcf);
        if (rv != NGX_CONF_OK) {
            return rv;
        }

    } else if (rcf->tls_ca.len || rcf->tls_verify != NGX_CONF_UNSET) {
        return conf_error(
            cf, url.sentinel  ? "tls_ca= and tls_verify= need TLS: write "
                                "rediss-sentinel:// instead of sentinel://"
                : url.cluster ? "tls_ca= and tls_verify= need TLS: write "
                                "rediss-cluster:// instead of "
                                "redis-cluster://"
                              : "tls_ca= and tls_verify= need a "
                                "rediss:// URL");
    }

    if (rcf->sentinel_password.len && !url.sentinel) {
        return conf_error(cf, "sentinel_password= needs a sentinel:// URL");
    }

    if (url.cluster) {
        /* the seeds; the nodes themselves come from CLUSTER SLOTS at run
         * time (src/redis/cluster.cpp); with rediss-cluster:// each seed
         * address is checked against the host written for it */
        char *rv = resolve_list(cf, url, url.cluster_seeds, "", &rcf->addrs,
                                &rcf->naddrs, &rcf->seed_names);
        if (rv != NGX_CONF_OK) {
            return rv;
        }
        rcf->cluster = 1;

    } else if (url.sentinel) {
        char *rv = sentinel_conf(cf, url, rcf);
        if (rv != NGX_CONF_OK) {
            return rv;
        }
        /* no address until the sentinels are asked */
        rcf->addrs = nullptr;
        rcf->naddrs = 0;

    } else {
        ngx_url_t u;

        if (url.unix_socket) {
            if (!parse_url(cf, "unix:" + url.path, 0, &u)) {
                return conf_error(cf, "invalid unix socket path \"" + url.path
                                          + "\"");
            }

        } else {
            err = resolve(cf, url.host, url.port, !url.secret_authority, &u);
            if (!err.empty()) {
                return conf_error(cf, err);
            }
        }

        rcf->addrs = u.addrs;
        rcf->naddrs = u.naddrs;
    }

    std::string hs;

    if (!url.password.empty()) {
        if (url.user.empty()) {
            resp_append(&hs, {"AUTH", url.password});
        } else {
            resp_append(&hs, {"AUTH", url.user, url.password});
        }
    }

    if (url.db != 0) { /* never with redis-cluster:// (database 0 only) */
        resp_append(&hs, {"SELECT", std::to_string(url.db)});
    }

    /* sentinel://: every connection to the master first checks that it
     * is one (a sentinel may name a replica, or a master just demoted) */
    if (url.sentinel) {
        resp_append(&hs, {"ROLE"});
    }

    if (!copy_str(cf, hs, &rcf->handshake)
        || !copy_str(cf, mask_redis_url(url), &rcf->backend.display))
    {
        return const_cast<char *>("out of memory");
    }

    return NGX_CONF_OK;
}

static bool is_socket_dir(const std::string &host)
{
    return host.empty() || host[0] == '/' || host[0] == '@';
}

/*
 * Give libpq an address for every host, so that it never resolves a name
 * in a worker. A name with several addresses becomes several entries of
 * the host list, tried in turn, as libpq itself would try them.
 */
static char *resolve_pg_hosts(ngx_conf_t *cf, const std::string &host_list,
                              PgConninfo *ci)
{
    std::vector<std::string> hosts = split_hosts(host_list);
    std::vector<std::string> ports;
    const std::string       *port_list = ci->get("port");

    if (port_list != nullptr) {
        ports = split_hosts(*port_list);
    }

    if (ports.size() > 1 && ports.size() != hosts.size()) {
        return conf_error(cf, "the port list does not match the host list");
    }

    std::vector<std::string> out_hosts, out_addrs, out_ports;

    for (std::size_t i = 0; i < hosts.size(); i++) {
        const std::string &h = hosts[i];
        std::string        port_text =
            ports.empty() ? std::string() : ports[ports.size() == 1 ? 0 : i];
        int port = 5432;

        if (!port_text.empty()) {
            if (port_text[0] == '-' || !parse_integer(port_text, &port)
                || port <= 0 || port > 65535)
            {
                return conf_error(
                    cf,
                    ci->secret_authority
                        ? std::string("invalid port in the URI (expected "
                                      "1..65535; not shown: it may be a piece "
                                      "of the password)")
                        : "invalid port \"" + port_text + "\"");
            }
        }

        if (is_socket_dir(h)) {
            out_hosts.push_back(h);
            out_addrs.emplace_back();
            out_ports.push_back(port_text);
            continue;
        }

        ngx_url_t   u;
        std::string err = resolve(cf, h, port, !ci->secret_authority, &u);
        if (!err.empty()) {
            return conf_error(cf, err);
        }

        for (ngx_uint_t a = 0; a < u.naddrs; a++) {
            u_char text[NGX_SOCKADDR_STRLEN];
            size_t n = ngx_sock_ntop(u.addrs[a].sockaddr, u.addrs[a].socklen,
                                     text, NGX_SOCKADDR_STRLEN, 0);
            out_hosts.push_back(h);
            out_addrs.emplace_back(reinterpret_cast<char *>(text), n);
            out_ports.push_back(port_text);
        }
    }

    if (!ci->set("host", join_hosts(out_hosts))
        || !ci->set("hostaddr", join_hosts(out_addrs))
        || (ports.size() > 1 && !ci->set("port", join_hosts(out_ports))))
    {
        return const_cast<char *>("out of memory");
    }

    return NGX_CONF_OK;
}

static char *parse_postgres(ngx_conf_t *cf, ngx_str_t *source,
                            ngx_http_session_cache_pg_conf_t *pcf)
{
    PgConninfo  ci;
    std::string err = parse_pg_conninfo(view(*source), &ci);

    if (!err.empty()) {
        return conf_error(cf, err);
    }

    err = check_pg_options(ci);

    if (!err.empty()) {
        return conf_error(cf, err);
    }

    const std::string *host = ci.get("host");

    if (host != nullptr && ci.get("hostaddr") == nullptr) {
        char *rv = resolve_pg_hosts(cf, *host, &ci);
        if (rv != NGX_CONF_OK) {
            return rv;
        }
    }

    /* a name in pg_stat_activity; and no GSSAPI attempt unless asked,
     * which would reconnect on a new socket when it fails */
    if ((ci.get("application_name") == nullptr
         && !ci.set("application_name", "ngx_session_cache"))
        || (ci.get("gssencmode") == nullptr
            && !ci.set("gssencmode", "disable")))
    {
        return const_cast<char *>("out of memory");
    }

    std::size_t n = ci.keywords.size();
    auto      **kw = static_cast<const char **>(
        ngx_pcalloc(cf->pool, (n + 1) * sizeof(char *)));
    auto **vals = static_cast<const char **>(
        ngx_pcalloc(cf->pool, (n + 1) * sizeof(char *)));

    if (kw == nullptr || vals == nullptr) {
        return const_cast<char *>("out of memory");
    }

    for (std::size_t i = 0; i < n; i++) {
        ngx_str_t k, v;
        if (!copy_str(cf, ci.keywords[i], &k)
            || !copy_str(cf, ci.values[i], &v)) {
            return const_cast<char *>("out of memory");
        }
        kw[i] = reinterpret_cast<const char *>(k.data);
        vals[i] = reinterpret_cast<const char *>(v.data);
    }

    pcf->keywords = kw;
    pcf->values = vals;

    if (!copy_str(cf, mask_pg_conninfo(ci), &pcf->backend.display)) {
        return const_cast<char *>("out of memory");
    }

    return NGX_CONF_OK;
}

} // namespace session_cache

extern "C" char *
ngx_http_session_cache_parse_redis(ngx_conf_t *cf, ngx_str_t *url,
                                   ngx_http_session_cache_redis_conf_t *rcf)
{
    try {
        return session_cache::parse_redis(cf, url, rcf);
    } catch (const std::exception &e) {
        return const_cast<char *>("internal error while parsing the URL");
    }
}

extern "C" char *
ngx_http_session_cache_parse_postgres(ngx_conf_t *cf, ngx_str_t *conninfo,
                                      ngx_http_session_cache_pg_conf_t *pcf)
{
    try {
        return session_cache::parse_postgres(cf, conninfo, pcf);
    } catch (const std::exception &e) {
        return const_cast<char *>("internal error while parsing the "
                                  "connection string");
    }
}
