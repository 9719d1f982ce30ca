#include "pg/pg_pool.h"

#include "guarded.h"
#include "integer.h"
#include "pg/pg_conninfo.h"
#include "pg/pg_socket.h"

/* the data contract's rule for attribute names, pure */
#include "identity.h"

#if (NGX_SSL)
#include <openssl/ssl.h>
#endif

#include <cstring>
#include <memory>
#include <new>

namespace session_cache {

static const char kStatement[] = "ngx_session_cache_check";

const char kPgQueryUnprepared[] = "the session query cannot be prepared";

const char kPgAttrsRefused[] = "the session query's attribute columns are "
                               "refused";

const char kPgUnconfirmed[] = "no row on a hot standby, and no primary "
                              "answered";

/* Internal: "no row" from a hot standby, to be asked again on the
 * primary; never handed to a caller. */
static const char kPgStandbyNoRow[] = "no row on a hot standby";

/* After a connection to the primary failed to get through, the lag guard
 * does not try again for this long (see reask()). */
static constexpr ngx_msec_t kPrimaryDownFor = 1000;

/* The health probe: SELECT 1, and how far behind the server replays
 * when it is a standby (null on a primary, or before any replay). */
static const char kProbe[] =
    "SELECT 1, CASE WHEN pg_catalog.pg_is_in_recovery() THEN "
    "extract(epoch FROM now() - pg_catalog.pg_last_xact_replay_timestamp())"
    " * 1000 END";

static_assert(kMaxAttrs == NGX_HTTP_SESSION_CACHE_MAX_ATTRS,
              "one bound on attributes");

struct PgConn : PoolConn {
    enum State { Connecting, Preparing, Describing, Idle, Querying };

    PgPool     *pool;
    PGconn     *pg = nullptr;
    PgSocket    sock;
    State       state = Connecting;
    PGresult   *result = nullptr;
    bool        flushing = false;
    bool        prepared = false;      /* kStatement exists on it */
    bool        alerted = false;       /* its refusal was logged */
    std::string query_error;           /* why Postgres refused it */
    bool        attrs_refused = false; /* see described() */
    ngx_event_t connect_timer;
    std::size_t from = 0; /* this attempt began at this host */
    std::size_t at = 0;   /* the host libpq is on (an index) */
    /* for notice(), which libpq calls with this connection */
    const ngx_http_session_cache_pg_conf_t *conf = nullptr;
    const std::string                      *query = nullptr;
};

/*
 * libpq's words (its own, and the server's it passes on) enter the module
 * here and only here, for the error log and the health document alike:
 * the first line, with nothing the configuration did not already show
 * and never the password (see pg_message()). Nothing escapes: on failure
 * paths an exception would lose the connection's cleanup; "unknown error"
 * fits std::string's own storage.
 */
static std::string said(const ngx_http_session_cache_pg_conf_t *conf,
                        const std::string &query, const char *msg) noexcept
{
    try {
        PgConninfo c;

        for (const char **k = conf->keywords, **v = conf->values; k && *k;
             k++, v++) {
            if (!c.set(*k, *v)) {
                return "unknown error"; /* out of memory */
            }
        }

        return pg_message(msg ? msg : "", c, query);

    } catch (...) {
        return "unknown error";
    }
}

/* What each state waits for, for the error lines: as nginx's upstream
 * sets log->action. */
static void enter(PgConn *pc, PgConn::State state, bool probe = false)
{
    static const char *const actions[] = {
        "connecting to postgres",
        "preparing the session query",
        "describing the session query",
        nullptr,
        "waiting for the session query's answer",
    };

    pc->state = state;
    pc->log.action = const_cast<char *>(probe ? "waiting for the probe's answer"
                                              : actions[state]);
}

/* Server notices and errors on an idle connection: to the error log,
 * never to stderr as libpq's default processor would */
static void notice(void *arg, const char *message)
{
    auto *pc = static_cast<PgConn *>(arg);

    try {
        ngx_log_error(NGX_LOG_INFO, &pc->log, 0,
                      "session_cache: postgres says: %s",
                      said(pc->conf, *pc->query, message).c_str());
    } catch (...) {
        /* a C callback: nothing may escape */
    }
}

/*
 * The options a pool connects with, owned by it: the configuration's
 * (the one list the listener reads too), with this worker's host order
 * (load_balance=random) and, for the pool on the primary,
 * target_session_attrs=read-write. The host lists are split once, to tell
 * which host libpq is on (locate()).
 */
struct PgPool::Options {
    PgConninfo                       ci;
    std::vector<const char *>        kp, vp; /* into ci */
    ngx_http_session_cache_pg_conf_t conf;
    std::vector<std::string>         hosts, addrs, ports;

