/*
 * What the Redis and the Postgres pools share: jobs with a deadline, a
 * queue of jobs waiting for a connection, connections that carry up to
 * depth() jobs at a time (a FIFO: replies come back in the order the
 * requests went out), and what happens when a connection fails or a job
 * times out.
 *
 * Derived (CRTP) supplies the protocol:
 *   Conn *open(const char **error)   start a connection, or nullptr
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
 *   void destroy(Conn *)             close and free it
 * Conn has members `ngx_queue_t jobs`, `ngx_uint_t njobs` and
 * `ngx_queue_t link`; Job derives from PoolJob<Conn, Result>.
 */
#pragma once

#include "nginx_cpp.h"
#include "metrics/metrics.h"

#include <exception>

#include "breaker/breaker_zone.h"

namespace session_cache {

template <class Conn, class Result>
struct PoolJob {
    /* the result (valid during the call only), or nullptr and an error
     * naming the cause; for Postgres, nullptr and no error is "no row" */
    using result_type = Result;
    using Done = void (*)(void *data, const Result *result,
                          const char *error);

    void        *pool;     /* the Derived pool */
    Done         done;     /* nullptr: nobody waits for the answer */
    void        *data;
    ngx_event_t  timer;    /* the deadline */
    ngx_queue_t  queue;    /* in the wait queue, or its connection's FIFO */
    Conn        *conn;     /* the connection carrying it, if any */
    bool         waiting;
    bool         trial;    /* the breaker's half-open trial call */
    bool         probe;    /* a health probe: the breaker neither refuses
                            * nor counts it */
};

template <class Derived, class Conn, class Job>
class Pool {
public:
    Pool(const Pool &) = delete;
    Pool &operator=(const Pool &) = delete;

    ngx_uint_t size() const { return nconns_; }
    ngx_uint_t max() const { return backend_->pool; }
    ngx_uint_t pending() const { return npending_; }

    /* The caller went away: done() will not be called. */
    void cancel(Job *job)
    {
        if (job->waiting) {
            ngx_queue_remove(&job->queue);
            npending_--;
            if (job->timer.timer_set) {
                ngx_del_timer(&job->timer);
            }
            if (job->trial) {
                breaker_give_back(which_);
            }
            delete job;
            return;
        }

        /* in flight: the answer is dropped when it comes; the timer stays,
         * so that a connection that hangs is still closed */
        job->done = nullptr;
        job->data = nullptr;
    }

protected:
    Pool(ngx_cycle_t *cycle, const ngx_http_session_cache_backend_t *backend,
         const char *name, Backend which)
        : backend_(backend), name_(name), which_(which)
    {
        log_ = *cycle->log;
        log_.handler = log_context;
        log_.data = this;
        log_.action = nullptr;

        ngx_queue_init(&conns_);
        ngx_queue_init(&waiting_);

        *ngx_snprintf(reinterpret_cast<u_char *>(timeout_text_),
                      sizeof(timeout_text_) - 1, "timed out after %Mms",
                      backend->timeout) = '\0';
        *ngx_snprintf(reinterpret_cast<u_char *>(connect_timeout_text_),
                      sizeof(connect_timeout_text_) - 1,
                      "connect timed out after %Mms",
                      backend->connect_timeout) = '\0';

        publish();
    }

    ~Pool() = default;

    Derived *derived() { return static_cast<Derived *>(this); }

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

        if (!job->probe && !breaker_allow(which_, &trial, &log_)) {
            *error = "circuit breaker open";
            delete job;
            return false;
        }

        Conn *conn = pick();

        if (conn == nullptr && nconns_ < backend_->pool) {
            conn = derived()->open(error);
            if (conn == nullptr) {
                if (!job->probe) {
                    breaker_report(which_, false, trial, &log_);
                }
                delete job;
                return false;
            }
        }

        if (conn == nullptr) {
            conn = least_loaded();
        }

        job->trial = trial;

        job->pool = this;
        job->conn = nullptr;
        job->waiting = false;
        job->timer.handler = on_job_timeout;
        job->timer.data = job;
        job->timer.log = &log_;

        ngx_add_timer(&job->timer, backend_->timeout);

        if (conn) {
            attach(conn, job);

        } else {
            ngx_queue_insert_tail(&waiting_, &job->queue);
            job->waiting = true;
            npending_++;
        }

        publish();
        return true;
    }

