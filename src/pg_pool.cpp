#include "pg_pool.h"

#include <sys/stat.h>

#include <cstring>
#include <new>

namespace session_cache {

static const char kStatement[] = "ngx_session_cache_check";

struct PgConn {
    enum State { Connecting, Preparing, Idle, Querying };

    PgPool           *pool;
    PGconn           *pg = nullptr;
    ngx_connection_t *c = nullptr;
    ino_t             ino = 0;     /* identity of the socket c wraps */
    State             state = Connecting;
    PgJob            *job = nullptr;
    PGresult         *result = nullptr;
    bool              flushing = false;
    ngx_event_t       connect_timer;
    ngx_queue_t       link;
};

/* libpq's messages end in a newline and may run on: keep the first line */
static std::string first_line(const char *msg)
{
    std::string s(msg ? msg : "");
    std::size_t nl = s.find('\n');

    if (nl != std::string::npos) {
        s.resize(nl);
    }

    if (s.empty()) {
        s = "unknown error";
    }

    return s;
}

/* Server notices and errors on an idle connection: to the error log,
 * never to stderr as libpq's default processor would */
static void notice(void *arg, const char *message)
{
    auto *log = static_cast<ngx_log_t *>(arg);

    try {
        ngx_log_error(NGX_LOG_INFO, log, 0,
                      "session_cache: postgres says: %s",
                      first_line(message).c_str());
    } catch (...) {
        /* a C callback: nothing may escape */
    }
}

PgPool::PgPool(ngx_cycle_t *cycle,
               const ngx_http_session_cache_pg_conf_t *conf,
               const ngx_str_t *query)
    : conf_(conf), query_(view(*query))
{
    log_ = *cycle->log;
    log_.handler = log_context;
    log_.data = this;
    log_.action = nullptr;

    ngx_queue_init(&conns_);
    ngx_queue_init(&waiting_);

    *ngx_snprintf(reinterpret_cast<u_char *>(timeout_text_),
                  sizeof(timeout_text_) - 1, "timed out after %Mms",
                  conf->backend.timeout) = '\0';
}

PgPool::~PgPool()
{
    while (!ngx_queue_empty(&waiting_)) {
        ngx_queue_t *q = ngx_queue_head(&waiting_);
        PgJob *job = ngx_queue_data(q, PgJob, queue);
        ngx_queue_remove(q);
        if (job->timer.timer_set) {
            ngx_del_timer(&job->timer);
        }
        delete job;
    }

    while (!ngx_queue_empty(&conns_)) {
        PgConn *pc = ngx_queue_data(ngx_queue_head(&conns_), PgConn, link);
        PgJob *job = pc->job;
        destroy(pc);
        if (job) {
            if (job->timer.timer_set) {
                ngx_del_timer(&job->timer);
            }
            delete job;
        }
    }
}

u_char *PgPool::log_context(ngx_log_t *log, u_char *buf, size_t len)
{
    auto *pool = static_cast<PgPool *>(log->data);
    return ngx_snprintf(buf, len, ", backend: %V",
                        &pool->conf_->backend.display);
}

PgConn *PgPool::free_conn()
{
    for (ngx_queue_t *q = ngx_queue_head(&conns_);
         q != ngx_queue_sentinel(&conns_); q = ngx_queue_next(q))
    {
        PgConn *pc = ngx_queue_data(q, PgConn, link);
        if (pc->job == nullptr) {
            return pc;
        }
    }

    return nullptr;
}

PgJob *PgPool::submit(std::string_view token, PgDone done, void *data,
                      const char **error)
{
    PgConn *pc = free_conn();

    if (pc == nullptr && nconns_ < conf_->backend.pool) {
        pc = open(error);
        if (pc == nullptr) {
            return nullptr;
        }
    }

    auto *job = new PgJob();
    job->pool = this;
    job->token.assign(token.data(), token.size());
    job->done = done;
    job->data = data;
    job->conn = nullptr;
    job->waiting = false;
    job->timer.handler = on_job_timeout;
    job->timer.data = job;
    job->timer.log = &log_;

    ngx_add_timer(&job->timer, conf_->backend.timeout);

    if (pc) {
        assign(pc, job);

    } else {
        ngx_queue_insert_tail(&waiting_, &job->queue);
        job->waiting = true;
        npending_++;
    }

    return job;
}

void PgPool::cancel(PgJob *job)
{
    if (job->waiting) {
        ngx_queue_remove(&job->queue);
        npending_--;
        if (job->timer.timer_set) {
            ngx_del_timer(&job->timer);
        }
        delete job;
        return;
    }

    job->done = nullptr;
    job->data = nullptr;
}

PgConn *PgPool::open(const char **error)
{
    PGconn *pg = PQconnectStartParams(conf_->keywords, conf_->values, 0);

    if (pg == nullptr) {
        *error = "out of memory";
        return nullptr;
    }

    if (PQstatus(pg) == CONNECTION_BAD) {
        ngx_log_error(NGX_LOG_ERR, &log_, 0,
                      "session_cache: postgres: %s",
                      first_line(PQerrorMessage(pg)).c_str());
        PQfinish(pg);
        *error = "connect failed";
        return nullptr;
    }

    PQsetNoticeProcessor(pg, notice, &log_);

    auto *pc = new PgConn();
    pc->pool = this;
    pc->pg = pg;
    pc->connect_timer.handler = on_connect_timeout;
    pc->connect_timer.data = pc;
    pc->connect_timer.log = &log_;

    if (PQsetnonblocking(pg, 1) != 0 || !wrap(pc)) {
        PQfinish(pg);
        delete pc;
        *error = "cannot watch the socket";
        return nullptr;
    }

    ngx_queue_insert_tail(&conns_, &pc->link);
    nconns_++;

    ngx_add_timer(&pc->connect_timer, conf_->backend.connect_timeout);

    return pc;
}

/*
 * Put libpq's current socket under nginx's event loop: read always, level
 * triggered (libpq may leave bytes in the socket), write only while libpq
 * has something to send.
 */
bool PgPool::wrap(PgConn *pc)
{
    int fd = PQsocket(pc->pg);

    if (fd < 0) {
        return false;
    }

    struct stat st;
    if (fstat(fd, &st) == -1) {
        return false;
    }

    ngx_connection_t *c = ngx_get_connection(fd, &log_);
    if (c == nullptr) {
        return false;
    }

    c->data = pc;
    c->read->handler = on_event;
    c->write->handler = on_event;
    c->read->log = &log_;
    c->write->log = &log_;
    c->number = ngx_atomic_fetch_add(ngx_connection_counter, 1);

    pc->c = c;
    pc->ino = st.st_ino;

    if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT) != NGX_OK) {
        release(pc);
        return false;
    }

    /* connecting: wait until the socket is writable */
    return want_write(pc, true);
}

