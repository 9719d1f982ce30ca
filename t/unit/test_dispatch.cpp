/*
 * The pools' shared dispatch (src/pool/dispatch.h) with a fake protocol
 * and a settable clock: queueing order, pipelining limits (depth), opening
 * up to the pool size, what a timeout costs (waiting, connecting or on the
 * wire), a failing connection failing every job on it, idle connections
 * closed after the idle timeout.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

/* cmocka's fail() would shadow Dispatch::fail(); it is not used here */
#undef fail

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "pool/dispatch.h"

using namespace session_cache;

namespace {

int live_jobs = 0;
int live_conns = 0;

struct TConn : DispatchConn {
    int            id = 0;
    bool           connected = true;      /* on_wire once it has a job */
    bool           write_pending = false; /* assign() until flush() */
    std::uint64_t  idle_deadline = 0;
    bool           idle_armed = false;

    TConn() { live_conns++; }
    ~TConn() { live_conns--; }
};

struct TJob : DispatchJob<TConn, int> {
    int            id = 0;
    std::uint64_t  deadline = 0;
    bool           armed = false;

    TJob() { live_jobs++; }
    ~TJob() { live_jobs--; }
};

/* What a caller was told. */
struct Outcome {
    int          id;
    bool         answered;   /* a result, not an error */
    int          result;
    std::string  error;
};

class TestPool;

struct Caller {
    TestPool *pool;
    int       id;
};

class TestPool : public Dispatch<TestPool, TConn, TJob> {
public:
    /* the settings a test changes */
    std::size_t    limit = 2;
    std::size_t    depth = 1;
    bool           open_fails = false;
    bool           connect_at_once = true;
    std::uint64_t  timeout = 100;
    std::uint64_t  idle_timeout = 0;     /* 0: never */

    /* the settable clock, in ms */
    std::uint64_t  now = 1000;

    /* what happened */
    std::vector<TConn *>   conns;        /* open, in the order opened */
    int                    opened = 0;
    int                    closed_idle = 0;
    std::vector<std::pair<int, int>> assigned;   /* job id, conn id */
    std::vector<Outcome>   outcomes;
    int                    ended_ok = 0;
    int                    ended_failed = 0;
    int                    dropped = 0;
    std::vector<Caller *>  callers;

    ~TestPool()
    {
        clear();
        for (Caller *c : callers) {
            delete c;
        }
    }

    using Dispatch::cancel;
    using Dispatch::clear;
    using Dispatch::dispatch;
    using Dispatch::fail;
    using Dispatch::fail_all;
    using Dispatch::finish;
    using Dispatch::front;

    /* a new job (id) as Derived::submit would; false: refused */
    bool submit(int id, const char **error = nullptr)
    {
        const char *e = nullptr;
        auto *job = new TJob();
        auto *caller = new Caller{this, id};

        callers.push_back(caller);
        job->id = id;
        job->done = on_done;
        job->data = caller;

        if (!place(job, error ? error : &e)) {
            delete job;
            return false;
        }

        return true;
    }

    TJob *job(int id)
    {
        for (TConn *c : conns) {
            TJob *found = nullptr;
            each_job(c, [&](TJob *j) {
                if (j->id == id) {
                    found = j;
                }
            });
            if (found) {
                return found;
            }
        }
        return nullptr;
    }

    /* the reply to the oldest job on conn, then the waiting jobs move, as
     * a Derived read handler does */
    void answer(TConn *conn, int result)
    {
        finish(front(conn), &result, nullptr);
        dispatch();
    }

    /* the event loop sends what was written */
    void flush()
    {
        for (TConn *c : conns) {
            c->write_pending = false;
        }
    }

    /* the clock moves on; timers due fire, earliest first */
    void advance(std::uint64_t ms)
    {
        std::uint64_t until = now + ms;

        for (;;) {
            TJob *job = nullptr;
            TConn *conn = nullptr;
            std::uint64_t at = until + 1;

            for (TConn *c : conns) {
                if (c->idle_armed && c->idle_deadline < at) {
                    at = c->idle_deadline;
                    conn = c;
                }
                each_job(c, [&](TJob *j) {
                    if (j->armed && j->deadline < at) {
                        at = j->deadline;
                        job = j;
                        conn = nullptr;
                    }
                });
            }
            for (TJob *j : queued()) {
                if (j->armed && j->deadline < at) {
                    at = j->deadline;
                    job = j;
                    conn = nullptr;
                }
            }

            if (job == nullptr && conn == nullptr) {
                break;
            }

            now = at;

            if (job) {
                job->armed = false;
                expire(job, "timed out");
            } else {
                conn->idle_armed = false;
                if (close_idle(conn)) {
                    closed_idle++;
                }
            }
        }

        now = until;
    }

