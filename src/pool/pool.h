/*
 * What the Redis and the Postgres pools share, bound to nginx: each job's
 * deadline (a timer), each idle connection's idle timeout (a timer, as
 * nginx's upstream keepalive has), the circuit breaker around every call,
 * logging, and the pool's figures for the health document. Which
 * connection a job goes to, the wait queue and what a failure or a
 * timeout costs are pool/dispatch.h's (pure, unit-tested).
 *
 * Derived (CRTP) supplies the protocol:
 *   Conn *open(const char **error)   start a connection (calling add()),
 *                                    or nullptr
 *   void assign(Conn *, Job *)       the job was appended to the
 *                                    connection's FIFO; it must not send
 *                                    from within the call (post an event)
 *   bool on_wire(const Conn *)       a reply is awaited: a late one would
 *                                    come out of order, so a timeout costs
 *                                    the connection and every job on it
 *   ngx_uint_t depth() const         jobs one connection may carry at once
 *                                    (1: no pipelining)
 *   bool batching(const Conn *)      a write to it is already pending, so
 *                                    one more job costs no extra write
 *   void destroy(Conn *)             close and free it (calling remove())
 *   bool probe_recovery()            send a recovery probe (see recover())
 *                                    whose done() calls recovered(); false:
 *                                    it could not even be started
 * Conn derives from PoolConn; Job from PoolJob<Conn, Result>.
 */
#pragma once

#include "nginx_cpp.h"
#include "metrics/metrics.h"
#include "pool/dispatch.h"

#include <exception>

#include "breaker/breaker_zone.h"

namespace session_cache {

template <class Conn, class Result>
struct PoolJob : DispatchJob<Conn, Result> {
    void       *pool;  /* the Derived pool */
    ngx_event_t timer; /* the deadline */
    bool        trial; /* the breaker's half-open trial call */
    bool        probe; /* a health probe: the breaker neither refuses
                        * nor counts it */
    /* a probe sent by recover() */
    bool recovery = false;
};

/* How often a worker probes a backend whose breaker is open (recover()). */
constexpr ngx_msec_t kRecoveryProbeInterval = 1000;

/* What every connection has; Conn derives from it. */
struct PoolConn : DispatchConn {
    ngx_log_t   log{};           /* the pool's, with this connection's
                                  * action ("connecting to ..."); set
                                  * by the Derived or by add() */
    ngx_event_t idle_timer{};    /* set while it carries no job */
    void       *owner = nullptr; /* the Pool, once init_conn() ran */
};

template <class Derived, class Conn, class Job>
class Pool : public Dispatch<Pool<Derived, Conn, Job>, Conn, Job> {
    using Base = Dispatch<Pool, Conn, Job>;
    friend Base;

public:
    /* The last connection to this pool's server that ended did not get
     * through (refused, timed out, or a server of the wrong role), less
     * than ms ago: callers may skip it for a while (a Redis Cluster's
     * dead master, the lag guard's primary). */
    bool unreachable_within(ngx_msec_t ms) const
    {
        return unreachable_ && ngx_current_msec - unreachable_at_ < ms;
    }

    /* The breaker this pool's calls count in: its backend's, unless told
     * otherwise (a Redis Cluster node's own, breaker_for_node()). */
    void use_breaker(BreakerId id) { breaker_ = id; }

protected:
    /* A connection did not get through; reached(): one did. */
    void mark_unreachable()
    {
        unreachable_ = true;
        unreachable_at_ = ngx_current_msec;
    }

    void reached() { unreachable_ = false; }

    /* observer: see observer_; set from the start for a helper pool
     * whose figures must never replace the backend's (Postgres's pool on
     * the primary, SPEC §11) */
    Pool(ngx_cycle_t *cycle, const ngx_http_session_cache_backend_t *backend,
         const char *name, Backend which,
         void (*observer)(void *data) = nullptr)
        : backend_(backend), name_(name), which_(which), observer_(observer)
    {
        log_ = *cycle->log;
        log_.handler = log_context;
        log_.data = this;
        log_.action = nullptr;

        *ngx_snprintf(reinterpret_cast<u_char *>(timeout_text_),
                      sizeof(timeout_text_) - 1, "timed out after %Mms",
                      backend->timeout) = '\0';
        *ngx_snprintf(reinterpret_cast<u_char *>(connect_timeout_text_),
                      sizeof(connect_timeout_text_) - 1,
                      "connect timed out after %Mms",
                      backend->connect_timeout) = '\0';

        /* pool.max is known before the first connection */
        changed();
    }

    ~Pool() = default;

    Derived *derived() { return static_cast<Derived *>(this); }

    /* A connection is failing (after the log line): the Derived may hide
     * this to react (RedisPool: ask Redis Sentinel again). */
    void conn_failed(Conn *, const char *) {}