/* Forget the socket without closing it: it is libpq's. */
void PgPool::release(PgConn *pc)
{
    ngx_connection_t *c = pc->c;

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
    pc->c = nullptr;
}

bool PgPool::want_write(PgConn *pc, bool on)
{
    ngx_event_t *wev = pc->c->write;

    if (on && !wev->active) {
        return ngx_add_event(wev, NGX_WRITE_EVENT, NGX_LEVEL_EVENT) == NGX_OK;
    }

    if (!on && wev->active) {
        return ngx_del_event(wev, NGX_WRITE_EVENT, 0) == NGX_OK;
    }

    return true;
}

void PgPool::on_event(ngx_event_t *ev)
{
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    auto *pc = static_cast<PgConn *>(c->data);
    PgPool *pool = pc->pool;

    try {
        pool->drive(pc);

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, &pool->log_, 0,
                      "session_cache: postgres: %s", e.what());
        pool->fail(pc, "internal error");
    }
}

void PgPool::drive(PgConn *pc)
{
    switch (pc->state) {
    case PgConn::Connecting:
        connecting(pc);
        return;
    case PgConn::Preparing:
    case PgConn::Querying:
        busy(pc);
        return;
    case PgConn::Idle:
        idle(pc);
        return;
    }
}

void PgPool::connecting(PgConn *pc)
{
    PostgresPollingStatusType st = PQconnectPoll(pc->pg);

    /* libpq may have moved to another socket (next address, SSL or GSS
     * fallback): follow it, even when the fd number was reused */
    int fd = PQsocket(pc->pg);
    struct stat s;

    if (fd >= 0 && (pc->c == nullptr || fd != pc->c->fd
                    || fstat(fd, &s) == -1 || s.st_ino != pc->ino))
    {
        release(pc);
        if (!wrap(pc)) {
            fail(pc, "cannot watch the socket");
            return;
        }
    }

    switch (st) {
    case PGRES_POLLING_FAILED:
        fail(pc, first_line(PQerrorMessage(pc->pg)).c_str());
        return;

    case PGRES_POLLING_WRITING:
        if (!want_write(pc, true)) {
            fail(pc, "cannot watch the socket");
        }
        return;

    case PGRES_POLLING_READING:
        if (!want_write(pc, false)) {
            fail(pc, "cannot watch the socket");
        }
        return;

    case PGRES_POLLING_OK:
        break;

    default:
        return;
    }

    if (pc->connect_timer.timer_set) {
        ngx_del_timer(&pc->connect_timer);
    }

    if (!PQsendPrepare(pc->pg, kStatement, query_.c_str(), 1, nullptr)) {
        fail(pc, first_line(PQerrorMessage(pc->pg)).c_str());
        return;
    }

    pc->state = PgConn::Preparing;
    pc->flushing = true;
    busy(pc);
}

