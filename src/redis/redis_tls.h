/*
 * TLS on a connection to a Redis server (rediss://, and the Sentinel,
 * Cluster and listener connections that follow it), through nginx's own
 * SSL layer as proxy_ssl uses it. What every owner of such a connection
 * shares: starting TLS on a connected socket (its pool, the SSL object,
 * SNI), checking the outcome of the handshake (the chain, and the name:
 * a host name, or an IP literal checked against the certificate's IP
 * addresses), and closing without waiting for the peer.
 *
 * The owner starts the handshake with handshake() and, once it is over
 * (at once, or in its on_done handler), calls check(); c->data stays the
 * owner's.
 */
#pragma once

#include "nginx_cpp.h"

#include <cstddef>

namespace session_cache::redis_tls {

#if (NGX_SSL)

/*
 * Start TLS on c, connected: a pool for nginx's SSL layer, the SSL
 * object, SNI when name is a host name (never an IP), and the handshake.
 * NGX_OK: it is over already (call check() now); NGX_AGAIN: on_done(c)
 * is called when it is over; NGX_ERROR: it could not start, *error
 * (static text).
 */
ngx_int_t handshake(ngx_connection_t *c, ngx_ssl_t *ssl, const ngx_str_t &name,
                    ngx_log_t *log, ngx_connection_handler_pt on_done,
                    const char **error);

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
