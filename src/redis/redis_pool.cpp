#include "redis/redis_pool.h"

#include "redis/resp.h"

#include <cstring>
#include <new>

namespace session_cache {

struct RedisConn : PoolConn {
    RedisPool             *pool;
    ngx_peer_connection_t  peer;
    redisReader           *reader = nullptr;
    std::string            out;
    std::size_t            out_pos = 0;
    ngx_uint_t             handshake_left = 0;
    bool                   connected = false;
    bool                   handshaking = false;
};

/*
 * Limits on what a Redis server can make a worker hold. The module asks
 * for strings (GET), status replies (SET, PING) and small integers; INFO,
 * the largest answer it reads, is a few KiB. hiredis would otherwise
 * allocate whatever a hostile or broken server announces (*300000000
 * reserves 2.4 GB at once) and buffer a bulk string of any length.
 */
static constexpr int kMaxArray = 64;
static constexpr std::size_t kMaxBuffered = 1024 * 1024;

static redisReplyObjectFunctions capped;
static void *(*create_array)(const redisReadTask *, int);

static void *capped_array(const redisReadTask *task, int elements)
{
    if (elements < 0 || elements > kMaxArray) {
        return nullptr;    /* the reader fails: "protocol error" */
    }
    return create_array(task, elements);
}

static redisReader *reader_create()
{
    redisReader *r = redisReaderCreate();

    if (r == nullptr) {
        return nullptr;
    }

    if (create_array == nullptr) {
        capped = *r->fn;
        create_array = capped.createArray;
        capped.createArray = capped_array;
    }

    r->fn = &capped;
    return r;
}

RedisPool::RedisPool(ngx_cycle_t *cycle,
                     const ngx_http_session_cache_redis_conf_t *conf)
    : Pool(cycle, &conf->backend, "redis", Backend::Redis), conf_(conf)
{
}

RedisPool::~RedisPool()
{
    clear();
}

/* Finished jobs kept for reuse (a worker is one thread), up to a bound. */
static void *spare_jobs = nullptr;
static ngx_uint_t nspare_jobs = 0;
static const ngx_uint_t kMaxSpareJobs = 1024;

void *RedisJob::operator new(std::size_t size)
{
    if (size == sizeof(RedisJob) && spare_jobs != nullptr) {
        void *p = spare_jobs;
        spare_jobs = *static_cast<void **>(p);
        nspare_jobs--;
        return p;
    }

    return ::operator new(size);
}

void RedisJob::operator delete(void *p) noexcept
{
    if (nspare_jobs >= kMaxSpareJobs) {
        ::operator delete(p);
        return;
    }

    *static_cast<void **>(p) = spare_jobs;
    spare_jobs = p;
    nspare_jobs++;
}

void RedisJob::set_command(std::initializer_list<std::string_view> args)
{
    len_ = resp_length(args);

    if (len_ <= sizeof(inline_)) {
        resp_write(inline_, args);
    } else {
        heap_.clear();
        resp_append(&heap_, args);
    }
}

void RedisJob::set_raw(std::string_view resp)
{
    len_ = resp.size();

    if (len_ <= sizeof(inline_)) {
        ngx_memcpy(inline_, resp.data(), len_);
    } else {
        heap_.assign(resp.data(), resp.size());
    }
}

RedisJob *RedisPool::submit(std::initializer_list<std::string_view> command,
                            RedisDone done, void *data, const char **error)
{
    auto *job = new RedisJob();
    job->set_command(command);
    job->done = done;
    job->data = data;

    return start(job, error) ? job : nullptr;
}

RedisJob *RedisPool::submit_probe(std::string command, RedisDone done,
                                  void *data, const char **error)
{
    auto *job = new RedisJob();
    job->set_raw(command);
    job->done = done;
    job->data = data;
    job->probe = true;

    return start(job, error) ? job : nullptr;
}

/* The address in use did not answer: the next connection tries the next
 * address the host name resolved to, as nginx's upstreams would. */
void RedisPool::unreachable()
{
    next_addr_ = (next_addr_ + 1) % conf_->naddrs;
}

bool RedisPool::on_wire(const RedisConn *rc) const
{
    return rc->connected;
}

/* Commands that are written but not yet sent go out in one send. */
bool RedisPool::batching(const RedisConn *rc) const
{
    return rc->connected && rc->out_pos < rc->out.size();
}

RedisConn *RedisPool::open(const char **error)
{
    auto *rc = new RedisConn();
    rc->pool = this;
    rc->reader = reader_create();

    if (rc->reader == nullptr) {
        delete rc;
        *error = "out of memory";
        return nullptr;
    }

    ngx_addr_t *addr = &conf_->addrs[next_addr_];
    ngx_peer_connection_t *pc = &rc->peer;
    pc->sockaddr = addr->sockaddr;
    pc->socklen = addr->socklen;
    pc->name = &addr->name;
    pc->get = ngx_event_get_peer;
    pc->log = &log_;
    pc->log_error = NGX_ERROR_ERR;

    ngx_int_t rv = ngx_event_connect_peer(pc);

    if (rv != NGX_OK && rv != NGX_AGAIN) {
        /* nginx has logged the cause, e.g. "(111: Connection refused)" */
        unreachable();
        redisReaderFree(rc->reader);
        delete rc;
        *error = "connect failed";
        return nullptr;
    }

    ngx_connection_t *c = pc->connection;
    c->data = rc;
    c->read->handler = on_read;
    c->write->handler = on_write;

    add(rc);

    /* even when already connected (a unix socket), carry on from the
     * event loop: nothing here may fail a connection under submit() */
    ngx_add_timer(c->write, conf_->backend.connect_timeout);

    if (rv == NGX_OK) {
        ngx_post_event(c->write, &ngx_posted_events);
    }

    return rc;
}

/*
 * TCP is up. For rediss://, the TLS handshake comes first; the connect
 * timer keeps running through it.
 */
void RedisPool::connected(RedisConn *rc)
{
#if (NGX_SSL)
    if (conf_->ssl) {
        start_tls(rc);
        return;
    }
#endif

    ready(rc);
}

#if (NGX_SSL)

void RedisPool::start_tls(RedisConn *rc)
{
    ngx_connection_t *c = rc->peer.connection;

    rc->handshaking = true;

    /* nginx's SSL layer allocates from the connection's pool */
    c->pool = ngx_create_pool(512, &log_);
    if (c->pool == nullptr) {
        fail(rc, "out of memory");
        return;
    }

    if (ngx_ssl_create_connection(conf_->ssl, c,
                                  NGX_SSL_BUFFER | NGX_SSL_CLIENT)
        != NGX_OK)
    {
        fail(rc, "cannot start TLS");
        return;
    }

    /* never wait for the peer on close: destroy() must not block */
    c->ssl->no_wait_shutdown = 1;
    c->ssl->no_send_shutdown = 1;

    const ngx_str_t &name = conf_->tls_name;
    if (name.len && ngx_inet_addr(name.data, name.len) == INADDR_NONE
        && name.data[0] != '[' && ngx_strlchr(name.data, name.data + name.len,
                                              ':') == nullptr)
    {
        SSL_set_tlsext_host_name(c->ssl->connection,
                                 reinterpret_cast<char *>(name.data));
    }

    ngx_int_t rv = ngx_ssl_handshake(c);

    if (rv == NGX_AGAIN) {
        c->ssl->handler = on_handshake;
        return;
    }

    on_handshake(c);
}

void RedisPool::on_handshake(ngx_connection_t *c)
{
    auto *rc = static_cast<RedisConn *>(c->data);
    RedisPool *pool = rc->pool;

    c->read->handler = on_read;
    c->write->handler = on_write;
    rc->handshaking = false;

    if (c->write->timedout || c->read->timedout) {
        c->write->timedout = 0;
        c->read->timedout = 0;
        pool->fail(rc, pool->connect_timeout_text_);
        return;
    }

    if (!c->ssl || !c->ssl->handshaked) {
        pool->fail(rc, "TLS handshake failed");
        return;
    }

    if (pool->conf_->tls_verify) {
        long rv = SSL_get_verify_result(c->ssl->connection);

        if (rv != X509_V_OK) {
            std::string text = "TLS certificate verify failed: ";
            text += X509_verify_cert_error_string(rv);
            pool->fail(rc, text.c_str());
            return;
        }

        ngx_str_t name = pool->conf_->tls_name;

        if (ngx_ssl_check_host(c, &name) != NGX_OK) {
            pool->fail(rc, "TLS certificate does not match the host name");
            return;
        }
    }

    pool->ready(rc);
}

#endif

/* Connected (and through TLS): AUTH, SELECT, then the job's command. */
void RedisPool::ready(RedisConn *rc)
{
    ngx_connection_t *c = rc->peer.connection;

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    rc->connected = true;
    rc->handshake_left = conf_->handshake_replies;
    rc->out.assign(reinterpret_cast<char *>(conf_->handshake.data),
                   conf_->handshake.len);

    /* jobs that came while connecting, in order */
    each_job(rc, [rc](RedisJob *job) { rc->out += job->command(); });

    flush(rc);
}

void RedisPool::assign(RedisConn *rc, RedisJob *job)
{
    if (rc->connected) {
        rc->out += job->command();
        /* sent from the posted write event, never from within submit() */
        ngx_post_event(rc->peer.connection->write, &ngx_posted_events);
    }
}

void RedisPool::on_write(ngx_event_t *ev)
{
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    auto *rc = static_cast<RedisConn *>(c->data);
    RedisPool *pool = rc->pool;

    try {
        if (ev->timedout) {
            ev->timedout = 0;
            pool->unreachable();
            pool->fail(rc, pool->connect_timeout_text_);
            return;
        }

        if (rc->handshaking) {
            return;
        }

        if (!rc->connected) {
            int err = 0;
            socklen_t len = sizeof(int);

            if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR,
                           reinterpret_cast<void *>(&err), &len) == -1)
            {
                err = ngx_socket_errno;
            }

            if (err) {
                pool->unreachable();
                u_char text[NGX_MAX_ERROR_STR];
                u_char *p = ngx_cpymem(text, "connect() failed: ", 18);
                *ngx_strerror(err, p, sizeof(text) - 19) = '\0';
                pool->fail(rc, reinterpret_cast<char *>(text));
                return;
            }

            pool->connected(rc);
            return;
        }