    Options(PgConninfo c, const ngx_http_session_cache_pg_conf_t &base)
        : ci(std::move(c)), conf(base)
    {
        for (std::size_t i = 0; i < ci.keywords.size(); i++) {
            kp.push_back(ci.keywords[i].c_str());
            vp.push_back(ci.values[i].c_str());
        }
        kp.push_back(nullptr);
        vp.push_back(nullptr);

        conf.keywords = kp.data();
        conf.values = vp.data();

        std::size_t n = host_count(ci);

        for (auto [key, list] :
             {std::pair{"host", &hosts}, std::pair{"hostaddr", &addrs},
              std::pair{"port", &ports}})
        {
            const std::string *v = ci.get(key);
            *list = v ? split_hosts(*v) : std::vector<std::string>();
            if (list->size() != n) {
                /* a single port for all; none: libpq's defaults */
                list->resize(n, list->size() == 1 ? (*list)[0] : "");
            }
        }
    }
};

static PgConninfo conninfo_of(const ngx_http_session_cache_pg_conf_t *conf)
{
    PgConninfo c;

    for (const char **k = conf->keywords, **v = conf->values; k && *k; k++, v++)
    {
        if (!c.set(*k, *v)) {
            throw std::bad_alloc();
        }
    }

    return c;
}

/* load_balance=random: this worker's order, once at its start (nginx
 * seeded random() per worker) */
static std::unique_ptr<PgPool::Options>
main_options(const ngx_http_session_cache_pg_conf_t *conf)
{
    PgConninfo c = conninfo_of(conf);

    if (conf->backend.load_balance && !shuffle_hosts(&c, [](std::size_t n) {
            return static_cast<std::size_t>(ngx_random()) % n;
        }))
    {
        throw std::bad_alloc();
    }

    return std::unique_ptr<PgPool::Options>(new PgPool::Options(c, *conf));
}

/* Does this target land on a primary only? Then "no row" is final. */
static bool primary_only(const PgConninfo &c)
{
    const std::string *t = c.get("target_session_attrs");
    return t != nullptr && (*t == "read-write" || *t == "primary");
}

PgPool::PgPool(ngx_cycle_t *cycle, const ngx_http_session_cache_pg_conf_t *conf,
               const ngx_str_t *query)
    : PgPool(cycle, main_options(conf), std::string(view(*query)), false)
{
    if (primary_only(opts_->ci)) {
        return;
    }

    /* the lag guard (SPEC §11): a small pool on the primary, opened
     * only when a standby first finds no row */
    PgConninfo c = opts_->ci;
    if (!c.set("target_session_attrs", "read-write")) {
        throw std::bad_alloc();
    }

    std::unique_ptr<Options> o(new Options(c, opts_->conf));
    o->conf.backend.pool = std::min<ngx_uint_t>(2, opts_->conf.backend.pool);

    primary_ = new PgPool(cycle, std::move(o), query_, true);
}

/* the pool on the primary: its figures are not the backend's */
static void unpublished(void *)
{}

PgPool::PgPool(ngx_cycle_t *cycle, std::unique_ptr<Options> opts,
               std::string query, bool primary)
    : Pool(cycle, &opts->conf.backend,
           primary ? "postgres primary" : "postgres", Backend::Postgres,
           primary ? unpublished : nullptr),
      opts_(std::move(opts)), conf_(&opts_->conf), query_(std::move(query)),
      primary_role_(primary)
{}

/* The callers waiting for one query (SPEC: at most one Postgres query
 * per token per worker at a time). */
struct PgFlight {
    PgPool     *pool;
    PgJob      *query;   /* nullptr once answered, or asked again on the
                          * primary */
    std::string token;   /* the key in flights_, when shared */
    bool        shared;  /* in flights_ (a probe is not) */
    ngx_queue_t waiters; /* PgWaiter */
};

PgPool::~PgPool()
{
    clear();

    /* a query asked again there is dropped with it: its flight is below */
    delete primary_;

    /* the queries went without an answer: so do their callers */
    for (auto &entry : flights_) {
        PgFlight *f = entry.second;
        while (!ngx_queue_empty(&f->waiters)) {
            ngx_queue_t *q = ngx_queue_head(&f->waiters);
            ngx_queue_remove(q);
            delete ngx_queue_data(q, PgWaiter, link);
        }
        delete f;
    }
}

PgWaiter *PgPool::submit(std::string_view token, PgDone done, void *data,
                         const char **error)
{
    auto it = flights_.find(token);

    if (it != flights_.end()) {
        /* the same token is already being looked up: share the answer */
        auto *job = new PgWaiter{done, data, it->second, {}};
        ngx_queue_insert_tail(&job->flight->waiters, &job->link);

        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &log_, 0,
                       "session_cache: postgres: joins call %p, already "
                       "running for the same token",
                       it->second->query);
        return job;
    }

    std::unique_ptr<PgJob> q(new PgJob());
    q->token.assign(token.data(), token.size());
    /* on the primary, asked again: the breaker neither refuses nor counts
     * it (a primary down in a failover must not stop the standbys) */
    q->probe = primary_role_;

    return fly(std::move(q), true, done, data, error);
}

/* A health probe is never shared. */
PgWaiter *PgPool::submit_probe(PgDone done, void *data, const char **error)
{
    return probe(done, data, error, false);
}

PgWaiter *PgPool::probe(PgDone done, void *data, const char **error,
                        bool recovery)
{
    std::unique_ptr<PgJob> q(new PgJob());
    q->probe = true;
    q->health = true;
    q->recovery = recovery;

    return fly(std::move(q), false, done, data, error);
}

/* pool.h's recover(): the health probe's query. Reaching a server that
 * target_session_attrs accepts is what counts (a new primary after a
 * promotion); whether the session query can be prepared there is the
 * trial's to find out. */
