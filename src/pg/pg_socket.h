/*
 * libpq's socket under nginx's events, for the pool and the listener
 * alike. libpq owns the fd: the nginx connection around it is released
 * with ngx_free_connection, never closed, and followed to a new socket
 * when libpq moves on (next host or address, SSL or GSS fallback).
 */
#pragma once

#include "nginx_cpp.h"

#include <sys/types.h>

#include <libpq-fe.h>

namespace session_cache {

struct PgSocket {
    ngx_connection_t *c = nullptr;
    ino_t             ino = 0; /* identity of the socket c wraps */

    /* Put libpq's current socket under nginx's events: read always, level
     * triggered (libpq may leave bytes in the socket), write until
     * want_write(false) (connecting: wait until it is writable). data
     * and handler are the connection's. false: nothing is left wrapped. */
    bool wrap(PGconn *pg, ngx_log_t *log, void *data,
              ngx_event_handler_pt handler);

    /* libpq is on another socket than the one wrapped (or none is), even
     * one that reuses the fd number. */
    bool moved(PGconn *pg) const;

    /* Forget the socket without closing it: it is libpq's. */
    void release();

    /* Write events while libpq has something to send. */
    bool want_write(bool on);
};

} // namespace session_cache
