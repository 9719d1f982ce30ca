#include "redis/redis_pool.h"

#include "guarded.h"
#include "redis/read_budget.h"
#include "redis/redis_tls.h"
#include "redis/resp.h"
#include "redis/sentinel.h"
#include "redis/sentinel_logic.h"

#include <cstring>
#include <new>

namespace session_cache {

static const char kNoMaster[] = "no redis master known yet (sentinel)";

/*
 * A connection is in one state at a time, named after what it waits for;
 * drive() is the one place that acts on it.
 *
 *   Connecting -> TlsHandshake -> Handshake -> Ready
 *
 * TlsHandshake for rediss:// only, Handshake only when AUTH or SELECT is
 * sent: each state may lead to any later one.
 *
 * Any failure: fail(), which ends every job on it and destroys it.
 */
enum class RedisState : unsigned char {
    Connecting,   /* TCP connect() in progress: the socket's writability */
    TlsHandshake, /* rediss://: nginx's SSL layer, until on_handshake */
    Handshake,    /* AUTH/SELECT sent: their replies (jobs may follow) */
    Ready,        /* jobs, and their replies in order */
};

struct RedisConn : PoolConn {
    RedisPool            *pool;
    RedisState            state = RedisState::Connecting;
    ngx_peer_connection_t peer;
    ReplyReader           reader;
    std::string           out; /* to send: commands in RESP */
    std::size_t           out_pos = 0;
    ngx_uint_t            out_cmds = 0;
    ngx_uint_t            handshake_next = 0; /* Handshake: which reply */
};

/* What the connection is doing, for error lines: "... while <action>". */
static const char *action(RedisState state)
{
    switch (state) {
    case RedisState::Connecting:
        return "connecting to redis";
    case RedisState::TlsHandshake:
        return "performing the TLS handshake with redis";
    case RedisState::Handshake:
        return "authenticating to redis";
    case RedisState::Ready:
        break;
    }

    return "waiting for redis";
}

static void set_state(RedisConn *rc, RedisState state)
{
    rc->state = state;
    rc->log.action = const_cast<char *>(action(state));
}

RedisPool::RedisPool(ngx_cycle_t                               *cycle,
                     const ngx_http_session_cache_redis_conf_t *conf)
    : Pool(cycle, &conf->backend, "redis", Backend::Redis), conf_(conf)
{
    /* the handshake conf.cpp wrote (AUTH, SELECT), command by command:
     * which reply answers what */
    std::string_view hs(reinterpret_cast<const char *>(conf->handshake.data),
                        conf->handshake.len);

    while (!hs.empty() && nhandshake_ < kMaxHandshake) {
        std::size_t size;
        handshake_[nhandshake_++] = resp_first_command(hs, &size);
        if (size == 0) {
            break;
        }
        hs.remove_prefix(size);
    }

    sentinel::observe(master_changed, this);
}

RedisPool::~RedisPool()
{
    sentinel::unobserve(this);
    clear();
}

/*
 * sentinel://: another master was confirmed. Every connection goes (to
 * the old master: its jobs fail and go to Postgres); waiting jobs get
 * connections to the new one.
 */
void RedisPool::master_changed(void *data)
{
    auto *pool = static_cast<RedisPool *>(data);

    pool->switching_ = true;
    pool->fail_all("the redis master changed");
    pool->switching_ = false;
}

/* sentinel://: a connection that fails may be the master's loss. */
void RedisPool::conn_failed(RedisConn *, const char *error)
{
    if (conf_->sentinel != nullptr && !switching_) {
        sentinel::suspect(error);
    }
}

/*
 * sentinel://: a reply by which the server says it is not the master
 * (READONLY, LOADING, MASTERDOWN; ROLE in the handshake): the connection
 * goes and the sentinels are asked again. true: rc has failed.
 */
bool RedisPool::not_master(RedisConn *rc, RedisCmd kind,
                           const RedisReply &reply)
{
    if (conf_->sentinel == nullptr) {
        return false;
    }

    std::string_view text;

    if (kind == RedisCmd::Role && reply.type == REDIS_REPLY_ARRAY) {
        if (sentinel::is_master_role(reply.part[0])) {
            return false;
        }
        text = reply.part[0].substr(0, 16);

    } else if (reply.type == REDIS_REPLY_ERROR
               && sentinel::is_refusal(std::string_view(reply.str, reply.len)))
    {
        text = std::string_view(reply.str, reply.len);

    } else {
        return false;
    }

    *ngx_snprintf(reinterpret_cast<u_char *>(refused_), sizeof(refused_) - 1,
                  "not the master (%s: %*s)", resp_command_name(kind),
                  text.size(), text.data()) = '\0';
    fail(rc, refused_); /* conn_failed() asks the sentinels */
    return true;
}

/* Finished jobs kept for reuse (a worker is one thread), up to a bound. */
static void            *spare_jobs = nullptr;
static ngx_uint_t       nspare_jobs = 0;
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
    kind = resp_command_kind(*args.begin());
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
    std::size_t size;

