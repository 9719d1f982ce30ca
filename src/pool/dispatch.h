/*
 * The pure half of the pools (no nginx types; t/unit/test_dispatch.cpp
 * links it alone): jobs waiting for a connection, connections carrying up
 * to depth() jobs at a time (a FIFO: replies come back in the order the
 * requests went out), which connection a job goes to, what a timeout
 * costs, and what happens to the jobs of a connection that fails.
 * pool/pool.h is its nginx-bound partner: timers, logging, the breaker
 * and the health document's figures.
 *
 * Host (CRTP) supplies:
 *   Conn *conn_open(const char **error)  start a connection (it calls
 *                                     add()), or nullptr and *error
 *   void conn_assign(Conn *, Job *)   the job was appended to the
 *                                     connection's FIFO; it must not send
 *                                     from within the call
 *   bool conn_on_wire(const Conn *)   a reply is awaited: a late one would
 *                                     come out of order, so a timeout
 *                                     costs the connection
 *   std::size_t conn_depth() const    jobs one connection may carry
 *   bool conn_batching(const Conn *)  a write to it is already pending
 *   void conn_destroy(Conn *)         close and free it (it calls remove())
 *   std::size_t conn_limit() const    connections it may open
 *   void job_started(Job *)           the job's deadline starts
 *   void job_ended(Job *, bool ok)    finished: its deadline stops, the
 *                                     outcome counts
 *   void job_dropped(Job *)           cancelled before it was sent, or
 *                                     cleared: its deadline stops
 *   void idle_begins(Conn *)          the connection carries no job now
 *   void idle_ends(Conn *)            it got a job, or it goes
 *   void conn_failing(Conn *, const char *error)   before fail() acts
 *   void changed()                    a count changed
 * Conn derives from DispatchConn, Job from DispatchJob<Conn, Result>.
 */
#pragma once

#include <cstddef>

namespace session_cache {

/* A node of an intrusive doubly linked list (as ngx_queue_t). */
struct Link {
    Link *prev = nullptr;
    Link *next = nullptr;

    Link() = default;
    Link(const Link &) = delete;
    Link &operator=(const Link &) = delete;
};

/* A circular list of Links around a sentinel; it never owns them. */
class LinkList {
public:
    LinkList() { head_.prev = head_.next = &head_; }
    LinkList(const LinkList &) = delete;
    LinkList &operator=(const LinkList &) = delete;

    bool        empty() const { return head_.next == &head_; }
    Link       *first() const { return empty() ? nullptr : head_.next; }
    Link       *first_link() const { return head_.next; }
    const Link *end() const { return &head_; }

    void push_back(Link *l)
    {
        l->prev = head_.prev;
        l->next = &head_;
        head_.prev->next = l;
        head_.prev = l;
    }

    static void unlink(Link *l)
    {
        l->prev->next = l->next;
        l->next->prev = l->prev;
        l->prev = l->next = nullptr;
    }

private:
    Link head_;
};

/* What a connection carries; Conn derives from it. */
struct DispatchConn : Link {
    LinkList    jobs; /* sent or to be sent, in order */
    std::size_t njobs = 0;
};

template <class Conn, class Result>
struct DispatchJob : Link {
    /* the result (valid during the call only), or nullptr and an error
     * naming the cause; for Postgres, nullptr and no error is "no row" */
    using result_type = Result;
    using Done = void (*)(void *data, const Result *result, const char *error);

    Done  done = nullptr; /* nullptr: nobody waits for the answer */
    void *data = nullptr;
    Conn *conn = nullptr;  /* the connection carrying it, if any */
    bool  waiting = false; /* in the wait queue */
};

/* What a job's deadline costs (see expiry()). */
enum class Expiry {
    Waiting,   /* it waited for a connection: it alone fails */
    OnWire,    /* a reply is awaited: the connection and its jobs fail */
    Connecting /* its connection is being set up: it alone fails, the
                * connection stays for the next job */
};

template <class Host, class Conn, class Job>
class Dispatch {
public:
    using Result = typename Job::result_type;
    using Done = typename Job::Done;

    Dispatch(const Dispatch &) = delete;
    Dispatch &operator=(const Dispatch &) = delete;

    std::size_t connections() const { return nconns_; }
    std::size_t idle() const { return nidle_; }
    std::size_t waiting() const { return nwaiting_; }

    /* The caller went away: done() will not be called. A job still in the
     * queue goes at once; one on a connection stays until it is answered
     * (the answer is dropped), so that its deadline still closes a
     * connection that hangs. */
    void cancel(Job *job)
    {
        if (job->waiting) {
            unqueue(job);
            drop(job);
            host()->changed();
            return;
        }

        job->done = nullptr;
        job->data = nullptr;
    }

protected:
    Dispatch() = default;
    ~Dispatch() = default;