bool PgPool::probe_recovery()
{
    const char *error;

    return probe(recovery_answered, this, &error, true) != nullptr;
}

void PgPool::recovery_answered(void *data, const PgRow *row, const char *error)
{
    static_cast<PgPool *>(data)->recovered(error == nullptr && row != nullptr);
}

/* Start query q with one caller waiting for it; shared: in flights_, under
 * its token, for later callers to join. What is allocated here is freed
 * if a later allocation throws. */
PgWaiter *PgPool::fly(std::unique_ptr<PgJob> q, bool shared, PgDone done,
                      void *data, const char **error)
{
    std::unique_ptr<PgWaiter> job(new PgWaiter{done, data, nullptr, {}});
    std::unique_ptr<PgFlight> f(
        new PgFlight{this, nullptr, q->token, shared, {}});
    ngx_queue_init(&f->waiters);

    q->done = flight_done;
    q->data = f.get();

    if (shared) {
        flights_.emplace(f->token, f.get());
    }

    PgJob *query = q.release();

    /* start() deletes query when it fails */
    if (!start(query, error)) {
        if (shared) {
            flights_.erase(f->token);
        }
        return nullptr;
    }

    f->query = query;
    job->flight = f.get();
    ngx_queue_insert_tail(&f->waiters, &job->link);

    f.release();
    return job.release();
}

void PgPool::cancel(PgWaiter *job)
{
    PgFlight *f = job->flight;

    ngx_queue_remove(&job->link);
    delete job;

    if (!ngx_queue_empty(&f->waiters) || f->query == nullptr
        || !f->query->waiting) {
        /* others still wait; or the answer is being handed out; or the
         * query is on the wire: flight_done() drops its answer */
        return;
    }

    /* nobody waits for a query that has not gone out yet */
    if (f->shared) {
        flights_.erase(f->token);
    }
    Pool::cancel(f->query);
    delete f;
}

/* A query is answered: every caller waiting for it gets the answer, or,
 * when it was "no row" from a hot standby, the primary is asked first. */
void PgPool::flight_done(void *data, const PgRow *row, const char *error)
{
    auto *f = static_cast<PgFlight *>(data);

    f->query = nullptr;

    if (error == kPgStandbyNoRow) {
        f->pool->reask(f);
        return;
    }

    f->pool->hand_out(f, row, error);
}

/*
 * The lag guard (SPEC §11): a standby may not have replayed the login
 * that created the session yet. The flight stays under its token, so
 * that callers for it keep joining, while the pool on the primary
 * answers. No primary: kPgUnconfirmed (401, nothing remembered).
 */
void PgPool::reask(PgFlight *f)
{
    const char *error = nullptr;

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &log_, 0,
                   "session_cache: postgres: no row on a hot standby, "
                   "asking the primary (flight %p)",
                   f);

    if (primary_ != nullptr && primary_->unreachable_within(kPrimaryDownFor)
        && primary_->connections() == 0)
    {
        /* an invalid token each time would otherwise cost a connection
         * attempt each time */
        error = "no primary reached less than a second ago";

    } else if (primary_ != nullptr && !f->token.empty()
               && primary_->submit(f->token, reasked, f, &error) != nullptr)
    {
        return;
    }

    ngx_log_error(NGX_LOG_ERR, &log_, 0,
                  "session_cache: postgres: a hot standby has no row for "
                  "the session and no primary can confirm it (%s): "
                  "refused, not remembered",
                  error ? error : "no pool on the primary");
    hand_out(f, nullptr, kPgUnconfirmed);
}

/* The primary's answer to a query asked again: the answer for every
 * caller. Nobody waits for it any more: the flight still goes. */
void PgPool::reasked(void *data, const PgRow *row, const char *error)
{
    auto *f = static_cast<PgFlight *>(data);

    if (error != nullptr) {
        ngx_log_error(NGX_LOG_ERR, &f->pool->log_, 0,
                      "session_cache: postgres: a hot standby has no row "
                      "for the session and no primary confirmed it (%s): "
                      "refused, not remembered",
                      error);
        error = kPgUnconfirmed;
    }

    f->pool->hand_out(f, row, error);
}

void PgPool::hand_out(PgFlight *f, const PgRow *row, const char *error)
{
    if (f->shared) {
        flights_.erase(f->token);
    }

    /* a callback may cancel other waiters (their requests went away) or
     * submit new queries, never for this flight: it left flights_ */
    while (!ngx_queue_empty(&f->waiters)) {
        ngx_queue_t *q = ngx_queue_head(&f->waiters);
        ngx_queue_remove(q);

        PgWaiter *job = ngx_queue_data(q, PgWaiter, link);
        PgDone    done = job->done;
        void     *arg = job->data;
        delete job;

        done(arg, row, error);
    }

    delete f;
}

bool PgPool::on_wire(const PgConn *pc) const
{
    return pc->state == PgConn::Querying;
}

/*
 * A new connection. Nothing here throws: the PgConn is allocated before
 * the PGconn, and every failure after PQconnectStartParams finishes the
 * PGconn before it returns.
 */