    kind = resp_first_command(resp, &size);
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
    /* sentinel://, before the first answer: not Redis's failure, the
     * breaker does not count it (a new worker would open it at once) */
    if (conf_->sentinel != nullptr && sentinel::master() == nullptr) {
        *error = kNoMaster;
        return nullptr;
    }

    auto *job = new RedisJob();
    job->set_command(command);
    job->done = done;
    job->data = data;

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, &log_, 0,
                   "session_cache: redis job %p for %p: %s", job, data,
                   resp_command_name(job->kind));

    return start(job, error) ? job : nullptr;
}

RedisJob *RedisPool::submit_probe(std::string command, RedisDone done,
                                  void *data, const char **error)
{
    return probe(command, done, data, error, false);
}

RedisJob *RedisPool::probe(std::string_view command, RedisDone done, void *data,
                           const char **error, bool recovery)
{
    if (conf_->sentinel != nullptr && sentinel::master() == nullptr) {
        *error = kNoMaster;
        return nullptr;
    }

    auto *job = new RedisJob();
    job->set_raw(command);
    job->done = done;
    job->data = data;
    job->probe = true;
    job->recovery = recovery;

    return start(job, error) ? job : nullptr;
}

/* pool.h's recover(): a PING, on a connection that went through the
 * handshake (AUTH, SELECT, and with Sentinel the ROLE check) */
bool RedisPool::probe_recovery()
{
    static constexpr std::string_view kPing = "*1\r\n$4\r\nPING\r\n";
    const char                       *error;

    return probe(kPing, recovery_answered, this, &error, true) != nullptr;
}

void RedisPool::recovery_answered(void *data, const RedisReply *reply,
                                  const char *error)
{
    static_cast<RedisPool *>(data)->recovered(
        error == nullptr && reply != nullptr
        && reply->type != REDIS_REPLY_ERROR);
}

void RedisPool::set_cluster(Redirect redirect, void (*observe)(void *),
                            void    *data)
{
    redirect_ = redirect;
    cluster_ = data;
    observer_ = observe;
    observer_data_ = data;
}

void RedisPool::address_changed(const char *why)
{
    fail_all(why);
    reached();
}

RedisPool *RedisPool::of(RedisJob *job)
{
    return static_cast<RedisPool *>(
        static_cast<Pool<RedisPool, RedisConn, RedisJob> *>(job->pool));
}

void RedisPool::release(RedisJob *job)
{
    Pool::release(job);
}

bool RedisPool::resume(RedisJob *job, const char **error)
{
    return start(job, error);
}

/* A job released and not resumed: its caller learns why, it goes. */
void RedisPool::end(RedisJob *job, const char *error)
{
    RedisDone done = job->done;
    void     *data = job->data;

    delete job;

    if (done) {
        done(data, nullptr, error);
    }
}

/* ASKING, in RESP: before a command an ASK redirection sent elsewhere */
static const char kAsking[] = "*1\r\n$6\r\nASKING\r\n";

/* The address in use did not answer: the next connection tries the next
 * address the host name resolved to, as nginx's upstreams would. */
void RedisPool::unreachable()
{
    if (conf_->naddrs) { /* sentinel://: the master's, asked for */
        next_addr_ = (next_addr_ + 1) % conf_->naddrs;
    }
    mark_unreachable();
}