    std::vector<TJob *> queued()
    {
        return waiting_jobs;
    }

    Expiry rule(int id) { return expiry(job_anywhere(id)); }

    TJob *job_anywhere(int id)
    {
        if (TJob *j = job(id)) {
            return j;
        }
        for (TJob *j : waiting_jobs) {
            if (j->id == id) {
                return j;
            }
        }
        return nullptr;
    }

    std::size_t on(TConn *c) const { return c->njobs; }

    /* Dispatch's host */
    TConn *conn_open(const char **error)
    {
        if (open_fails) {
            *error = "connect failed";
            return nullptr;
        }

        auto *c = new TConn();
        c->id = ++opened;
        c->connected = connect_at_once;
        conns.push_back(c);
        add(c);
        return c;
    }

    void conn_assign(TConn *conn, TJob *job)
    {
        assigned.emplace_back(job->id, conn->id);
        conn->write_pending = true;
        waiting_jobs.erase(std::remove(waiting_jobs.begin(),
                                       waiting_jobs.end(), job),
                           waiting_jobs.end());
    }

    bool conn_on_wire(const TConn *conn) { return conn->connected; }
    std::size_t conn_depth() const { return depth; }
    bool conn_batching(const TConn *conn) { return conn->write_pending; }

    void conn_destroy(TConn *conn)
    {
        remove(conn);
        conns.erase(std::remove(conns.begin(), conns.end(), conn),
                    conns.end());
        delete conn;
    }

    std::size_t conn_limit() const { return limit; }

    void job_started(TJob *job)
    {
        job->deadline = now + timeout;
        job->armed = true;
        /* place() queues it after this if no connection takes it */
        waiting_jobs.push_back(job);
    }

    void job_ended(TJob *job, bool ok)
    {
        job->armed = false;
        unwait(job);
        (ok ? ended_ok : ended_failed)++;
    }

    void job_dropped(TJob *job)
    {
        job->armed = false;
        unwait(job);
        dropped++;
    }

    void idle_begins(TConn *conn)
    {
        if (idle_timeout) {
            conn->idle_deadline = now + idle_timeout;
            conn->idle_armed = true;
        }
    }

    void idle_ends(TConn *conn) { conn->idle_armed = false; }

    void conn_failing(TConn *, const char *) {}
    void changed() {}

private:
    static void on_done(void *data, const int *result, const char *error)
    {
        auto *caller = static_cast<Caller *>(data);
        caller->pool->outcomes.push_back(
            Outcome{caller->id, result != nullptr, result ? *result : 0,
                    error ? error : ""});
    }

    void unwait(TJob *job)
    {
        waiting_jobs.erase(std::remove(waiting_jobs.begin(),
                                       waiting_jobs.end(), job),
                           waiting_jobs.end());
    }

