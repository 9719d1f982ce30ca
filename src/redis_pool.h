/*
 * Per-worker pool of non-blocking Redis connections, driven by nginx's
 * event loop. nginx owns the sockets (ngx_event_connect_peer); hiredis is
 * used only to parse replies (redisReader). One command in flight per
 * connection; requests beyond the pool wait in a queue until a connection
 * frees or their timeout passes.
 */
#pragma once

#include "nginx.h"

#include <string>

#include <hiredis/hiredis.h>

namespace session_cache {

class RedisPool;
struct RedisConn;

/*
 * Completion: reply (owned by the pool, valid during the call only) or
 * nullptr and an error text naming the cause.
 */
using RedisDone = void (*)(void *data, const redisReply *reply,
                           const char *error);

struct RedisJob {
    RedisPool   *pool;
    std::string  command;      /* RESP */
    RedisDone    done;         /* nullptr: nobody waits for the answer */
    void        *data;
    ngx_event_t  timer;
    ngx_queue_t  queue;        /* in the pool's wait queue */
    RedisConn   *conn;         /* the connection carrying it, if any */
    bool         waiting;
};

class RedisPool {
public:
    RedisPool(ngx_cycle_t *cycle,
              const ngx_http_session_cache_redis_conf_t *conf);
    ~RedisPool();

    RedisPool(const RedisPool &) = delete;
    RedisPool &operator=(const RedisPool &) = delete;

    /*
     * Send command. Returns the job, whose done() is called exactly once
     * later (never from within submit), unless cancel()ed first. Returns
     * nullptr when the command cannot even start (no connection could be
     * opened); then *error says why and done() is never called.
     */
    RedisJob *submit(std::string command, RedisDone done, void *data,
                     const char **error);

    /* The caller went away: done() will not be called. */
    void cancel(RedisJob *job);

    ngx_uint_t size() const { return nconns_; }
    ngx_uint_t max() const { return conf_->backend.pool; }
    ngx_uint_t pending() const { return npending_; }
    ngx_uint_t available() const;

    /* event handlers */
    static void on_read(ngx_event_t *ev);
    static void on_write(ngx_event_t *ev);
    static void on_job_timeout(ngx_event_t *ev);

private:
    RedisConn *open(const char **error);
    void assign(RedisConn *rc, RedisJob *job);
    void connected(RedisConn *rc);
    void ready(RedisConn *rc);
#if (NGX_SSL)
    void start_tls(RedisConn *rc);
    static void on_handshake(ngx_connection_t *c);
#endif
    void flush(RedisConn *rc);
    void read(RedisConn *rc);
    void fail(RedisConn *rc, const char *error);
    void destroy(RedisConn *rc);
    void finish(RedisJob *job, const redisReply *reply, const char *error);
    void dispatch();
    RedisConn *free_conn();

    static u_char *log_context(ngx_log_t *log, u_char *buf, size_t len);

    const ngx_http_session_cache_redis_conf_t *conf_;
    ngx_log_t    log_;
    ngx_queue_t  conns_;
    ngx_queue_t  waiting_;
    ngx_uint_t   nconns_ = 0;
    ngx_uint_t   npending_ = 0;
    char         timeout_text_[64];
    char         connect_timeout_text_[64];
};

}  // namespace session_cache