        pool->flush(rc);

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, &pool->log_, 0,
                      "session_cache: redis write: %s", e.what());
        pool->fail(rc, "internal error");
    }
}

void RedisPool::flush(RedisConn *rc)
{
    ngx_connection_t *c = rc->peer.connection;

    while (rc->out_pos < rc->out.size()) {
        ssize_t n = c->send(c,
                            reinterpret_cast<u_char *>(&rc->out[rc->out_pos]),
                            rc->out.size() - rc->out_pos);

        if (n == NGX_AGAIN) {
            if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
                fail(rc, "cannot wait for the socket");
            }
            return;
        }

        if (n == NGX_ERROR) {
            fail(rc, "send failed");
            return;
        }

        rc->out_pos += n;
    }

    rc->out.clear();
    rc->out_pos = 0;
}

void RedisPool::on_read(ngx_event_t *ev)
{
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    auto *rc = static_cast<RedisConn *>(c->data);
    RedisPool *pool = rc->pool;

    try {
        if (rc->handshaking) {
            return;
        }

        if (!rc->connected) {
            /* an error or a hang-up while connecting: on_write reads it */
            on_write(c->write);
            return;
        }

        pool->read(rc);

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, &pool->log_, 0,
                      "session_cache: redis read: %s", e.what());
        pool->fail(rc, "internal error");
    }
}