    Host *host() { return static_cast<Host *>(this); }

    /*
     * Put job on a connection: one pick() chooses, else a new one while
     * fewer than conn_limit() are open, else the least loaded one with
     * room, else the wait queue. false and *error (the job untouched)
     * when a connection had to be opened and could not be.
     */
    bool place(Job *job, const char **error)
    {
        Conn *conn = pick();

        if (conn == nullptr && nconns_ < host()->conn_limit()) {
            conn = host()->conn_open(error);
            if (conn == nullptr) {
                return false;
            }
        }

        if (conn == nullptr) {
            conn = least_loaded();
        }

        job->conn = nullptr;
        job->waiting = false;
        host()->job_started(job);

        if (conn) {
            attach(conn, job);

        } else {
            queue_.push_back(job);
            job->waiting = true;
            nwaiting_++;
        }

        host()->changed();
        return true;
    }

    /* The job is over: tell whoever waits, if anyone still does. The job
     * is gone before done() runs, which may submit new work. answered: the
     * error is not the backend's failure (it answered; the configuration
     * is wrong), so the job counts as a success. */
    void finish(Job *job, const Result *result, const char *error,
                bool answered = false)
    {
        if (job->conn) {
            detach(job);
        }

        if (job->waiting) {
            unqueue(job);
        }

        host()->job_ended(job, error == nullptr || answered);

        Done  done = job->done;
        void *data = job->data;
        delete job;
        host()->changed();

        if (done) {
            done(data, result, error);
        }
    }

    /* The job leaves this pool unanswered, to be started on another
     * (Redis Cluster's MOVED and ASK): off its connection, its deadline
     * stopped, counted as answered; nobody is told, nothing is freed. */
    void release(Job *job)
    {
        if (job->conn) {
            detach(job);
        }

        if (job->waiting) {
            unqueue(job);
        }

        host()->job_ended(job, true);
        host()->changed();
    }

    /* The connection is broken: every job on it fails with error, it
     * goes. (A reply still to come could not be told apart from the next
     * one: no job may stay on it.) Waiting jobs then get a connection. */
    void fail(Conn *conn, const char *error)
    {
        host()->conn_failing(conn, error);

        LinkList failed;

        while (Job *job = front(conn)) {
            detach(job);
            failed.push_back(job);
        }

        host()->conn_destroy(conn);

        while (Link *l = failed.first()) {
            LinkList::unlink(l);
            finish(static_cast<Job *>(l), nullptr, error);
        }

        dispatch();
    }

    /* Every connection open now fails with error (the server behind the
     * address changed: a Redis Sentinel switch), its jobs too; waiting
     * jobs then go to new connections. Those are appended behind the old
     * ones, which are failed from the front, so only the old ones go. */
    void fail_all(const char *error)
    {
        for (std::size_t n = nconns_; n > 0 && !conns_.empty(); n--) {
            fail(static_cast<Conn *>(
                     static_cast<DispatchConn *>(conns_.first())),
                 error);
        }
    }

    /* Hand waiting jobs to connections with room, opening new ones if
     * allowed; a job whose connection cannot be opened fails. */
    void dispatch()
    {
        while (Link *l = queue_.first()) {
            Job  *job = static_cast<Job *>(l);
            Conn *conn = pick();

            if (conn == nullptr && nconns_ < host()->conn_limit()) {
                const char *error = nullptr;
                conn = host()->conn_open(&error);

                if (conn == nullptr) {
                    finish(job, nullptr, error);
                    continue;
                }
            }

            if (conn == nullptr) {
                conn = least_loaded();
                if (conn == nullptr) {
                    break;
                }
            }

            unqueue(job);
            attach(conn, job);
        }

        host()->changed();
    }

    /* The rule for a job whose deadline passed. */
    Expiry expiry(const Job *job)
    {
        if (job->waiting || job->conn == nullptr) {
            return Expiry::Waiting;
        }

        return host()->conn_on_wire(job->conn) ? Expiry::OnWire
                                               : Expiry::Connecting;
    }

    /* The job's deadline passed: fail it, and its connection if that is
     * what expiry() says it costs. */
    Expiry expire(Job *job, const char *error)
    {
        Expiry e = expiry(job);

        if (e == Expiry::OnWire) {
            fail(job->conn, error);
        } else {
            finish(job, nullptr, error);
        }

        return e;
    }

    /* conn has carried no job for the idle timeout: it goes. false if it
     * has one after all. */
    bool close_idle(Conn *conn)
    {
        if (base(conn)->njobs) {
            return false;
        }

        host()->conn_destroy(conn);
        return true;
    }