    /* The job is over: tell whoever waits, if anyone still does. The job
     * is gone before done() runs, which may submit new work. answered: the
     * error is not the backend's failure (it answered; the configuration
     * is wrong), so the breaker counts a success. */
    void finish(Job *job, const typename Job::result_type *result,
                const char *error, bool answered = false)
    {
        if (job->timer.timer_set) {
            ngx_del_timer(&job->timer);
        }

        if (job->conn) {
            detach(job);
        }

        if (job->waiting) {
            ngx_queue_remove(&job->queue);
            job->waiting = false;
            npending_--;
        }

        /* the breaker counts every call, also those nobody waits for;
         * for Postgres, "no row" is a success */
        if (!job->probe) {
            breaker_report(which_, error == nullptr || answered, job->trial,
                           &log_);
        }

        typename Job::Done done = job->done;
        void *data = job->data;
        delete job;
        publish();

        if (done) {
            done(data, result, error);
        }
    }

    /* The connection is broken: every job on it fails with error, it
     * goes. (A reply still to come could not be told apart from the next
     * one: no job may stay on it.) */
    void fail(Conn *conn, const char *error)
    {
        if (conn->njobs) {
            ngx_log_error(NGX_LOG_ERR, &log_, 0, "session_cache: %s: %s",
                          name_, error);
        } else {
            ngx_log_error(NGX_LOG_INFO, &log_, 0,
                          "session_cache: idle %s connection dropped: %s",
                          name_, error);
        }

        ngx_queue_t jobs;
        ngx_queue_init(&jobs);

        while (Job *job = front(conn)) {
            detach(job);
            ngx_queue_insert_tail(&jobs, &job->queue);
        }

        derived()->destroy(conn);

        while (!ngx_queue_empty(&jobs)) {
            ngx_queue_t *q = ngx_queue_head(&jobs);
            ngx_queue_remove(q);
            finish(static_cast<Job *>(ngx_queue_data(q, JobBase, queue)),
                   nullptr, error);
        }

        dispatch();
    }

    /* Hand waiting jobs to free connections, opening new ones if allowed. */
    void dispatch()
    {
        while (!ngx_queue_empty(&waiting_)) {
            Conn *conn = pick();

            if (conn == nullptr && nconns_ < backend_->pool) {
                const char *error = nullptr;
                conn = derived()->open(&error);

                if (conn == nullptr) {
                    finish(head(), nullptr, error);
                    continue;
                }
            }

            if (conn == nullptr) {
                conn = least_loaded();
                if (conn == nullptr) {
                    publish();
                    return;
                }
            }

            Job *job = head();
            ngx_queue_remove(&job->queue);
            job->waiting = false;
            npending_--;
            attach(conn, job);
        }

        publish();
    }

    /* The oldest job on conn: the one the next reply answers. */
    static Job *front(Conn *conn)
    {
        if (ngx_queue_empty(&conn->jobs)) {
            return nullptr;
        }

        return static_cast<Job *>(
            ngx_queue_data(ngx_queue_head(&conn->jobs), JobBase, queue));
    }

    /* For every job on conn, oldest first (f must not detach jobs). */
    template <class F>
    static void each_job(Conn *conn, F f)
    {
        for (ngx_queue_t *q = ngx_queue_head(&conn->jobs);
             q != ngx_queue_sentinel(&conn->jobs); q = ngx_queue_next(q))
        {
            f(static_cast<Job *>(ngx_queue_data(q, JobBase, queue)));
        }
    }

    /* The job no longer rides conn (it is answered, or it gave up while
     * the connection was still being set up). */
    void detach(Job *job)
    {
        ngx_queue_remove(&job->queue);
        if (--job->conn->njobs == 0) {
            nidle_++;
        }
        job->conn = nullptr;
    }

    void add(Conn *conn)
    {
        ngx_queue_init(&conn->jobs);
        conn->njobs = 0;
        ngx_queue_insert_tail(&conns_, &conn->link);
        nconns_++;
        nidle_++;
        publish();
    }

    void remove(Conn *conn)
    {
        ngx_queue_remove(&conn->link);
        nconns_--;
        if (conn->njobs == 0) {
            nidle_--;
        }
        publish();
    }