PgConn *PgPool::open(const char **error)
{
    auto *pc = new (std::nothrow) PgConn();

    if (pc == nullptr) {
        *error = "out of memory";
        return nullptr;
    }

    pc->pool = this;
    pc->conf = conf_;
    pc->query = &query_;
    init_conn(pc);
    enter(pc, PgConn::Connecting);

    pc->connect_timer.handler = on_connect_timeout;
    pc->connect_timer.data = pc;
    pc->connect_timer.log = &pc->log;

    if (!begin(pc, 0, error)) {
        delete pc;
        return nullptr;
    }

    try {
        mine_.push_back(pc);

    } catch (...) {
        pc->sock.release();
        PQfinish(pc->pg);
        delete pc;
        *error = "out of memory";
        return nullptr;
    }

    add(pc);

    ngx_add_timer(&pc->connect_timer, conf_->backend.connect_timeout);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, &pc->log, 0,
                   "session_cache: postgres: connection %p connecting, "
                   "fd %d",
                   pc, PQsocket(pc->pg));

    return pc;
}

/*
 * Start libpq's attempt on the host list from entry from on (0: all of
 * it), wrapping its first socket. false: nothing is left of it, pc->pg
 * is nullptr. Nothing here throws.
 */
bool PgPool::begin(PgConn *pc, std::size_t from, const char **error)
{
    const char *const       *kw = conf_->keywords;
    const char *const       *vals = conf_->values;
    std::unique_ptr<Options> rest;

    if (from > 0) {
        try {
            PgConninfo c = opts_->ci;

            if (!drop_hosts_before(&c, from)) {
                *error = "no host left to try";
                return false;
            }

            rest.reset(new Options(c, *conf_));

        } catch (...) {
            *error = "out of memory";
            return false;
        }

        kw = rest->conf.keywords;
        vals = rest->conf.values;
    }

    /* libpq copies what it keeps of the options */
    pc->pg = PQconnectStartParams(kw, vals, 0);
    pc->from = from;
    pc->at = from;

    if (pc->pg == nullptr) {
        *error = "out of memory";
        return false;
    }

    if (PQstatus(pc->pg) == CONNECTION_BAD) {
        ngx_log_error(NGX_LOG_ERR, &pc->log, 0, "session_cache: %s: %s", name_,
                      said(conf_, query_, PQerrorMessage(pc->pg)).c_str());
        PQfinish(pc->pg);
        pc->pg = nullptr;
        *error = "connect failed";
        return false;
    }

    PQsetNoticeProcessor(pc->pg, notice, pc);

    if (PQsetnonblocking(pc->pg, 1) != 0
        || !pc->sock.wrap(pc->pg, &pc->log, pc, on_event))
    {
        PQfinish(pc->pg);
        pc->pg = nullptr;
        *error = "cannot watch the socket";
        return false;
    }

    locate(pc);
    return true;
}

/*
 * Which entry of the host list libpq is on now: the first from pc->at on
 * (libpq walks the list in order) with its host, port and address, else
 * from the attempt's start (prefer-standby's second pass).
 */
void PgPool::locate(PgConn *pc)
{
    const char *host = PQhost(pc->pg);
    const char *port = PQport(pc->pg);
    const char *addr = PQhostaddr(pc->pg);
    std::size_t n = opts_->hosts.size();

    auto match = [&](std::size_t j) {
        return host && opts_->hosts[j] == host
               && (opts_->ports[j].empty() || (port && opts_->ports[j] == port))
               && (opts_->addrs[j].empty() || addr == nullptr || *addr == '\0'
                   || opts_->addrs[j] == addr);
    };

    for (std::size_t j = pc->at; j < n; j++) {
        if (match(j)) {
            pc->at = j;
            return;
        }
    }

    for (std::size_t j = pc->from; j < pc->at; j++) {
        if (match(j)) {
            pc->at = j;
            return;
        }
    }
}

/*
 * connect_timeout passed on one host (SPEC §11; libpq applies it to each
 * host, but only in its blocking calls): the attempt goes on with the
 * hosts after it, in a new libpq attempt on the same PgConn, jobs kept.
 * No host after it: the connection fails.
 */
void PgPool::restart(PgConn *pc)
{
    std::size_t next = pc->at + 1;

    if (next >= opts_->hosts.size()) {
        fail(pc, connect_timeout_text_);
        return;
    }

    ngx_log_error(NGX_LOG_ERR, &pc->log, 0,
                  "session_cache: %s: host %s port %s did not answer "
                  "within connect_timeout, trying the next host",
                  name_, opts_->hosts[pc->at].c_str(),
                  opts_->ports[pc->at].empty() ? "5432"
                                               : opts_->ports[pc->at].c_str());

    pc->sock.release();
    PQfinish(pc->pg);
    pc->pg = nullptr;

    const char *error = "cannot connect";

    if (!begin(pc, next, &error)) {
        fail(pc, error);
        return;
    }

    ngx_add_timer(&pc->connect_timer, conf_->backend.connect_timeout);
}

/* Called by nginx: nothing may escape. */
void PgPool::on_event(ngx_event_t *ev)
{
    auto   *c = static_cast<ngx_connection_t *>(ev->data);
    auto   *pc = static_cast<PgConn *>(c->data);
    PgPool *pool = pc->pool;

    if (!guarded(&pool->log_, "postgres", [&] { pool->drive(pc); })) {
        pool->crashed(pc);
    }
}