    /* Give a new connection its log, unless the Derived already set it
     * (a copy of log_, with the connection's own action), and its idle
     * timer. add() does it; a Derived that needs the log sooner calls it
     * first. */
    void init_conn(Conn *conn)
    {
        PoolConn *pc = conn;

        if (pc->log.handler == nullptr) {
            pc->log = log_;
            pc->log.action = nullptr;
        }

        pc->owner = this;
        pc->idle_timer.handler = on_idle_timeout;
        pc->idle_timer.data = pc;
        pc->idle_timer.log = &pc->log;
        /* a worker shutting down does not wait for it */
        pc->idle_timer.cancelable = 1;
    }

    /* A new connection, from open(). */
    void add(Conn *conn)
    {
        init_conn(conn);
        Base::add(conn);
    }

    /*
     * Run job on a free connection, a new one, or after a wait in the
     * queue. done() is called later, exactly once, never from within this
     * call. When the breaker is open, or no connection can even be
     * opened: false, *error, and the job is deleted without done() being
     * called.
     */
    bool start(Job *job, const char **error)
    {
        bool trial = false;

        if (!job->probe && !breaker_allow(breaker_, &trial, &log_)) {
            ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &log_, 0,
                           "session_cache: %s: breaker open, call refused",
                           name_);
            *error = "circuit breaker open";
            delete job;
            recover();
            return false;
        }

        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, &log_, 0,
                       "session_cache: %s: breaker lets the call %p through%s",
                       name_, job,
                       job->probe ? " (a probe)"
                       : trial    ? " (the half-open trial)"
                                  : "");

        job->pool = this;
        job->trial = trial;

        if (!this->place(job, error)) {
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, &log_, 0,
                           "session_cache: %s: no connection: %s", name_,
                           *error);
            if (!job->probe) {
                breaker_report(breaker_, false, trial, &log_);
            }
            delete job;
            return false;
        }

        if (job->waiting) {
            ngx_log_debug3(NGX_LOG_DEBUG_HTTP, &log_, 0,
                           "session_cache: %s: call %p waits for a "
                           "connection (%uz waiting)",
                           name_, job, this->waiting());
        }

        return true;
    }

    /*
     * The breaker refused a call. The cooldown is a guess at how long the
     * backend stays away; a backend back sooner (a standby promoted, a
     * server restarted) is found by a probe instead: at most one at a
     * time and one per kRecoveryProbeInterval from each worker, and only
     * while calls are being refused. A probe that is answered ends the
     * cooldown (breaker_probe_answered): the next call is the half-open
     * trial, which decides as it always does.
     */
    void recover()
    {
        if (recovering_
            || (probed_
                && ngx_current_msec - probed_at_ < kRecoveryProbeInterval))
        {
            return;
        }

        probed_ = true;
        probed_at_ = ngx_current_msec;
        recovering_ = derived()->probe_recovery();

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, &log_, 0,
                       "session_cache: %s: breaker open: recovery probe %s",
                       name_, recovering_ ? "sent" : "not sent");
    }

    /* The recovery probe's answer: reached says the backend answered it. */
    void recovered(bool reached)
    {
        recovering_ = false;

        if (reached) {
            breaker_probe_answered(breaker_, &log_);
        }
    }

    const ngx_http_session_cache_backend_t *backend_;
    const char                             *name_;
    Backend                                 which_;
    BreakerId                               breaker_ = breaker_id(which_);
    ngx_log_t                               log_;
    char                                    timeout_text_[64];
    char                                    connect_timeout_text_[64];

    /* set: told of every change instead of publishing the figures as
     * the backend's (a Redis Cluster sums its nodes' pools) */
    void (*observer_)(void *data);
    void *observer_data_ = nullptr;

