/* libpq's socket under nginx's events: see pg_socket.h. */
#include "pg/pg_socket.h"

#include <sys/stat.h>

namespace session_cache {

bool PgSocket::wrap(PGconn *pg, ngx_log_t *log, void *data,
                    ngx_event_handler_pt handler)
{
    int fd = PQsocket(pg);

    if (fd < 0) {
        return false;
    }

    struct stat st;
    if (fstat(fd, &st) == -1) {
        return false;
    }

    ngx_connection_t *conn = ngx_get_connection(fd, log);
    if (conn == nullptr) {
        return false;
    }

    conn->data = data;
    conn->read->handler = handler;
    conn->write->handler = handler;
    conn->read->log = log;
    conn->write->log = log;
    conn->number = ngx_atomic_fetch_add(ngx_connection_counter, 1);

    c = conn;
    ino = st.st_ino;

    if (ngx_add_event(conn->read, NGX_READ_EVENT, NGX_LEVEL_EVENT) != NGX_OK
        || !want_write(true))
    {
        release();
        return false;
    }

    return true;
}

bool PgSocket::moved(PGconn *pg) const
{
    int         fd = PQsocket(pg);
    struct stat s;

    return fd >= 0
           && (c == nullptr || fd != c->fd || fstat(fd, &s) == -1
               || s.st_ino != ino);
}

void PgSocket::release()
{
    if (c == nullptr) {
        return;
    }

    if (c->read->timer_set) {
        ngx_del_timer(c->read);
    }

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    if (c->read->active || c->read->disabled) {
        ngx_del_event(c->read, NGX_READ_EVENT, NGX_CLOSE_EVENT);
    }

    if (c->write->active || c->write->disabled) {
        ngx_del_event(c->write, NGX_WRITE_EVENT, NGX_CLOSE_EVENT);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    c->read->closed = 1;
    c->write->closed = 1;

    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;
    c = nullptr;
}

bool PgSocket::want_write(bool on)
{
    ngx_event_t *wev = c->write;

    if (on && !wev->active) {
        return ngx_add_event(wev, NGX_WRITE_EVENT, NGX_LEVEL_EVENT) == NGX_OK;
    }

    if (!on && wev->active) {
        return ngx_del_event(wev, NGX_WRITE_EVENT, 0) == NGX_OK;
    }

    return true;
}

} // namespace session_cache