/* Called by nginx: nothing may escape. */
void PgPool::on_connect_timeout(ngx_event_t *ev)
{
    auto   *pc = static_cast<PgConn *>(ev->data);
    PgPool *pool = pc->pool;

    bool ok = guarded(&pool->log_, "postgres", [&] {
        if (pc->state == PgConn::Connecting) {
            pool->restart(pc);
        } else {
            pool->fail(pc, pool->connect_timeout_text_);
        }
    });

    if (!ok) {
        pool->crashed(pc);
    }
}

/* An exception left a step of pc (guarded() logged it): fail pc, if that
 * step did not already close it, and let nothing more escape. */
void PgPool::crashed(PgConn *pc)
{
    if (!owns(pc)) {
        return;
    }

    try {
        fail(pc, "internal error");

    } catch (...) {
        ngx_log_error(NGX_LOG_ALERT, &log_, 0,
                      "session_cache: postgres: cannot fail the "
                      "connection cleanly");
    }
}

/* pool.h, before a connection fails: one that never got through marks
 * this pool's server unreachable (see reask()). */
void PgPool::conn_failed(PgConn *pc, const char *)
{
    if (pc->state == PgConn::Connecting) {
        mark_unreachable();
    }
}

/* A libpq call failed: pc fails with its message, as said() cleans it. */
void PgPool::failed(PgConn *pc, const char *message)
{
    std::string text = said(conf_, query_, message);

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, &pc->log, 0,
                   "session_cache: postgres: connection %p failed: %s", pc,
                   text.c_str());

    fail(pc, text.c_str());
}

void PgPool::drive(PgConn *pc)
{
    switch (pc->state) {
    case PgConn::Connecting:
        connecting(pc);
        return;
    case PgConn::Preparing:
    case PgConn::Describing:
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
    if (pc->sock.moved(pc->pg)) {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, &pc->log, 0,
                       "session_cache: postgres: connection %p moves to "
                       "fd %d",
                       pc, PQsocket(pc->pg));

        pc->sock.release();
        if (!pc->sock.wrap(pc->pg, &pc->log, pc, on_event)) {
            fail(pc, "cannot watch the socket");
            return;
        }

        /* connect_timeout is per host: a new socket, a new host (or
         * the same one again, without TLS) */
        locate(pc);
        if (pc->connect_timer.timer_set) {
            ngx_del_timer(&pc->connect_timer); /* not a lazy re-add */
        }
        ngx_add_timer(&pc->connect_timer, conf_->backend.connect_timeout);
    }

    switch (st) {
    case PGRES_POLLING_FAILED:
        failed(pc, PQerrorMessage(pc->pg));
        return;

    case PGRES_POLLING_WRITING:
        if (!pc->sock.want_write(true)) {
            fail(pc, "cannot watch the socket");
        }
        return;

    case PGRES_POLLING_READING:
        if (!pc->sock.want_write(false)) {
            fail(pc, "cannot watch the socket");
            return;
        }
        more(pc);
        return;

    case PGRES_POLLING_OK:
        break;

    default:
        return;
    }

    if (pc->connect_timer.timer_set) {
        ngx_del_timer(&pc->connect_timer);
    }

    reached();

    ngx_log_debug4(NGX_LOG_DEBUG_HTTP, &pc->log, 0,
                   "session_cache: %s: connection %p on %s, %s", name_, pc,
                   PQhost(pc->pg),
                   PQparameterStatus(pc->pg, "in_hot_standby")
                       ? PQparameterStatus(pc->pg, "in_hot_standby")
                       : "in_hot_standby not reported");

    prepare(pc);
}

/*
 * Over TLS, libpq may hold bytes it has read and OpenSSL decrypted (a
 * record larger than libpq's free buffer): the socket no longer signals
 * them. Read again from a posted event rather than wait for the socket
 * (SPEC §11).
 */
void PgPool::more(PgConn *pc)
{
#if (NGX_SSL)
    auto *ssl = static_cast<SSL *>(PQsslStruct(pc->pg, "OpenSSL"));

    if (ssl != nullptr && SSL_pending(ssl) > 0 && pc->sock.c != nullptr
        && !pc->sock.c->read->posted)
    {
        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, &pc->log, 0,
                       "session_cache: %s: connection %p: libpq holds "
                       "more decrypted bytes, reading again",
                       name_, pc);
        ngx_post_event(pc->sock.c->read, &ngx_posted_events);
    }
#else
    (void) pc;
#endif
}

/* Prepare the session query on pc; prepared() takes the answer. */
void PgPool::prepare(PgConn *pc)
{
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &pc->log, 0,
                   "session_cache: postgres: connection %p: preparing "
                   "the session query",
                   pc);

    if (!PQsendPrepare(pc->pg, kStatement, query_.c_str(), 1, nullptr)) {
        failed(pc, PQerrorMessage(pc->pg));
        return;
    }

    enter(pc, PgConn::Preparing);
    pc->flushing = true;
    busy(pc);
}

