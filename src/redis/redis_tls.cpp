#include "redis/redis_tls.h"

#include "redis/redis_url.h"

#include <string_view>

namespace session_cache::redis_tls {

#if (NGX_SSL)

static bool begin(ngx_connection_t *c, ngx_ssl_t *ssl, const ngx_str_t &name,
                  ngx_log_t *log, const char **error)
{
    /* nginx's SSL layer allocates from the connection's pool */
    if (c->pool == nullptr) {
        c->pool = ngx_create_pool(512, log);
        if (c->pool == nullptr) {
            *error = "out of memory";
            return false;
        }
    }

    if (ngx_ssl_create_connection(ssl, c, NGX_SSL_BUFFER | NGX_SSL_CLIENT)
        != NGX_OK)
    {
        *error = "cannot start TLS";
        return false;
    }

    /* never wait for the peer on close: close() must not block */
    c->ssl->no_wait_shutdown = 1;
    c->ssl->no_send_shutdown = 1;

    std::string_view host(reinterpret_cast<const char *>(name.data), name.len);

    /* SNI names a host, never an address; name is NUL-terminated (an
     * ngx_str_t the configuration copied, or a std::string's) */
    if (!host.empty() && !is_ip_literal(host)) {
        SSL_set_tlsext_host_name(c->ssl->connection,
                                 reinterpret_cast<char *>(name.data));
    }

    return true;
}

ngx_int_t handshake(ngx_connection_t *c, ngx_ssl_t *ssl, const ngx_str_t &name,
                    ngx_log_t *log, ngx_connection_handler_pt on_done,
                    const char **error)
{
    if (!begin(c, ssl, name, log, error)) {
        return NGX_ERROR;
    }

    if (ngx_ssl_handshake(c) == NGX_AGAIN) {
        c->ssl->handler = on_done;
        return NGX_AGAIN;
    }

    return NGX_OK;
}

const char *check(ngx_connection_t *c, const ngx_str_t &name, bool verify,
                  char *buf, std::size_t len)
{
    if (!c->ssl || !c->ssl->handshaked) {
        return "TLS handshake failed";
    }

    if (!verify) {
        return nullptr;
    }

    long rv = SSL_get_verify_result(c->ssl->connection);

    if (rv != X509_V_OK) {
        *ngx_snprintf(reinterpret_cast<u_char *>(buf), len - 1,
                      "TLS certificate verify failed: %s",
                      X509_verify_cert_error_string(rv)) = '\0';
        return buf;
    }

    std::string_view host(reinterpret_cast<const char *>(name.data), name.len);

    if (is_ip_literal(host)) {
        /* an address a Cluster or a Sentinel gave: the certificate must
         * list it among its IP addresses */
        X509 *cert = SSL_get_peer_certificate(c->ssl->connection);
        int   ok = cert != nullptr
                 && X509_check_ip_asc(cert, std::string(host).c_str(), 0) == 1;
        X509_free(cert);

        return ok ? nullptr : "TLS certificate does not match the IP address";
    }

    ngx_str_t n = name;

    if (ngx_ssl_check_host(c, &n) != NGX_OK) {
        return "TLS certificate does not match the host name";
    }

    return nullptr;
}

#endif

void close(ngx_connection_t *c)
{
    if (c == nullptr) {
        return;
    }

#if (NGX_SSL)
    if (c->ssl) {
        /* no_wait/no_send_shutdown: frees the SSL object at once */
        ngx_ssl_shutdown(c);
    }
#endif

    ngx_pool_t *pool = c->pool;
    ngx_close_connection(c);

    if (pool) {
        ngx_destroy_pool(pool);
    }
}

} // namespace session_cache::redis_tls