void PgPool::busy(PgConn *pc)
{
    if (pc->flushing) {
        int rv = PQflush(pc->pg);

        if (rv == -1) {
            fail(pc, first_line(PQerrorMessage(pc->pg)).c_str());
            return;
        }

        pc->flushing = (rv == 1);

        if (!want_write(pc, pc->flushing)) {
            fail(pc, "cannot watch the socket");
            return;
        }
    }

    if (!PQconsumeInput(pc->pg)) {
        fail(pc, first_line(PQerrorMessage(pc->pg)).c_str());
        return;
    }

    while (!PQisBusy(pc->pg)) {
        PGresult *res = PQgetResult(pc->pg);

        if (res == nullptr) {
            completed(pc);
            return;
        }

        if (pc->result == nullptr) {
            pc->result = res;
        } else {
            PQclear(res);
        }
    }
}

void PgPool::idle(PgConn *pc)
{
    if (pc->job) {
        /* posted by assign(): send the query */
        PgJob *job = pc->job;
        const char *values[1] = { job->token.c_str() };

        if (!PQsendQueryPrepared(pc->pg, kStatement, 1, values, nullptr,
                                 nullptr, 0))
        {
            fail(pc, first_line(PQerrorMessage(pc->pg)).c_str());
            return;
        }

        pc->state = PgConn::Querying;
        pc->flushing = true;
        busy(pc);
        return;
    }

    /* nothing asked: the server closed, or sent a notice */
    if (!PQconsumeInput(pc->pg) || PQstatus(pc->pg) != CONNECTION_OK) {
        fail(pc, first_line(PQerrorMessage(pc->pg)).c_str());
        return;
    }

    while (!PQisBusy(pc->pg)) {
        PGresult *res = PQgetResult(pc->pg);
        if (res == nullptr) {
            break;
        }
        PQclear(res);
    }
}

static bool parse_int64(const char *s, std::int64_t *out)
{
    bool neg = (*s == '-');
    std::int64_t v = 0;

    if (neg) {
        s++;
    }

    if (*s == '\0') {
        return false;
    }

    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > (INT64_MAX - 9) / 10) {
            return false;
        }
        v = v * 10 + (*s - '0');
    }

    *out = neg ? -v : v;
    return true;
}

void PgPool::completed(PgConn *pc)
{
    PGresult *res = pc->result;
    pc->result = nullptr;

    if (pc->state == PgConn::Preparing) {
        if (res == nullptr || PQresultStatus(res) != PGRES_COMMAND_OK) {
            ngx_log_error(NGX_LOG_ERR, &log_, 0,
                          "session_cache: postgres: cannot prepare the "
                          "session query: %s",
                          first_line(res ? PQresultErrorMessage(res)
                                         : PQerrorMessage(pc->pg)).c_str());
            PQclear(res);
            fail(pc, "cannot prepare the session query");
            return;
        }

        PQclear(res);
        pc->state = PgConn::Idle;

        if (pc->job) {
            idle(pc);
        } else {
            dispatch();
        }
        return;
    }

    PgJob *job = pc->job;
    pc->job = nullptr;
    pc->state = PgConn::Idle;

    if (job == nullptr) {
        PQclear(res);
        dispatch();
        return;
    }

    job->conn = nullptr;

    if (res == nullptr || PQresultStatus(res) != PGRES_TUPLES_OK) {
        ngx_log_error(NGX_LOG_ERR, &log_, 0,
                      "session_cache: postgres: session query failed: %s",
                      first_line(res ? PQresultErrorMessage(res)
                                     : PQerrorMessage(pc->pg)).c_str());
        PQclear(res);
        finish(job, nullptr, "query failed");
        dispatch();
        return;
    }

    if (PQntuples(res) == 0 || PQnfields(res) < 1 || PQgetisnull(res, 0, 0)) {
        PQclear(res);
        finish(job, nullptr, nullptr);
        dispatch();
        return;
    }

    PgRow row;
    row.user_id = std::string_view(PQgetvalue(res, 0, 0),
                                   PQgetlength(res, 0, 0));
    row.has_expiry = false;
    row.expires_at = 0;

    if (PQnfields(res) >= 2 && !PQgetisnull(res, 0, 1)) {
        if (!parse_int64(PQgetvalue(res, 0, 1), &row.expires_at)) {
            ngx_log_error(NGX_LOG_ERR, &log_, 0,
                          "session_cache: postgres: the session query's "
                          "second column is not unix seconds");
            PQclear(res);
            finish(job, nullptr, "bad expiry column");
            dispatch();
            return;
        }
        row.has_expiry = true;
    }

    finish(job, &row, nullptr);
    PQclear(res);
    dispatch();
}

