/*
 * Per-worker pool of non-blocking Redis connections, driven by nginx's
 * event loop. nginx owns the sockets (ngx_event_connect_peer, and its SSL
 * layer for rediss://); hiredis is used only to parse replies
 * (redisReader). Commands are pipelined: up to kPipelineDepth in flight
 * per connection, and those that are ready in one event loop turn go out
 * in one send; requests beyond that wait in a queue until a connection
 * has room or their timeout passes.
 */
#pragma once

#include "pool/pool.h"
#include "redis/resp.h"

#include <initializer_list>
#include <string>
#include <string_view>

namespace session_cache {

struct RedisConn;

/*
 * A command and who waits for its reply. Jobs are recycled through a
 * per-worker free list and a GET or a typical SET fits in the job itself;
 * the reply is read into the connection's own buffer (ReplyReader): the
 * hit path allocates nothing (bench/callgrind.pl counts it).
 */
struct RedisJob : PoolJob<RedisConn, RedisReply> {
    void set_command(std::initializer_list<std::string_view> args);
    void set_raw(std::string_view resp); /* a command already in RESP */

    std::string_view command() const
    {
        return len_ <= sizeof(inline_) ? std::string_view(inline_, len_)
                                       : std::string_view(heap_);
    }

    static void *operator new(std::size_t size);
    static void  operator delete(void *p) noexcept;

    RedisCmd kind = RedisCmd::Other; /* the reply shape it expects */

    /* Redis Cluster (redis/cluster.h): followed a MOVED or ASK already
     * (at most one redirection per command); asking: ASKING goes before
     * the command, and its reply comes first */
    bool redirected = false;
    bool asking = false;

private:
    char        inline_[176]; /* RESP, when it fits */
    std::size_t len_ = 0;
    std::string heap_; /* RESP, when it does not */
};

using RedisDone = RedisJob::Done;

class RedisPool : public Pool<RedisPool, RedisConn, RedisJob> {
public:
    RedisPool(ngx_cycle_t                               *cycle,
              const ngx_http_session_cache_redis_conf_t *conf);
    ~RedisPool();

    /*
     * Send command (RESP). Returns the job, whose done() is called exactly
     * once later unless cancel()ed first; or nullptr and *error when no
     * connection could be opened. done may be nullptr: nobody waits.
     */
    RedisJob *submit(std::initializer_list<std::string_view> command,
                     RedisDone done, void *data, const char **error);

    /* as submit, for the health probe: around the breaker */
    RedisJob *submit_probe(std::string command, RedisDone done, void *data,
                           const char **error);

    /*
     * Redis Cluster (redis/cluster.h). A node's pool hands every error
     * reply to redirect() before the job's done(); true: redirect() took
     * the job (after release()), to resume() it on another node's pool or
     * end() it. The node pools' figures go to observe() instead of the
     * health document.
     */
    using Redirect = bool (*)(void *data, RedisPool *from, RedisJob *job,
                              std::string_view error);
    void set_cluster(Redirect redirect, void (*observe)(void *), void *data);
    void release(RedisJob *job);
    bool resume(RedisJob *job, const char **error);
    static void end(RedisJob *job, const char *error);

    /* the pool a job runs on */
    static RedisPool *of(RedisJob *job);

    /* Redis Cluster: the node's host name now resolves to another address
     * (its conf.addrs, changed by the caller): the connections to the old
     * one go (their jobs fail with why), the next one goes to the new
     * address at once (not "unreachable" any more). */
    void address_changed(const char *why);

private:
    friend class Pool<RedisPool, RedisConn, RedisJob>;

    RedisJob   *probe(std::string_view command, RedisDone done, void *data,
                      const char **error, bool recovery);
    bool        probe_recovery();
    static void recovery_answered(void *data, const RedisReply *reply,
                                  const char *error);

    RedisConn *open(const char **error);
    void       assign(RedisConn *rc, RedisJob *job);
    bool       on_wire(const RedisConn *rc) const;
    bool       batching(const RedisConn *rc) const;
    ngx_uint_t depth() const { return kPipelineDepth; }
    void       destroy(RedisConn *rc);

    void        unreachable();
    void        conn_failed(RedisConn *rc, const char *error);
    static void master_changed(void *data); /* sentinel:// */
    bool not_master(RedisConn *rc, RedisCmd kind, const RedisReply &reply);
    void drive(RedisConn *rc, ngx_event_t *ev);
    bool connect_done(RedisConn *rc);
    void start_session(RedisConn *rc);
    void flush(RedisConn *rc);
    void read(RedisConn *rc);
    bool replies(RedisConn *rc);
#if (NGX_SSL)
    void        start_tls(RedisConn *rc);
    void        tls_done(RedisConn *rc);
    static void on_handshake(ngx_connection_t *c);
#endif

    static void on_event(ngx_event_t *ev);
    template <class Step>
    static void guarded(RedisConn *rc, Step step);

    /* Redis answers in order; a deeper pipeline only delays the requests
     * at its tail behind a slow one */
    static constexpr ngx_uint_t kPipelineDepth = 32;

    /* Bytes read in one read event before yielding to the event loop (and
     * its timers): a server that keeps sending cannot hold the worker. */
    static constexpr std::size_t kReadBudget = 64 * 1024;
    static constexpr std::size_t kReadChunk = 4096; /* one recv() */

    static_assert(kReadBudget % kReadChunk == 0,
                  "a read event ends on a whole chunk");

    static constexpr ngx_uint_t kMaxHandshake = 4;

    const ngx_http_session_cache_redis_conf_t *conf_;
    RedisCmd   handshake_[kMaxHandshake]; /* AUTH, SELECT: in order */
    ngx_uint_t nhandshake_ = 0;
    char       refused_[128]; /* "AUTH refused: <code>", while fail()
                                   * runs */
    ngx_uint_t next_addr_ = 0;
    bool       switching_ = false; /* master_changed() closing all */

    Redirect redirect_ = nullptr;
    void    *cluster_ = nullptr;
};

} // namespace session_cache