private:
    bool       unreachable_ = false; /* see unreachable_within() */
    ngx_msec_t unreachable_at_ = 0;
    bool       recovering_ = false; /* a recovery probe is out */
    bool       probed_ = false;     /* one was ever sent */
    ngx_msec_t probed_at_ = 0;      /* when the last one was sent */

    /* Dispatch's host: the protocol is Derived's */
    Conn *conn_open(const char **error) { return derived()->open(error); }
    void  conn_assign(Conn *conn, Job *job)
    {
        ngx_log_debug4(NGX_LOG_DEBUG_HTTP, &log_, 0,
                       "session_cache: %s: call %p on connection %p "
                       "(%uz on it)",
                       name_, job, conn,
                       static_cast<DispatchConn *>(conn)->njobs);
        derived()->assign(conn, job);
    }
    bool conn_on_wire(const Conn *conn) { return derived()->on_wire(conn); }
    std::size_t conn_depth() { return derived()->depth(); }
    bool conn_batching(const Conn *conn) { return derived()->batching(conn); }
    void conn_destroy(Conn *conn) { derived()->destroy(conn); }
    std::size_t conn_limit() const { return backend_->pool; }

    void job_started(Job *job)
    {
        job->timer.handler = on_job_timeout;
        job->timer.data = job;
        job->timer.log = &log_;

        ngx_add_timer(&job->timer, backend_->timeout);
    }

    void job_ended(Job *job, bool ok)
    {
        if (job->timer.timer_set) {
            ngx_del_timer(&job->timer);
        }

        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, &log_, 0,
                       "session_cache: %s: call %p %s", name_, job,
                       ok ? "answered" : "failed");

        /* the breaker counts every call, also those nobody waits for;
         * for Postgres, "no row" is a success */
        if (!job->probe) {
            breaker_report(breaker_, ok, job->trial, &log_);
        }
    }

    void job_dropped(Job *job)
    {
        if (job->timer.timer_set) {
            ngx_del_timer(&job->timer);
        }

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, &log_, 0,
                       "session_cache: %s: call %p dropped before it was "
                       "sent",
                       name_, job);

        if (job->trial) {
            breaker_give_back(breaker_);
        }
    }

    void idle_begins(Conn *conn)
    {
        PoolConn *pc = conn;

        /* idle_timeout=0: idle connections stay open */
        if (backend_->idle_timeout) {
            ngx_add_timer(&pc->idle_timer, backend_->idle_timeout);
        }
    }

    void idle_ends(Conn *conn)
    {
        PoolConn *pc = conn;

        if (pc->idle_timer.timer_set) {
            ngx_del_timer(&pc->idle_timer);
        }
    }

    /* logged with the connection's log: the line says what the
     * connection was doing */
    void conn_failing(Conn *conn, const char *error)
    {
        PoolConn  *pc = conn;
        ngx_log_t *log = pc->log.handler ? &pc->log : &log_;

        if (pc->njobs == 1 && Base::front(conn)->recovery) {
            /* the breaker is open: the outage was logged when it opened */
            ngx_log_error(NGX_LOG_INFO, log, 0,
                          "session_cache: %s recovery probe failed: %s", name_,
                          error);
        } else if (pc->njobs) {
            ngx_log_error(NGX_LOG_ERR, log, 0, "session_cache: %s: %s", name_,
                          error);
        } else {
            ngx_log_error(NGX_LOG_INFO, log, 0,
                          "session_cache: idle %s connection dropped: %s",
                          name_, error);
        }

        derived()->conn_failed(conn, error);
    }

    /* The figures now, for the health document (this worker's metrics
     * slot). Available: open connections without a job. */
    void changed()
    {
        if (observer_ != nullptr) {
            observer_(observer_data_);
            return;
        }

        publish_pool(which_, PoolFigures{this->connections(), this->idle(),
                                         this->waiting(), backend_->pool});
    }

    static void on_job_timeout(ngx_event_t *ev)
    {
        auto *job = static_cast<Job *>(ev->data);
        auto *pool = static_cast<Pool *>(job->pool);

        try {
            bool   recovery = job->recovery; /* job is gone after it */
            Expiry e = pool->expire(job, pool->timeout_text_);

            if (e == Expiry::Connecting && recovery) {
                /* the breaker is open: the outage was logged then */
                ngx_log_error(NGX_LOG_INFO, &pool->log_, 0,
                              "session_cache: %s recovery probe failed: %s "
                              "while connecting",
                              pool->name_, pool->timeout_text_);
            } else if (e == Expiry::Connecting) {
                ngx_log_error(NGX_LOG_ERR, &pool->log_, 0,
                              "session_cache: %s: %s while connecting",
                              pool->name_, pool->timeout_text_);
            }

        } catch (const std::exception &e) {
            ngx_log_error(NGX_LOG_ALERT, &pool->log_, 0,
                          "session_cache: %s timer: %s", pool->name_, e.what());
        } catch (...) {
            ngx_log_error(NGX_LOG_ALERT, &pool->log_, 0,
                          "session_cache: %s timer: unknown exception",
                          pool->name_);
        }
    }

    /* A connection carried no job for idle_timeout: close it, so that a
     * quiet worker holds no socket a firewall or the server will cut. */
    static void on_idle_timeout(ngx_event_t *ev)
    {
        auto *pc = static_cast<PoolConn *>(ev->data);
        auto *pool = static_cast<Pool *>(pc->owner);

        try {
            ngx_log_debug2(NGX_LOG_DEBUG_HTTP, &pool->log_, 0,
                           "session_cache: %s: closing idle connection %p",
                           pool->name_, pc);

            pool->close_idle(static_cast<Conn *>(pc));

        } catch (const std::exception &e) {
            ngx_log_error(NGX_LOG_ALERT, &pool->log_, 0,
                          "session_cache: %s idle timer: %s", pool->name_,
                          e.what());
        } catch (...) {
            ngx_log_error(NGX_LOG_ALERT, &pool->log_, 0,
                          "session_cache: %s idle timer: unknown exception",
                          pool->name_);
        }
    }

    static u_char *log_context(ngx_log_t *log, u_char *buf, size_t len)
    {
        auto   *pool = static_cast<Pool *>(log->data);
        u_char *p = buf;

        if (log->action) {
            p = ngx_snprintf(p, len, " while %s", log->action);
            len -= p - buf;
        }

        return ngx_snprintf(p, len, ", backend: %V", &pool->backend_->display);
    }
};

} // namespace session_cache