void RedisPool::read(RedisConn *rc)
{
    ngx_connection_t *c = rc->peer.connection;
    u_char buf[4096];

    for (;;) {
        ssize_t n = c->recv(c, buf, sizeof(buf));

        if (n == NGX_AGAIN) {
            if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
                fail(rc, "cannot wait for the socket");
                return;
            }
            break;
        }

        if (n == 0) {
            fail(rc, "connection closed by redis");
            return;
        }

        if (n == NGX_ERROR) {
            fail(rc, "recv failed");
            return;
        }

        if (redisReaderFeed(rc->reader, reinterpret_cast<char *>(buf), n)
            != REDIS_OK)
        {
            fail(rc, "protocol error");
            return;
        }

        if (rc->reader->len - rc->reader->pos > kMaxBuffered) {
            fail(rc, "reply too large");
            return;
        }

        for (;;) {
            void *p = nullptr;

            if (redisReaderGetReply(rc->reader, &p) != REDIS_OK) {
                fail(rc, "protocol error");
                return;
            }

            if (p == nullptr) {
                break;
            }

            auto *reply = static_cast<redisReply *>(p);

            if (rc->handshake_left) {
                rc->handshake_left--;

                if (reply->type == REDIS_REPLY_ERROR) {
                    /* e.g. "WRONGPASS invalid username-password pair":
                     * the peer's words, never the password */
                    *ngx_snprintf(reinterpret_cast<u_char *>(refused_),
                                  sizeof(refused_) - 1,
                                  "AUTH or SELECT refused: %*s",
                                  ngx_min(reply->len, (size_t) 200),
                                  reply->str) = '\0';
                    freeReplyObject(reply);
                    fail(rc, refused_);
                    return;
                }

                freeReplyObject(reply);
                continue;
            }

            /* replies come in the order the commands went out */
            RedisJob *job = front(rc);

            if (job == nullptr) {
                freeReplyObject(reply);
                fail(rc, "unexpected reply");
                return;
            }

            /* the callback may submit more work to this pool; it never
             * destroys rc (see assign) */
            finish(job, reply, nullptr);
            freeReplyObject(reply);
        }
    }

    dispatch();
}

void RedisPool::destroy(RedisConn *rc)
{
    remove(rc);

    if (rc->peer.connection) {
#if (NGX_SSL)
        if (rc->peer.connection->ssl) {
            /* no_wait/no_send_shutdown: frees the SSL object at once */
            ngx_ssl_shutdown(rc->peer.connection);
        }
#endif
        ngx_pool_t *pool = rc->peer.connection->pool;
        ngx_close_connection(rc->peer.connection);
        rc->peer.connection = nullptr;

        if (pool) {
            ngx_destroy_pool(pool);
        }
    }

    redisReaderFree(rc->reader);
    delete rc;
}

}  // namespace session_cache