bool RedisPool::on_wire(const RedisConn *rc) const
{
    return rc->state == RedisState::Handshake || rc->state == RedisState::Ready;
}

/* Commands that are written but not yet sent go out in one send. */
bool RedisPool::batching(const RedisConn *rc) const
{
    return on_wire(rc) && rc->out_pos < rc->out.size();
}

RedisConn *RedisPool::open(const char **error)
{
    auto *rc = new RedisConn();
    rc->pool = this;
    rc->log = log_;
    set_state(rc, RedisState::Connecting);

    if (!rc->reader.init()) {
        delete rc;
        *error = "out of memory";
        return nullptr;
    }

    const ngx_addr_t *addr;

    if (conf_->sentinel != nullptr) {
        addr = sentinel::master();

        if (addr == nullptr) {
            delete rc;
            *error = kNoMaster;
            return nullptr;
        }

    } else {
        addr = &conf_->addrs[next_addr_];
    }

    ngx_peer_connection_t *pc = &rc->peer;
    pc->sockaddr = addr->sockaddr;
    pc->socklen = addr->socklen;
    pc->name = const_cast<ngx_str_t *>(&addr->name);
    pc->get = ngx_event_get_peer;
    pc->log = &rc->log;
    pc->log_error = NGX_ERROR_ERR;

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, &rc->log, 0,
                   "session_cache: redis connection %p to %V", rc, &addr->name);

    ngx_int_t rv = ngx_event_connect_peer(pc);

    if (rv != NGX_OK && rv != NGX_AGAIN) {
        /* nginx has logged the cause, e.g. "(111: Connection refused)" */
        unreachable();
        delete rc;
        *error = "connect failed";
        return nullptr;
    }

    ngx_connection_t *c = pc->connection;
    c->data = rc;
    c->read->handler = on_event;
    c->write->handler = on_event;

    add(rc);

    /* even when already connected (a unix socket), carry on from the
     * event loop: nothing here may fail a connection under submit() */
    ngx_add_timer(c->write, conf_->backend.connect_timeout);

    if (rv == NGX_OK) {
        ngx_post_event(c->write, &ngx_posted_events);
    }

    return rc;
}

void RedisPool::assign(RedisConn *rc, RedisJob *job)
{
    if (on_wire(rc)) {
        if (job->asking) {
            rc->out.append(kAsking, sizeof(kAsking) - 1);
            rc->out_cmds++;
        }
        rc->out += job->command();
        rc->out_cmds++;
        /* sent from the posted write event, never from within submit() */
        ngx_post_event(rc->peer.connection->write, &ngx_posted_events);
    }

    /* else start_session() writes it */
}

/*
 * The read and the write handler: nginx calls nothing else of a
 * connection (the SSL layer aside: on_handshake). No exception gets past
 * it; the connection fails instead.
 */
/* Runs step for rc, which fails rather than let an exception reach nginx. */
template <class Step>
void RedisPool::guarded(RedisConn *rc, Step step)
{
    if (!session_cache::guarded(&rc->log, "redis", step)) {
        rc->pool->fail(rc, "internal error");
    }
}

void RedisPool::on_event(ngx_event_t *ev)
{
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    auto *rc = static_cast<RedisConn *>(c->data);

    guarded(rc, [&] { rc->pool->drive(rc, ev); });
}

/* The one dispatch: what an event means depends on what rc waits for. */
void RedisPool::drive(RedisConn *rc, ngx_event_t *ev)
{
    switch (rc->state) {
    case RedisState::Connecting:
        /* the write event says connect() is over; a read event, an error
         * or a hang-up: either way SO_ERROR tells */
        if (ev->timedout) {
            ev->timedout = 0;
            unreachable();
            fail(rc, connect_timeout_text_);
            return;
        }

        if (!connect_done(rc)) {
            return;
        }

#if (NGX_SSL)
        if (conf_->ssl) {
            set_state(rc, RedisState::TlsHandshake);
            start_tls(rc);
            return;
        }
#endif

        start_session(rc);
        return;

    case RedisState::TlsHandshake:
        /* nginx's SSL layer holds the events until on_handshake */
        return;

    case RedisState::Handshake:
    case RedisState::Ready:
        if (rc->state == RedisState::Ready) {
            rc->log.action = const_cast<char *>(
                ev->write ? "sending to redis" : "reading redis replies");
        }

        if (ev->write) {
            flush(rc);
        } else {
            read(rc);
        }
        return;
    }
}