    /* For the Derived destructor: drop every job and connection. */
    void clear()
    {
        while (!ngx_queue_empty(&waiting_)) {
            Job *job = head();
            ngx_queue_remove(&job->queue);
            drop(job);
        }
        npending_ = 0;

        while (!ngx_queue_empty(&conns_)) {
            Conn *conn = ngx_queue_data(ngx_queue_head(&conns_), Conn, link);
            while (Job *job = front(conn)) {
                detach(job);
                drop(job);
            }
            derived()->destroy(conn);
        }
    }

    const ngx_http_session_cache_backend_t *backend_;
    const char   *name_;
    Backend       which_;
    ngx_log_t     log_;
    ngx_queue_t   conns_;
    ngx_queue_t   waiting_;
    ngx_uint_t    nconns_ = 0;
    ngx_uint_t    npending_ = 0;
    ngx_uint_t    nidle_ = 0;      /* connections without a job */
    char          timeout_text_[64];
    char          connect_timeout_text_[64];

    /* standard layout, unlike Job, so that offsetof applies */
    using JobBase = PoolJob<Conn, typename Job::result_type>;

private:
    /* The figures now, for the health document (this worker's metrics
     * slot). Available: open connections without a job. */
    void publish()
    {
        publish_pool(which_, PoolFigures{nconns_, nidle_, npending_,
                                         backend_->pool});
    }


    Job *head()
    {
        return static_cast<Job *>(
            ngx_queue_data(ngx_queue_head(&waiting_), JobBase, queue));
    }

    void attach(Conn *conn, Job *job)
    {
        ngx_queue_insert_tail(&conn->jobs, &job->queue);
        if (conn->njobs++ == 0) {
            nidle_--;
        }
        job->conn = conn;
        derived()->assign(conn, job);
    }

    /*
     * Where a job goes without opening a connection: one whose write is
     * already pending (the job joins that write: several requests ready in
     * one event loop turn cost one send and one read), else an idle one.
     */
    Conn *pick()
    {
        Conn *idle = nullptr;
        ngx_uint_t depth = derived()->depth();

        for (ngx_queue_t *q = ngx_queue_head(&conns_);
             q != ngx_queue_sentinel(&conns_); q = ngx_queue_next(q))
        {
            Conn *conn = ngx_queue_data(q, Conn, link);

            if (conn->njobs == 0) {
                if (idle == nullptr) {
                    idle = conn;
                }

            } else if (conn->njobs < depth && derived()->batching(conn)) {
                return conn;
            }
        }

        return idle;
    }

    /* Every connection is busy and no more may be opened: pipeline on the
     * least loaded one, if it has room. */
    Conn *least_loaded()
    {
        Conn *best = nullptr;

        for (ngx_queue_t *q = ngx_queue_head(&conns_);
             q != ngx_queue_sentinel(&conns_); q = ngx_queue_next(q))
        {
            Conn *conn = ngx_queue_data(q, Conn, link);

            if (conn->njobs < derived()->depth()
                && (best == nullptr || conn->njobs < best->njobs))
            {
                best = conn;
            }
        }

        return best;
    }

    void drop(Job *job)
    {
        if (job->timer.timer_set) {
            ngx_del_timer(&job->timer);
        }
        if (job->trial) {
            breaker_give_back(which_);
        }
        delete job;
    }

    static void on_job_timeout(ngx_event_t *ev)
    {
        auto *job = static_cast<Job *>(ev->data);
        auto *pool = static_cast<Derived *>(static_cast<Pool *>(job->pool));

        try {
            if (job->waiting) {
                pool->finish(job, nullptr, pool->timeout_text_);
                return;
            }

            Conn *conn = job->conn;

            if (conn && pool->on_wire(conn)) {
                pool->fail(conn, pool->timeout_text_);
                return;
            }

            if (conn) {
                /* still connecting: it may serve the next job */
                pool->detach(job);
            }

            ngx_log_error(NGX_LOG_ERR, &pool->log_, 0,
                          "session_cache: %s: %s while connecting",
                          pool->name_, pool->timeout_text_);
            pool->finish(job, nullptr, pool->timeout_text_);

        } catch (const std::exception &e) {
            ngx_log_error(NGX_LOG_ALERT, &pool->log_, 0,
                          "session_cache: %s timer: %s", pool->name_,
                          e.what());
        }
    }

    static u_char *log_context(ngx_log_t *log, u_char *buf, size_t len)
    {
        auto *pool = static_cast<Pool *>(log->data);
        return ngx_snprintf(buf, len, ", backend: %V",
                            &pool->backend_->display);
    }
};

}  // namespace session_cache