    /* conn is one of this pool's open connections (after an exception,
     * whether the step that threw had already closed it). */
    bool owns(const Conn *conn) const
    {
        for (Link *l = conns_.first_link(); l != conns_.end(); l = l->next) {
            if (static_cast<const DispatchConn *>(l)
                == static_cast<const DispatchConn *>(conn))
            {
                return true;
            }
        }

        return false;
    }

    /* The oldest job on conn: the one the next reply answers. */
    static Job *front(Conn *conn)
    {
        return static_cast<Job *>(base(conn)->jobs.first());
    }

    /* For every job on conn, oldest first (f must not detach jobs). */
    template <class F>
    static void each_job(Conn *conn, F f)
    {
        const LinkList &jobs = base(conn)->jobs;

        for (Link *l = jobs.first_link(); l != jobs.end(); l = l->next) {
            f(static_cast<Job *>(l));
        }
    }

    /* The job no longer rides its connection (it is answered, or it gave
     * up while the connection was still being set up). */
    void detach(Job *job)
    {
        DispatchConn *dc = base(job->conn);

        LinkList::unlink(job);
        if (--dc->njobs == 0) {
            nidle_++;
            host()->idle_begins(job->conn);
        }
        job->conn = nullptr;
    }

    /* A new connection (from conn_open()). */
    void add(Conn *conn)
    {
        DispatchConn *dc = base(conn);

        dc->njobs = 0;
        conns_.push_back(dc);
        nconns_++;
        nidle_++;
        host()->idle_begins(conn);
        host()->changed();
    }

    /* A connection goes (from conn_destroy()); it carries no job. */
    void remove(Conn *conn)
    {
        DispatchConn *dc = base(conn);

        LinkList::unlink(dc);
        nconns_--;
        if (dc->njobs == 0) {
            nidle_--;
            host()->idle_ends(conn);
        }
        host()->changed();
    }

    /* For the host's destructor: drop every job and connection. */
    void clear()
    {
        while (Link *l = queue_.first()) {
            Job *job = static_cast<Job *>(l);
            unqueue(job);
            drop(job);
        }

        while (Link *l = conns_.first()) {
            Conn *conn = static_cast<Conn *>(static_cast<DispatchConn *>(l));

            while (Job *job = front(conn)) {
                detach(job);
                drop(job);
            }

            host()->conn_destroy(conn);
        }
    }

private:
    static DispatchConn *base(Conn *conn) { return conn; }

    void attach(Conn *conn, Job *job)
    {
        DispatchConn *dc = base(conn);

        dc->jobs.push_back(job);
        if (dc->njobs++ == 0) {
            nidle_--;
            host()->idle_ends(conn);
        }
        job->conn = conn;
        host()->conn_assign(conn, job);
    }

    void unqueue(Job *job)
    {
        LinkList::unlink(job);
        job->waiting = false;
        nwaiting_--;
    }

    /* The one way a job goes without an answer: cancel() and clear(). */
    void drop(Job *job)
    {
        host()->job_dropped(job);
        delete job;
    }

    /*
     * Where a job goes without opening a connection: one whose write is
     * already pending and that has room (the job joins that write: several
     * requests ready in one event loop turn cost one send and one read),
     * else the first idle one.
     */
    Conn *pick()
    {
        Conn       *idle = nullptr;
        std::size_t depth = host()->conn_depth();

        for (Link *l = conns_.first_link(); l != conns_.end(); l = l->next) {
            Conn *conn = static_cast<Conn *>(static_cast<DispatchConn *>(l));
            std::size_t n = base(conn)->njobs;

            if (n == 0) {
                if (idle == nullptr) {
                    idle = conn;
                }

            } else if (n < depth && host()->conn_batching(conn)) {
                return conn;
            }
        }

        return idle;
    }

    /* Every connection is busy and no more may be opened: pipeline on the
     * least loaded one, if one has room. */
    Conn *least_loaded()
    {
        Conn       *best = nullptr;
        std::size_t depth = host()->conn_depth();

        for (Link *l = conns_.first_link(); l != conns_.end(); l = l->next) {
            Conn *conn = static_cast<Conn *>(static_cast<DispatchConn *>(l));
            std::size_t n = base(conn)->njobs;

            if (n < depth && (best == nullptr || n < base(best)->njobs)) {
                best = conn;
            }
        }

        return best;
    }

    LinkList    conns_;
    LinkList    queue_; /* jobs waiting for a connection */
    std::size_t nconns_ = 0;
    std::size_t nidle_ = 0; /* connections without a job */
    std::size_t nwaiting_ = 0;
};

} // namespace session_cache