/* TCP is up, or failed (then rc is gone and false). */
bool RedisPool::connect_done(RedisConn *rc)
{
    ngx_connection_t *c = rc->peer.connection;
    int               err = 0;
    socklen_t         len = sizeof(int);

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, reinterpret_cast<void *>(&err),
                   &len)
        == -1)
    {
        err = ngx_socket_errno;
    }

    if (err) {
        unreachable();
        u_char  text[NGX_MAX_ERROR_STR];
        u_char *p = ngx_cpymem(text, "connect() failed: ", 18);
        *ngx_strerror(err, p, sizeof(text) - 19) = '\0';
        fail(rc, reinterpret_cast<char *>(text));
        return false;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, &rc->log, 0,
                   "session_cache: redis connection %p connected, fd:%d", rc,
                   c->fd);
    return true;
}

#if (NGX_SSL)

/* The name the server's certificate must carry: the URL's host; with
 * rediss-sentinel://, the master's as the sentinel named it (a switch
 * closes every connection, so it is the one this connection went to). */
static const ngx_str_t &
tls_name(const ngx_http_session_cache_redis_conf_t *conf)
{
    return conf->sentinel != nullptr ? sentinel::master_host() : conf->tls_name;
}

/* The connect timer keeps running through the TLS handshake. */
void RedisPool::start_tls(RedisConn *rc)
{
    const char *error;
    ngx_int_t   rv =
        redis_tls::handshake(rc->peer.connection, conf_->ssl, tls_name(conf_),
                             &rc->log, on_handshake, &error);

    if (rv == NGX_ERROR) {
        fail(rc, error);
    } else if (rv == NGX_OK) {
        tls_done(rc);
    }
}

/* nginx's SSL layer calls this when the handshake is over, either way. */
void RedisPool::on_handshake(ngx_connection_t *c)
{
    auto *rc = static_cast<RedisConn *>(c->data);

    guarded(rc, [&] { rc->pool->tls_done(rc); });
}

void RedisPool::tls_done(RedisConn *rc)
{
    ngx_connection_t *c = rc->peer.connection;

    c->read->handler = on_event;
    c->write->handler = on_event;

    if (c->write->timedout || c->read->timedout) {
        c->write->timedout = 0;
        c->read->timedout = 0;
        fail(rc, connect_timeout_text_);
        return;
    }

    char        text[160];
    const char *error = redis_tls::check(c, tls_name(conf_), conf_->tls_verify,
                                         text, sizeof(text));

    if (error != nullptr) {
        fail(rc, error);
        return;
    }

    start_session(rc);
}

#endif

/* Connected (and through TLS): AUTH, SELECT, then the jobs' commands. */
void RedisPool::start_session(RedisConn *rc)
{
    ngx_connection_t *c = rc->peer.connection;

    if (c->write->timer_set) {
        ngx_del_timer(c->write);
    }

    reached();

    rc->handshake_next = 0;
    rc->out.assign(reinterpret_cast<char *>(conf_->handshake.data),
                   conf_->handshake.len);
    rc->out_cmds = nhandshake_;

    /* jobs that came while connecting, in order */
    each_job(rc, [rc](RedisJob *job) {
        if (job->asking) {
            rc->out.append(kAsking, sizeof(kAsking) - 1);
            rc->out_cmds++;
        }
        rc->out += job->command();
        rc->out_cmds++;
    });

    set_state(rc, nhandshake_ ? RedisState::Handshake : RedisState::Ready);
    flush(rc);
}