void PgPool::busy(PgConn *pc)
{
    if (pc->flushing) {
        int rv = PQflush(pc->pg);

        if (rv == -1) {
            failed(pc, PQerrorMessage(pc->pg));
            return;
        }

        pc->flushing = (rv == 1);

        if (!pc->sock.want_write(pc->flushing)) {
            fail(pc, "cannot watch the socket");
            return;
        }
    }

    if (!PQconsumeInput(pc->pg)) {
        failed(pc, PQerrorMessage(pc->pg));
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

    more(pc);
}

void PgPool::idle(PgConn *pc)
{
    if (PgJob *job = front(pc)) {
        /* posted by assign(): send the query, after preparing the session
         * query again where Postgres refused it (the schema may have been
         * fixed since) */
        if (pc->prepared) {
            if (pc->attrs_refused && !job->health) {
                finish(job, nullptr, kPgAttrsRefused, true);
                dispatch();
                return;
            }
            send(pc, job);
        } else {
            prepare(pc);
        }
        return;
    }

    /* nothing asked: the server closed, or sent a notice */
    if (!PQconsumeInput(pc->pg) || PQstatus(pc->pg) != CONNECTION_OK) {
        failed(pc, PQerrorMessage(pc->pg));
        return;
    }

    while (!PQisBusy(pc->pg)) {
        PGresult *res = PQgetResult(pc->pg);
        if (res == nullptr) {
            break;
        }
        PQclear(res);
    }

    more(pc);
}

void PgPool::send(PgConn *pc, PgJob *job)
{
    const char *values[1] = {job->token.c_str()};

    if (!(job->health ? PQsendQueryParams(pc->pg, kProbe, 0, nullptr, nullptr,
                                          nullptr, nullptr, 0)
                      : PQsendQueryPrepared(pc->pg, kStatement, 1, values,
                                            nullptr, nullptr, 0)))
    {
        failed(pc, PQerrorMessage(pc->pg));
        return;
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, &pc->log, 0,
                   "session_cache: postgres: connection %p: %s sent "
                   "for call %p",
                   pc, job->health ? "SELECT 1" : "the session query", job);

    job->sent_at = ngx_current_msec;
    enter(pc, PgConn::Querying, job->health);
    pc->flushing = true;
    busy(pc);
}

/*
 * Did Postgres refuse the query itself, by its SQLSTATE class: 42 (syntax
 * error or access rule violation: a missing column, table or function, no
 * privilege), 0A (feature not supported), 22 (a constant of the wrong
 * type), 3F (no such schema)? Anything else (a server shutting down, out
 * of resources, a broken connection) is a failure of the backend.
 */
static bool refused_by_query(const PGresult *res)
{
    const char *state =
        res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;

    if (state == nullptr || std::strlen(state) != 5) {
        return false;
    }

    for (const char *cls : {"42", "0A", "22", "3F"}) {
        if (std::strncmp(state, cls, 2) == 0) {
            return true;
        }
    }

    return false;
}

/*
 * The answer to the session query's preparation. Refused (a missing
 * column, a syntax error): a configuration error, not an outage. The
 * connection is sound and stays; the alert is logged once per connection;
 * the session query waiting on it fails with kPgQueryUnprepared, which the
 * breaker does not count (Postgres answered) and the check turns into 500
 * whatever auth_session_fail says; a health probe still runs its SELECT 1
 * and reports the refusal. Any other failure fails the connection.
 */
void PgPool::prepared(PgConn *pc, PGresult *res)
{
    bool ok = res != nullptr && PQresultStatus(res) == PGRES_COMMAND_OK;

    if (!ok && !refused_by_query(res)) {
        std::string why =
            "cannot prepare the session query: "
            + said(conf_, query_,
                   res ? PQresultErrorMessage(res) : PQerrorMessage(pc->pg));
        PQclear(res);
        fail(pc, why.c_str());
        return;
    }

    if (ok) {
        PQclear(res);

        /* the names of the attribute columns, before any query runs */
        if (!PQsendDescribePrepared(pc->pg, kStatement)) {
            failed(pc, PQerrorMessage(pc->pg));
            return;
        }

        enter(pc, PgConn::Describing);
        pc->flushing = true;
        busy(pc);
        return;
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &pc->log, 0,
                   "session_cache: postgres: connection %p: the session "
                   "query was refused",
                   pc);

    /* the server's words without the severity: "column ... does not
     * exist" */
    const char *why =
        res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : nullptr;
    pc->query_error = said(conf_, query_,
                           why   ? why
                           : res ? PQresultErrorMessage(res)
                                 : PQerrorMessage(pc->pg));
    if (!pc->alerted) {
        pc->alerted = true;
        ngx_log_error(NGX_LOG_ALERT, &pc->log, 0,
                      "session_cache: postgres refused to prepare the "
                      "session query (session_cache_query), a "
                      "configuration error: %s; requests that need "
                      "postgres get 500",
                      pc->query_error.c_str());
    }

    PQclear(res);
    ready(pc, false);
}

/* A column name for the error log: a name that is not printable ASCII is
 * left out. */
static std::string printable_name(const char *name)
{
    std::string out = "\"";

    for (const char *p = name; *p; p++) {
        if (*p < 0x20 || *p > 0x7e || p - name >= 64) {
            return "";
        }
        out.push_back(*p);
    }

    return out + "\" ";
}

/*
 * The prepared session query's description: columns after the second are
 * attributes, named by their column names (SPEC §12). A name that is not
 * a plain lower-case identifier, a name used twice, or more than
 * kMaxAttrs of them: an error in the log (once per connection) and in the
 * health document, and every session query on the connection fails with
 * kPgAttrsRefused, which the check answers as if Postgres had failed.
 */
void PgPool::described(PgConn *pc, PGresult *res)
{
    if (res == nullptr || PQresultStatus(res) != PGRES_COMMAND_OK) {
        std::string why =
            "cannot describe the session query: "
            + said(conf_, query_,
                   res ? PQresultErrorMessage(res) : PQerrorMessage(pc->pg));
        PQclear(res);
        fail(pc, why.c_str());
        return;
    }

    int         n = PQnfields(res);
    std::string error;

    if (n - 2 > static_cast<int>(kMaxAttrs)) {
        error = "the session query has " + std::to_string(n - 2)
                + " attribute columns, at most " + std::to_string(kMaxAttrs);
    }

    for (int i = 2; i < n && error.empty(); i++) {
        const char *name = PQfname(res, i);

        if (!attr_name_acceptable(name)) {
            error = "the name of its column " + std::to_string(i + 1) + " "
                    + printable_name(name)
                    + "is not a plain lower-case identifier (an attribute "
                      "name: [a-z_][a-z0-9_]*, at most 63 bytes, not "
                      "user_id)";
        }

        for (int j = 2; j < i && error.empty(); j++) {
            if (std::strcmp(name, PQfname(res, j)) == 0) {
                error = "its columns " + std::to_string(j + 1) + " and "
                        + std::to_string(i + 1) + " have the same name";
            }
        }
    }

    PQclear(res);

    pc->query_error = error;
    pc->attrs_refused = !error.empty();

    if (pc->attrs_refused && !pc->alerted) {
        pc->alerted = true;
        ngx_log_error(NGX_LOG_ERR, &pc->log, 0,
                      "session_cache: session_cache_query: %s; requests "
                      "that need postgres are answered as if it had "
                      "failed",
                      error.c_str());
    }

    ngx_log_debug3(NGX_LOG_DEBUG_HTTP, &pc->log, 0,
                   "session_cache: postgres: connection %p: the session "
                   "query is prepared, %d attribute columns%s",
                   pc, n > 2 ? n - 2 : 0, pc->attrs_refused ? ", refused" : "");

    ready(pc, true);
}

/* The session query's preparation is over (ok: it is prepared): the
 * call waiting on pc, if any, goes on. */
void PgPool::ready(PgConn *pc, bool ok)
{
    enter(pc, PgConn::Idle);
    pc->prepared = ok;

    PgJob *job = front(pc);

    if (job == nullptr) {
        dispatch();
        return;
    }

    if (job->health || (ok && !pc->attrs_refused)) {
        send(pc, job);
        return;
    }

    finish(job, nullptr, ok ? kPgAttrsRefused : kPgQueryUnprepared, true);
    dispatch();
}

void PgPool::completed(PgConn *pc)
{
    PGresult *res = pc->result;
    pc->result = nullptr;

    if (pc->state == PgConn::Preparing) {
        prepared(pc, res);
        return;
    }

    if (pc->state == PgConn::Describing) {
        described(pc, res);
        return;
    }

    PgJob *job = front(pc);
    enter(pc, PgConn::Idle);

    if (job == nullptr) {
        PQclear(res);
        dispatch();
        return;
    }

    /* finish() takes it off the connection */

    if (job->health) {
        probed(pc, job, res);
        return;
    }

    if (res == nullptr || PQresultStatus(res) != PGRES_TUPLES_OK) {
        ngx_log_error(
            NGX_LOG_ERR, &pc->log, 0,
            "session_cache: postgres: session query failed: %s",
            said(conf_, query_,
                 res ? PQresultErrorMessage(res) : PQerrorMessage(pc->pg))
                .c_str());
        PQclear(res);
        finish(job, nullptr, "query failed");
        dispatch();
        return;
    }

    if (PQntuples(res) == 0 || PQnfields(res) < 1 || PQgetisnull(res, 0, 0)) {
        /* the lag guard: "no row" from a hot standby is asked again on
         * the primary (flight_done()); Postgres answered, either way */
        const char *standby = PQparameterStatus(pc->pg, "in_hot_standby");
        bool        again = primary_ != nullptr && standby != nullptr
                     && std::strcmp(standby, "on") == 0;

        ngx_log_debug3(NGX_LOG_DEBUG_HTTP, &pc->log, 0,
                       "session_cache: postgres: connection %p: no row "
                       "for call %p%s",
                       pc, job, again ? ", on a hot standby" : "");
        PQclear(res);
        finish(job, nullptr, again ? kPgStandbyNoRow : nullptr, true);
        dispatch();
        return;
    }

    PgRow row;
    row.user_id =
        std::string_view(PQgetvalue(res, 0, 0), PQgetlength(res, 0, 0));
    row.has_expiry = false;
    row.expires_at = 0;
    row.asked_at = job->sent_at;

    if (PQnfields(res) >= 2 && !PQgetisnull(res, 0, 1)) {
        if (!parse_integer(std::string_view(PQgetvalue(res, 0, 1)),
                           &row.expires_at)) {
            ngx_log_error(NGX_LOG_ERR, &pc->log, 0,
                          "session_cache: postgres: the session query's "
                          "second column is not unix seconds");
            PQclear(res);
            finish(job, nullptr, "bad expiry column");
            dispatch();
            return;
        }
        row.has_expiry = true;
    }

    /* described() checked the names; the bound again, against the result
     * itself */
    for (int i = 2; i < PQnfields(res) && row.nattrs < kMaxAttrs; i++) {
        if (!PQgetisnull(res, 0, i)) {
            row.attrs[row.nattrs].name = PQfname(res, i);
            row.attrs[row.nattrs].value =
                std::string_view(PQgetvalue(res, 0, i), PQgetlength(res, 0, i));
            row.nattrs++;
        }
    }

    ngx_log_debug2(NGX_LOG_DEBUG_HTTP, &pc->log, 0,
                   "session_cache: postgres: connection %p: a row for "
                   "call %p",
                   pc, job);

    finish(job, &row, nullptr);
    PQclear(res);
    dispatch();
}

/* The health probe's answer: SELECT 1 and the server's version. */
void PgPool::probed(PgConn *pc, PgJob *job, PGresult *res)
{
    if (res == nullptr || PQresultStatus(res) != PGRES_TUPLES_OK
        || PQntuples(res) != 1 || PQnfields(res) < 1)
    {
        std::string error =
            "SELECT 1 failed: "
            + said(conf_, query_,
                   res ? PQresultErrorMessage(res) : PQerrorMessage(pc->pg));

        ngx_log_debug2(NGX_LOG_DEBUG_HTTP, &pc->log, 0,
                       "session_cache: postgres: connection %p: %s", pc,
                       error.c_str());
        PQclear(res);
        finish(job, nullptr, error.c_str());
        dispatch();
        return;
    }

    const char *version = PQparameterStatus(pc->pg, "server_version");

    PgRow row;
    row.user_id =
        std::string_view(PQgetvalue(res, 0, 0), PQgetlength(res, 0, 0));
    row.has_expiry = false;
    row.expires_at = 0;
    row.server_version = version ? version : "";
    row.query_error = pc->query_error;

    /* where it ran, and how far behind a standby replays (SPEC §11) */
    const char *standby = PQparameterStatus(pc->pg, "in_hot_standby");
    row.host = PQhost(pc->pg) ? PQhost(pc->pg) : "";
    row.port = PQport(pc->pg) ? PQport(pc->pg) : "";
    row.role = standby == nullptr                ? "unknown"
               : std::strcmp(standby, "on") == 0 ? "standby"
                                                 : "primary";

    if (PQnfields(res) >= 2 && !PQgetisnull(res, 0, 1)) {
        row.has_lag = true;
        row.lag_ms = std::strtod(PQgetvalue(res, 0, 1), nullptr);
    }

    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &pc->log, 0,
                   "session_cache: postgres: connection %p: probe answered",
                   pc);

    finish(job, &row, nullptr);
    PQclear(res);
    dispatch();
}

