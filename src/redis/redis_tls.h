/*
 * TLS on a connection to a Redis server (rediss://, and the Sentinel,
 * Cluster and listener connections that follow it), through nginx's own
 * SSL layer as proxy_ssl uses it. What every owner of such a connection
 * shares: starting TLS on a connected socket (its pool, the SSL object,
 * SNI), checking the outcome of the handshake (the chain, and the name:
 * a host name, or an IP literal checked against the certificate's IP
 * addresses), and closing without waiting for the peer.
 *
 * The handshake itself stays with the owner: it calls ngx_ssl_handshake()
 * and, on NGX_AGAIN, sets c->ssl->handler to its own function (c->data is
 * the owner's), as the pool does.
 */
#pragma once

#include "nginx_cpp.h"

#include <cstddef>

namespace session_cache::redis_tls {

#if (NGX_SSL)

/* Start TLS on c, connected: a pool for nginx's SSL layer, the SSL
 * object, SNI when name is a host name (never an IP). false: *error
 * (static text). */
bool begin(ngx_connection_t *c, ngx_ssl_t *ssl, const ngx_str_t &name,
           ngx_log_t *log, const char **error);

/*
 * After the handshake (c->ssl->handler called, or ngx_ssl_handshake()
 * returned other than NGX_AGAIN): nullptr when the connection may be used,
 * else why not, in buf (len bytes). With verify, the chain must check out
 * and the certificate must name name: a host name (X509_check_host,
 * through nginx), or an IP literal (X509_check_ip_asc).
 */
const char *check(ngx_connection_t *c, const ngx_str_t &name, bool verify,
                  char *buf, std::size_t len);

#endif

/* Close c and free its TLS state and pool (begin()'s), if any; c may be
 * nullptr. Never waits for the peer. */
void close(ngx_connection_t *c);

} // namespace session_cache::redis_tls