void RedisPool::flush(RedisConn *rc)
{
    ngx_connection_t *c = rc->peer.connection;

    if (rc->out_pos == rc->out.size()) {
        return;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, &rc->log, 0,
                   "session_cache: redis connection %p send: %ui commands, "
                   "%uz bytes",
                   rc, rc->out_cmds, rc->out.size() - rc->out_pos);

    while (rc->out_pos < rc->out.size()) {
        ssize_t n =
            c->send(c, reinterpret_cast<u_char *>(&rc->out[rc->out_pos]),
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
    rc->out_cmds = 0;
}

/*
 * Read what the socket holds, up to kReadBudget bytes: then the read event
 * is posted for the next turn of the event loop, after its timers, as
 * nginx's own readers yield (a job's deadline fires even while a server
 * keeps sending).
 */
void RedisPool::read(RedisConn *rc)
{
    ReadEnd end = read_budget<kReadChunk>(
        rc->peer.connection, kReadBudget,
        [this, rc](const char *buf, std::size_t n) {
            if (!rc->reader.feed(buf, n)) {
                fail(rc, "out of memory");
                return false;
            }
            return replies(rc);
        },
        [this, rc](const char *why) { fail(rc, why); });

    if (end == ReadEnd::Gone) {
        return;
    }

    if (end == ReadEnd::Spent) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &rc->log, 0,
                       "session_cache: redis connection %p: read budget "
                       "spent, yielding",
                       rc);
    }

    dispatch();
}

/* Hand out the replies read so far, each to the command it answers.
 * False: rc failed (and is gone). */
bool RedisPool::replies(RedisConn *rc)
{
    for (;;) {
        RedisJob *job = nullptr;
        RedisCmd  kind;

        if (rc->state == RedisState::Handshake) {
            kind = handshake_[rc->handshake_next];

        } else {
            /* replies come in the order the commands went out */
            job = front(rc);

            if (job == nullptr) {
                if (rc->reader.buffered()) {
                    fail(rc, "unexpected reply");
                    return false;
                }
                return true;
            }

            /* ASKING's reply comes before the command's */
            kind = job->asking ? RedisCmd::Asking : job->kind;
        }

        RedisReply  reply;
        const char *error = nullptr;

        switch (rc->reader.next(kind, &reply, &error)) {
        case ReplyReader::Next::More:
            return true;

        case ReplyReader::Next::Refused:
            fail(rc, error);
            return false;

        case ReplyReader::Next::Reply:
            break;
        }

        if (job == nullptr) {
            if (reply.type == REDIS_REPLY_ERROR) {
                /* "AUTH refused: WRONGPASS": the error code only, as the
                 * reader keeps it; Redis may have quoted the password */
                *ngx_snprintf(reinterpret_cast<u_char *>(refused_),
                              sizeof(refused_) - 1, "%s refused: %*s",
                              resp_command_name(kind), reply.len, reply.str) =
                    '\0';
                fail(rc, refused_);
                return false;
            }

            if (not_master(rc, kind, reply)) {
                return false;
            }

            if (++rc->handshake_next == nhandshake_) {
                set_state(rc, RedisState::Ready);
            }
            continue;
        }

        if (job->asking) {
            /* its error, if any, is the command's to meet */
            job->asking = false;
            continue;
        }

        if (reply.type == REDIS_REPLY_ERROR && redirect_ != nullptr) {
            std::string_view code(reply.str, reply.len);

            if (redirect_(cluster_, this, job, code)) {
                /* MOVED or ASK: the job runs on elsewhere */
                continue;
            }

            /* the cluster cannot answer now: a failure, for the breaker
             * too (any other error reply is an answer) */
            if (code == "TRYAGAIN" || code == "CLUSTERDOWN") {
                finish(job, nullptr,
                       code == "TRYAGAIN" ? "TRYAGAIN" : "CLUSTERDOWN");
                continue;
            }
        }

        ngx_log_debug4(NGX_LOG_DEBUG_HTTP, &rc->log, 0,
                       "session_cache: redis connection %p: reply to %s "
                       "for job %p, type %d",
                       rc, resp_command_name(kind), job, reply.type);

        bool refused =
            conf_->sentinel != nullptr && reply.type == REDIS_REPLY_ERROR
            && sentinel::is_refusal(std::string_view(reply.str, reply.len));

        /* the callback may submit more work to this pool; it never
         * destroys rc (see assign) */
        finish(job, &reply, nullptr);

        if (refused && not_master(rc, kind, reply)) {
            return false;
        }
    }
}

void RedisPool::destroy(RedisConn *rc)
{
    remove(rc);

    redis_tls::close(rc->peer.connection);
    rc->peer.connection = nullptr;

    delete rc;
}

} // namespace session_cache