    /* jobs not (yet) on a connection, as the test sees them */
    std::vector<TJob *> waiting_jobs;
};

int
setup(void **state)
{
    live_jobs = 0;
    live_conns = 0;
    *state = new TestPool();
    return 0;
}

int
teardown(void **state)
{
    delete static_cast<TestPool *>(*state);

    /* clear() in the destructor: nothing is left behind */
    assert_int_equal(live_jobs, 0);
    assert_int_equal(live_conns, 0);
    return 0;
}

TestPool &pool_of(void **state)
{
    return *static_cast<TestPool *>(*state);
}

std::vector<int> ids(const std::vector<Outcome> &o)
{
    std::vector<int> v;
    for (const Outcome &x : o) {
        v.push_back(x.id);
    }
    return v;
}

/* Jobs beyond the pool wait, and get a connection first come, first
 * served. */
void
test_queue_order(void **state)
{
    TestPool &p = pool_of(state);
    p.limit = 1;

    for (int id = 1; id <= 4; id++) {
        assert_true(p.submit(id));
    }

    assert_int_equal(p.connections(), 1);
    assert_int_equal(p.waiting(), 3);
    assert_int_equal(p.idle(), 0);
    assert_int_equal(p.assigned.size(), 1);

    TConn *c = p.conns[0];

    for (int n = 0; n < 4; n++) {
        p.flush();
        p.answer(c, 100 + n);
    }

    assert_true(ids(p.outcomes) == std::vector<int>({1, 2, 3, 4}));
    assert_true(p.outcomes[3].answered);
    assert_int_equal(p.outcomes[3].result, 103);
    assert_int_equal(p.waiting(), 0);
    assert_int_equal(p.idle(), 1);
    assert_int_equal(p.ended_ok, 4);
    assert_int_equal(p.opened, 1);
}

/* A waiting job whose caller goes is dropped at once: not counted as a
 * call, never answered; one on the wire stays until its reply, which is
 * dropped. */
void
test_cancel(void **state)
{
    TestPool &p = pool_of(state);
    p.limit = 1;

    assert_true(p.submit(1));
    assert_true(p.submit(2));
    assert_true(p.submit(3));

    p.cancel(p.job_anywhere(2));
    assert_int_equal(p.waiting(), 1);
    assert_int_equal(p.dropped, 1);

    /* job 1 is on the wire: cancelling it only silences it */
    p.cancel(p.job(1));
    assert_int_equal(p.on(p.conns[0]), 1);

    p.answer(p.conns[0], 7);
    p.answer(p.conns[0], 8);

    assert_true(ids(p.outcomes) == std::vector<int>({3}));
    assert_int_equal(p.ended_ok, 2);     /* the breaker still counts 1 */
    assert_int_equal(p.dropped, 1);
}

/* A connection carries up to depth jobs; a job joins a connection whose
 * write is pending rather than opening another; once every connection
 * is busy and the pool is full, the least loaded one with room takes
 * it; beyond that, the queue. */
void
test_pipelining_depth(void **state)
{
    TestPool &p = pool_of(state);
    p.limit = 2;
    p.depth = 3;

    /* one event loop turn: three jobs, one write, one connection */
    for (int id = 1; id <= 3; id++) {
        assert_true(p.submit(id));
    }
    assert_int_equal(p.connections(), 1);
    assert_int_equal(p.on(p.conns[0]), 3);

    /* connection 1 is full: the fourth opens connection 2 */
    assert_true(p.submit(4));
    assert_int_equal(p.connections(), 2);
    assert_int_equal(p.on(p.conns[1]), 1);

    /* written out: no batching; the pool is full, so the least loaded
     * connection with room takes the next jobs */
    p.flush();
    assert_true(p.submit(5));
    assert_true(p.submit(6));
    assert_int_equal(p.on(p.conns[1]), 3);
    assert_int_equal(p.waiting(), 0);

    /* every connection at depth: the queue */
    assert_true(p.submit(7));
    assert_int_equal(p.waiting(), 1);

    /* a reply frees a place on connection 1: the waiting job takes it */
    p.answer(p.conns[0], 1);
    assert_int_equal(p.waiting(), 0);
    assert_int_equal(p.on(p.conns[0]), 3);
    assert_true(p.assigned.back() == std::make_pair(7, 1));
}

/* Connections open up to the pool size; with depth 1 a busy connection
 * takes no second job. */
void
test_open_up_to_pool_size(void **state)
{
    TestPool &p = pool_of(state);
    p.limit = 3;
    p.depth = 1;

    for (int id = 1; id <= 5; id++) {
        assert_true(p.submit(id));
    }

    assert_int_equal(p.opened, 3);
    assert_int_equal(p.connections(), 3);
    assert_int_equal(p.waiting(), 2);
    assert_int_equal(p.idle(), 0);

    /* idle connections are reused before a new one opens */
    p.flush();
    p.answer(p.conns[1], 2);
    assert_int_equal(p.waiting(), 1);
    assert_true(p.assigned.back() == std::make_pair(4, 2));

    p.answer(p.conns[0], 1);
    p.answer(p.conns[2], 3);
    assert_int_equal(p.waiting(), 0);
    assert_int_equal(p.idle(), 1);
    assert_int_equal(p.opened, 3);
}

/* No connection can be opened: the job is refused at once (the caller
 * deletes it), and a waiting job that needed one fails. */
void
test_open_fails(void **state)
{
    TestPool &p = pool_of(state);
    const char *error = nullptr;
    p.limit = 2;

    p.open_fails = true;
    assert_false(p.submit(1, &error));
    assert_string_equal(error, "connect failed");
    assert_int_equal(p.connections(), 0);

    /* one connection, busy; the pool may open a second, which fails */
    p.open_fails = false;
    p.limit = 1;
    assert_true(p.submit(2));
    assert_true(p.submit(3));
    assert_int_equal(p.waiting(), 1);

    p.limit = 2;
    p.open_fails = true;
    p.flush();
    p.fail(p.conns[0], "connection closed");

    /* 2 failed with its connection; 3 could not get a new one */
    assert_true(ids(p.outcomes) == std::vector<int>({2, 3}));
    assert_string_equal(p.outcomes[0].error.c_str(), "connection closed");
    assert_string_equal(p.outcomes[1].error.c_str(), "connect failed");
    assert_int_equal(p.connections(), 0);
    assert_int_equal(p.waiting(), 0);
}

/* A job that waited for a connection past its deadline fails alone: the
 * connection and the job on it carry on. */
void
test_timeout_waiting(void **state)
{
    TestPool &p = pool_of(state);
    p.limit = 1;

    p.timeout = 1000;
    assert_true(p.submit(1));
    p.timeout = 100;
    assert_true(p.submit(2));
    assert_int_equal(p.rule(2), Expiry::Waiting);
    assert_int_equal(p.rule(1), Expiry::OnWire);

    p.advance(99);
    assert_int_equal(p.outcomes.size(), 0);
    p.advance(1);

    assert_true(ids(p.outcomes) == std::vector<int>({2}));
    assert_string_equal(p.outcomes[0].error.c_str(), "timed out");
    assert_int_equal(p.waiting(), 0);
    assert_int_equal(p.connections(), 1);
    assert_int_equal(p.on(p.conns[0]), 1);

    p.answer(p.conns[0], 1);
    assert_true(ids(p.outcomes) == std::vector<int>({2, 1}));
    assert_true(p.outcomes[1].answered);
    assert_int_equal(p.opened, 1);
}

/* On the wire, a timeout costs the connection and every job on it (a late
 * reply would answer the wrong job); a job waiting in the queue is then
 * sent on a new connection, and keeps its own deadline. */
void
test_timeout_on_wire(void **state)
{
    TestPool &p = pool_of(state);
    p.limit = 1;
    p.depth = 3;
    p.timeout = 100;

    assert_true(p.submit(1));
    p.advance(10);
    assert_true(p.submit(2));
    assert_true(p.submit(3));
    assert_true(p.submit(4));    /* waits: connection 1 is at depth */
    assert_int_equal(p.waiting(), 1);

    p.advance(90);               /* job 1's deadline */

    assert_true(ids(p.outcomes) == std::vector<int>({1, 2, 3}));
    for (const Outcome &o : p.outcomes) {
        assert_string_equal(o.error.c_str(), "timed out");
    }
    assert_int_equal(p.ended_failed, 3);
    assert_int_equal(p.connections(), 1);
    assert_int_equal(p.opened, 2);
    assert_int_equal(p.on(p.conns[0]), 1);    /* job 4 */

    p.answer(p.conns[0], 4);
    assert_true(p.outcomes.back().answered);
}

/* Still connecting, nothing is on the wire: the job fails alone and the
 * connection stays for the next one. */
void
test_timeout_connecting(void **state)
{
    TestPool &p = pool_of(state);
    p.limit = 1;
    p.connect_at_once = false;

    assert_true(p.submit(1));
    assert_int_equal(p.rule(1), Expiry::Connecting);

    p.advance(100);

    assert_int_equal(p.outcomes.size(), 1);
    assert_string_equal(p.outcomes[0].error.c_str(), "timed out");
    assert_int_equal(p.connections(), 1);
    assert_int_equal(p.idle(), 1);
    assert_int_equal(p.on(p.conns[0]), 0);

    /* it comes up and serves the next job */
    p.conns[0]->connected = true;
    assert_true(p.submit(2));
    assert_int_equal(p.opened, 1);
    p.answer(p.conns[0], 2);
    assert_true(p.outcomes.back().answered);
}

/* A connection that breaks fails every job on it, oldest first, also the
 * one whose caller left (silently); the waiting jobs move on. */
void
test_fail_fails_every_job(void **state)
{
    TestPool &p = pool_of(state);
    p.limit = 2;
    p.depth = 2;

    for (int id = 1; id <= 4; id++) {
        assert_true(p.submit(id));
        p.flush();
    }
    /* 1,3 on connection 1; 2,4 on connection 2 (least loaded) */
    assert_int_equal(p.on(p.conns[0]), 2);
    assert_int_equal(p.on(p.conns[1]), 2);
    assert_true(p.submit(5));
    assert_int_equal(p.waiting(), 1);

    p.cancel(p.job(3));
    p.fail(p.conns[0], "connection reset");

    assert_true(ids(p.outcomes) == std::vector<int>({1}));
    assert_string_equal(p.outcomes[0].error.c_str(), "connection reset");
    assert_int_equal(p.ended_failed, 2);
    assert_int_equal(p.connections(), 2);       /* 5 opened a new one */
    assert_int_equal(p.on(p.conns[0]), 2);      /* connection 2 */
    assert_int_equal(p.on(p.conns[1]), 1);      /* job 5 */
    assert_int_equal(p.waiting(), 0);
}

/* fail_all() (a Redis Sentinel switch): every connection open then fails
 * with its jobs, idle ones too; the waiting jobs go to new connections,
 * which are not failed in turn. */
void
test_fail_all(void **state)
{
    TestPool &p = pool_of(state);
    p.limit = 3;
    p.depth = 1;

    for (int id = 1; id <= 3; id++) {
        assert_true(p.submit(id));
        p.flush();
    }
    /* 1, 2, 3 on connections 1-3; connection 3 goes idle */
    assert_int_equal(p.connections(), 3);
    p.finish(p.job(3), nullptr, nullptr);
    assert_int_equal(p.idle(), 1);

    p.fail_all("the redis master changed");

    assert_true(ids(p.outcomes) == std::vector<int>({3, 1, 2}));
    for (std::size_t i = 1; i < p.outcomes.size(); i++) {
        assert_string_equal(p.outcomes[i].error.c_str(),
                            "the redis master changed");
    }
    assert_int_equal(p.connections(), 0);
    assert_int_equal(p.waiting(), 0);

    /* with a job waiting: it gets a new connection, which stays */
    for (int id = 5; id <= 8; id++) {
        assert_true(p.submit(id));
        p.flush();
    }
    assert_int_equal(p.waiting(), 1);
    int before = p.opened;

    p.fail_all("the redis master changed");

    assert_int_equal(p.opened, before + 1); /* for job 8 */
    assert_int_equal(p.connections(), 1);
    assert_int_equal(p.on(p.conns[0]), 1);
    assert_int_equal(p.waiting(), 0);
    assert_int_equal(p.outcomes.size(), 6); /* and 5, 6, 7 failed */
}

/* A connection without a job for idle_timeout is closed; a job in between
 * starts the count again; while it carries a job it is never closed. */
void
test_idle_timeout(void **state)
{
    TestPool &p = pool_of(state);
    p.limit = 2;
    p.idle_timeout = 1000;
    p.timeout = 100000;

    assert_true(p.submit(1));
    p.answer(p.conns[0], 1);
    assert_int_equal(p.idle(), 1);

    p.advance(900);
    assert_true(p.submit(2));
    p.advance(900);             /* busy past the idle timeout */
    assert_int_equal(p.connections(), 1);
    p.answer(p.conns[0], 2);

    p.advance(999);
    assert_int_equal(p.connections(), 1);
    p.advance(1);
    assert_int_equal(p.connections(), 0);
    assert_int_equal(p.closed_idle, 1);
    assert_int_equal(p.idle(), 0);

    /* the next job opens a new one */
    assert_true(p.submit(3));
    assert_int_equal(p.opened, 2);
}

/* idle_timeout=0: idle connections stay. */
void
test_idle_timeout_off(void **state)
{
    TestPool &p = pool_of(state);
    p.idle_timeout = 0;
    p.timeout = 1000000;

    assert_true(p.submit(1));
    p.answer(p.conns[0], 1);
    p.advance(3600 * 1000);
    assert_int_equal(p.connections(), 1);
    assert_int_equal(p.idle(), 1);
}

/* clear() (the pool's destructor) drops what waits and what is on the
 * wire without answering anyone. */
void
test_clear(void **state)
{
    TestPool &p = pool_of(state);
    p.limit = 1;

    assert_true(p.submit(1));
    assert_true(p.submit(2));
    p.clear();

    assert_int_equal(p.outcomes.size(), 0);
    assert_int_equal(p.dropped, 2);
    assert_int_equal(p.connections(), 0);
    assert_int_equal(p.waiting(), 0);
    assert_int_equal(live_jobs, 0);
}

}  // namespace

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_queue_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipelining_depth, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_open_up_to_pool_size, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_open_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_waiting, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_timeout_on_wire, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_timeout_connecting, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_fail_all, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fail_fails_every_job, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_idle_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_timeout_off, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_clear, setup, teardown),
    };

    return cmocka_run_group_tests_name("pool dispatch", tests, nullptr,
                                       nullptr);
}