void PgPool::assign(PgConn *pc, PgJob *)
{
    if (pc->state == PgConn::Idle) {
        /* sent from the posted event, never from within submit() */
        ngx_post_event(pc->sock.c->write, &ngx_posted_events);
    }
}

void PgPool::destroy(PgConn *pc)
{
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, &pc->log, 0,
                   "session_cache: postgres: closing connection %p", pc);

    remove(pc);
    for (std::size_t i = 0; i < mine_.size(); i++) {
        if (mine_[i] == pc) {
            mine_[i] = mine_.back();
            mine_.pop_back();
            break;
        }
    }

    if (pc->connect_timer.timer_set) {
        ngx_del_timer(&pc->connect_timer);
    }

    pc->sock.release();

    if (pc->result) {
        PQclear(pc->result);
    }

    PQfinish(pc->pg);
    delete pc;
}

} // namespace session_cache

namespace session_cache {

void PgPool::host_figures(std::vector<PgHostFigure> *out) const
{
    for (const PgConn *pc : mine_) {
        if (pc->state == PgConn::Connecting
            || PQstatus(pc->pg) != CONNECTION_OK) {
            continue;
        }

        const char *standby = PQparameterStatus(pc->pg, "in_hot_standby");
        const char *role = standby == nullptr                ? "unknown"
                           : std::strcmp(standby, "on") == 0 ? "standby"
                                                             : "primary";
        std::string host = PQhost(pc->pg) ? PQhost(pc->pg) : "";
        std::string port = PQport(pc->pg) ? PQport(pc->pg) : "";
        const char *pool = primary_role_ ? "primary" : "main";
        bool        found = false;

        for (PgHostFigure &h : *out) {
            if (h.pool == pool && h.host == host && h.port == port
                && h.role == role) {
                h.connections++;
                found = true;
            }
        }

        if (!found) {
            out->push_back(PgHostFigure{pool, host, port, role, 1});
        }
    }
}

std::vector<PgHostFigure> PgPool::hosts() const
{
    std::vector<PgHostFigure> out;

    host_figures(&out);

    if (primary_ != nullptr) {
        primary_->host_figures(&out);
    }

    return out;
}

} // namespace session_cache
