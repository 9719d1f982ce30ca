/*
 * Reading a Redis connection on nginx's event loop, as nginx's own
 * readers do: what the socket holds, chunk by chunk, up to a budget of
 * bytes; then the read event is posted for the next turn of the event
 * loop, after its timers (a deadline fires even while a server keeps
 * sending). Used by the pool's connections and the listener's links.
 */
#pragma once

#include "nginx_cpp.h"

#include <cstddef>

namespace session_cache {

enum class ReadEnd {
    Drained, /* the socket is empty: its read event is armed again */
    Spent,   /* the budget is: the read event is posted for the next turn */
    Gone,    /* the connection failed: fail() or feed() has said why */
};

/*
 * feed(const char *buf, std::size_t n): the bytes read; false when the
 * connection is gone. fail(const char *why): the socket failed ("connection
 * closed by redis", ...). Neither c nor anything else is touched after
 * either has ended the connection.
 */
template <std::size_t Chunk, class Feed, class Fail>
ReadEnd read_budget(ngx_connection_t *c, std::size_t budget, Feed &&feed,
                    Fail &&fail)
{
    char buf[Chunk];

    while (budget > 0) {
        ssize_t n = c->recv(c, reinterpret_cast<u_char *>(buf), sizeof(buf));

        if (n == NGX_AGAIN) {
            if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
                fail("cannot wait for the socket");
                return ReadEnd::Gone;
            }
            return ReadEnd::Drained;
        }

        if (n == 0 || n == NGX_ERROR) {
            fail(n == 0 ? "connection closed by redis" : "recv failed");
            return ReadEnd::Gone;
        }

        budget -= ngx_min(budget, static_cast<std::size_t>(n));

        if (!feed(static_cast<const char *>(buf), static_cast<std::size_t>(n)))
        {
            return ReadEnd::Gone;
        }
    }

    ngx_post_event(c->read, &ngx_posted_next_events);
    return ReadEnd::Spent;
}

} // namespace session_cache