void PgPool::assign(PgConn *pc, PgJob *job)
{
    pc->job = job;
    job->conn = pc;

    if (pc->state == PgConn::Idle) {
        /* sent from the posted event, never from within submit() */
        ngx_post_event(pc->c->write, &ngx_posted_events);
    }
}

void PgPool::finish(PgJob *job, const PgRow *row, const char *error)
{
    if (job->timer.timer_set) {
        ngx_del_timer(&job->timer);
    }

    if (job->waiting) {
        ngx_queue_remove(&job->queue);
        job->waiting = false;
        npending_--;
    }

    PgDone done = job->done;
    void *data = job->data;
    delete job;

    if (done) {
        done(data, row, error);
    }
}

void PgPool::fail(PgConn *pc, const char *error)
{
    PgJob *job = pc->job;
    std::string text(error);

    if (job) {
        ngx_log_error(NGX_LOG_ERR, &log_, 0, "session_cache: postgres: %s",
                      text.c_str());
    } else {
        ngx_log_error(NGX_LOG_INFO, &log_, 0,
                      "session_cache: idle postgres connection dropped: %s",
                      text.c_str());
    }

    pc->job = nullptr;
    destroy(pc);

    if (job) {
        job->conn = nullptr;
        finish(job, nullptr, text.c_str());
    }

    dispatch();
}

void PgPool::destroy(PgConn *pc)
{
    ngx_queue_remove(&pc->link);
    nconns_--;

    if (pc->connect_timer.timer_set) {
        ngx_del_timer(&pc->connect_timer);
    }

    release(pc);

    if (pc->result) {
        PQclear(pc->result);
    }

    PQfinish(pc->pg);
    delete pc;
}

void PgPool::dispatch()
{
    while (!ngx_queue_empty(&waiting_)) {
        PgConn *pc = free_conn();

        if (pc == nullptr) {
            if (nconns_ >= conf_->backend.pool) {
                return;
            }

            const char *error = nullptr;
            pc = open(&error);

            if (pc == nullptr) {
                PgJob *job = ngx_queue_data(ngx_queue_head(&waiting_), PgJob,
                                            queue);
                finish(job, nullptr, error);
                continue;
            }
        }

        PgJob *job = ngx_queue_data(ngx_queue_head(&waiting_), PgJob, queue);
        ngx_queue_remove(&job->queue);
        job->waiting = false;
        npending_--;
        assign(pc, job);
    }
}

void PgPool::on_connect_timeout(ngx_event_t *ev)
{
    auto *pc = static_cast<PgConn *>(ev->data);
    PgPool *pool = pc->pool;
    char text[64];

    *ngx_snprintf(reinterpret_cast<u_char *>(text), sizeof(text) - 1,
                  "connect timed out after %Mms",
                  pool->conf_->backend.connect_timeout) = '\0';

    pool->fail(pc, text);
}

void PgPool::on_job_timeout(ngx_event_t *ev)
{
    auto *job = static_cast<PgJob *>(ev->data);
    PgPool *pool = job->pool;

    try {
        if (job->waiting) {
            pool->finish(job, nullptr, pool->timeout_text_);
            return;
        }

        PgConn *pc = job->conn;

        if (pc && pc->state == PgConn::Querying) {
            /* PQcancel would block: the connection goes instead */
            pool->fail(pc, pool->timeout_text_);
            return;
        }

        if (pc) {
            /* still connecting: it may serve the next one */
            pc->job = nullptr;
            job->conn = nullptr;
        }

        ngx_log_error(NGX_LOG_ERR, &pool->log_, 0,
                      "session_cache: postgres: %s while connecting",
                      pool->timeout_text_);
        pool->finish(job, nullptr, pool->timeout_text_);

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, &pool->log_, 0,
                      "session_cache: postgres timer: %s", e.what());
    }
}

}  // namespace session_cache
