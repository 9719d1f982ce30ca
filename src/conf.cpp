/*
 * Configuration-time parsing of the backends' addresses. Runs in the
 * master (or nginx -t) only: the host names are resolved here, once, so
 * that no worker ever makes a blocking DNS call.
 */
#include "nginx.h"

#include <new>
#include <string>

#include "pg_conninfo.h"
#include "redis_url.h"
#include "resp.h"

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

/*
 * Resolve host (a name or an address) with nginx's own parser, as the
 * upstream module does for its servers at start.
 */
static std::string resolve(ngx_conf_t *cf, const std::string &host, int port,
                           ngx_url_t *u)
{
    std::string url;

    if (host.find(':') != std::string::npos) {
        url = "[" + host + "]";
    } else {
        url = host;
    }
    url += ":" + std::to_string(port);

    ngx_memzero(u, sizeof(ngx_url_t));
    u->url.data = reinterpret_cast<u_char *>(const_cast<char *>(url.c_str()));
    u->url.len = url.size();
    u->default_port = static_cast<in_port_t>(port);

    if (ngx_parse_url(cf->pool, u) != NGX_OK || u->naddrs == 0) {
        if (u->err && std::string(u->err) == "host not found") {
            return "could not translate host name \"" + host + "\"";
        }
        return "invalid host \"" + host + "\""
               + (u->err ? std::string(": ") + u->err : std::string());
    }

    return std::string();
}

static char *parse_redis(ngx_conf_t *cf, ngx_str_t *source,
                         ngx_http_session_cache_redis_conf_t *rcf)
{
    RedisUrl url;
    std::string err = parse_redis_url(view(*source), &url);

    if (!err.empty()) {
        return conf_error(cf, err);
    }

    if (url.tls) {
        return conf_error(cf, "rediss:// (TLS) is not supported by this "
                              "version; use redis:// or unix:");
    }

    ngx_url_t u;

    if (url.unix_socket) {
        std::string s = "unix:" + url.path;
        ngx_memzero(&u, sizeof(ngx_url_t));
        u.url.data = reinterpret_cast<u_char *>(const_cast<char *>(s.c_str()));
        u.url.len = s.size();

        if (ngx_parse_url(cf->pool, &u) != NGX_OK || u.naddrs == 0) {
            return conf_error(cf, "invalid unix socket path \"" + url.path
                                  + "\"");
        }

    } else {
        err = resolve(cf, url.host, url.port, &u);
        if (!err.empty()) {
            return conf_error(cf, err);
        }
    }

    rcf->addr = &u.addrs[0];

    std::string hs;
    rcf->handshake_replies = 0;

    if (!url.password.empty()) {
        if (url.user.empty()) {
            resp_append(&hs, {"AUTH", url.password});
        } else {
            resp_append(&hs, {"AUTH", url.user, url.password});
        }
        rcf->handshake_replies++;
    }

    if (url.db != 0) {
        resp_append(&hs, {"SELECT", std::to_string(url.db)});
        rcf->handshake_replies++;
    }

    rcf->db = url.db;

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

static char *parse_postgres(ngx_conf_t *cf, ngx_str_t *source,
                            ngx_http_session_cache_pg_conf_t *pcf)
{
    PgConninfo ci;
    std::string err = parse_pg_conninfo(view(*source), &ci);

    if (!err.empty()) {
        return conf_error(cf, err);
    }

    const std::string *host = ci.get("host");

    if (host != nullptr && ci.get("hostaddr") == nullptr) {
        std::string addrs;
        int port = 5432;
        const std::string *p = ci.get("port");

        if (p != nullptr && p->find(',') == std::string::npos) {
            port = std::atoi(p->c_str());
            if (port <= 0 || port > 65535) {
                return conf_error(cf, "invalid port \"" + *p + "\"");
            }
        }

        bool first = true;
        for (const std::string &h : split_hosts(*host)) {
            if (!first) {
                addrs += ',';
            }
            first = false;

            if (is_socket_dir(h)) {
                continue;
            }

            ngx_url_t u;
            err = resolve(cf, h, port, &u);
            if (!err.empty()) {
                return conf_error(cf, err);
            }

            u_char text[NGX_SOCKADDR_STRLEN];
            size_t n = ngx_sock_ntop(u.addrs[0].sockaddr, u.addrs[0].socklen,
                                     text, NGX_SOCKADDR_STRLEN, 0);
            addrs.append(reinterpret_cast<char *>(text), n);
        }

        ci.set("hostaddr", addrs);
    }

    if (ci.get("application_name") == nullptr) {
        ci.set("application_name", "ngx_session_cache");
    }

    std::size_t n = ci.keywords.size();
    auto **kw = static_cast<const char **>(
        ngx_pcalloc(cf->pool, (n + 1) * sizeof(char *)));
    auto **vals = static_cast<const char **>(
        ngx_pcalloc(cf->pool, (n + 1) * sizeof(char *)));

    if (kw == nullptr || vals == nullptr) {
        return const_cast<char *>("out of memory");
    }

    for (std::size_t i = 0; i < n; i++) {
        ngx_str_t k, v;
        if (!copy_str(cf, ci.keywords[i], &k)
            || !copy_str(cf, ci.values[i], &v))
        {
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

}  // namespace session_cache

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
