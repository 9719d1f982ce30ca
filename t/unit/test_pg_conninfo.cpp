/*
 * Postgres conninfo parsing and masking (SPEC §2, §7): key=value and URI
 * forms through libpq, and no password in any error or masked form.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "pg/pg_conninfo.h"

using session_cache::mask_pg_conninfo;
using session_cache::pg_message;
using session_cache::parse_pg_conninfo;
using session_cache::PgConninfo;
using session_cache::split_hosts;
using session_cache::check_pg_options;

namespace {

const char kSecret[] = "Hunter2Secret";

PgConninfo
ok(const std::string &conninfo, int line)
{
    PgConninfo c;
    std::string err = parse_pg_conninfo(conninfo, &c);

    if (!err.empty()) {
        fail_msg("line %d: [%s] refused: %s", line, conninfo.c_str(),
                 err.c_str());
    }

    assert_int_equal(c.keywords.size(), c.values.size());

    for (const std::string &v : c.values) {
        assert_false(v.empty());
    }

    std::string m = mask_pg_conninfo(c);
    const std::string *pw = c.get("password");

    if (pw && m.find(*pw) != std::string::npos) {
        fail_msg("line %d: password in mask [%s]", line, m.c_str());
    }
    if (m.find(kSecret) != std::string::npos) {
        fail_msg("line %d: secret in mask [%s]", line, m.c_str());
    }

    return c;
}

#define OK(s) ok((s), __LINE__)


std::string
refused(const std::string &conninfo, const char *secret, int line)
{
    PgConninfo c;
    c.set("host", "untouched");
    std::string err = parse_pg_conninfo(conninfo, &c);

    if (err.empty()) {
        fail_msg("line %d: [%s] accepted", line, conninfo.c_str());
    }
    if (secret && err.find(secret) != std::string::npos) {
        fail_msg("line %d: [%s]: error \"%s\" leaks \"%s\"", line,
                 conninfo.c_str(), err.c_str(), secret);
    }
    if (err.find('\n') != std::string::npos) {
        fail_msg("line %d: error \"%s\" has a newline", line, err.c_str());
    }

    /* a failed parse leaves the output alone */
    assert_int_equal(c.keywords.size(), 1);
    assert_string_equal(c.get("host")->c_str(), "untouched");

    return err;
}

#define REFUSED(s, secret) refused((s), (secret), __LINE__)


std::string
get(const PgConninfo &c, const char *key)
{
    const std::string *v = c.get(key);
    return v ? *v : std::string("(unset)");
}


void
test_keyword_value(void **)
{
    PgConninfo c = OK("host=db.example port=5432 dbname=app user=nginx "
                      "password=Hunter2Secret");
    assert_string_equal(get(c, "host").c_str(), "db.example");
    assert_string_equal(get(c, "port").c_str(), "5432");
    assert_string_equal(get(c, "dbname").c_str(), "app");
    assert_string_equal(get(c, "user").c_str(), "nginx");
    assert_string_equal(get(c, "password").c_str(), kSecret);
    assert_int_equal(c.keywords.size(), 5);
    assert_null(c.get("sslmode"));    /* defaults are not filled in */
    assert_null(c.get("connect_timeout"));

    /* quoting, escapes and spaces around '=' */
    c = OK("  host = h  password='it\\'s a \\\\ secret' dbname = 'my db' ");
    assert_string_equal(get(c, "host").c_str(), "h");
    assert_string_equal(get(c, "password").c_str(), "it's a \\ secret");
    assert_string_equal(get(c, "dbname").c_str(), "my db");

    /* empty values count as unset */
    c = OK("host=h password='' user=''");
    assert_null(c.get("password"));
    assert_null(c.get("user"));
    assert_int_equal(c.keywords.size(), 1);

    c = OK("host=a,b,/tmp port=5432,5433,5434 target_session_attrs=any");
    assert_string_equal(get(c, "host").c_str(), "a,b,/tmp");
    assert_string_equal(get(c, "target_session_attrs").c_str(), "any");

    /* libpq's own meaning of "": every default */
    c = OK("");
    assert_int_equal(c.keywords.size(), 0);
    c = OK("   ");
    assert_int_equal(c.keywords.size(), 0);
}


void
test_uri(void **)
{
    PgConninfo c = OK("postgresql://nginx:Hunter2Secret@db.example:5433/app"
                      "?sslmode=require&connect_timeout=5");
    assert_string_equal(get(c, "host").c_str(), "db.example");
    assert_string_equal(get(c, "port").c_str(), "5433");
    assert_string_equal(get(c, "dbname").c_str(), "app");
    assert_string_equal(get(c, "user").c_str(), "nginx");
    assert_string_equal(get(c, "password").c_str(), kSecret);
    assert_string_equal(get(c, "sslmode").c_str(), "require");
    assert_string_equal(get(c, "connect_timeout").c_str(), "5");

    c = OK("postgres://h/db");
    assert_string_equal(get(c, "host").c_str(), "h");
    assert_string_equal(get(c, "dbname").c_str(), "db");
    assert_null(c.get("user"));

    c = OK("postgresql://u:p%40ss%2Fw%3Ard@h");
    assert_string_equal(get(c, "password").c_str(), "p@ss/w:rd");

    c = OK("postgresql://u@[::1]:5432,db2:5433/app");
    assert_string_equal(get(c, "host").c_str(), "::1,db2");
    assert_string_equal(get(c, "port").c_str(), "5432,5433");

    c = OK("postgresql:///app?host=/var/run/postgresql");
    assert_string_equal(get(c, "host").c_str(), "/var/run/postgresql");
    assert_string_equal(get(c, "dbname").c_str(), "app");

    c = OK("postgresql://");
    assert_int_equal(c.keywords.size(), 0);
}


void
test_errors(void **)
{
    std::string err;

    err = REFUSED("host=h Hunter2Secret", kSecret);
    assert_non_null(strstr(err.c_str(), "missing \"***\" after \"***\""));

    err = REFUSED("host=h password", nullptr);
    assert_non_null(strstr(err.c_str(), "\"***\""));

    err = REFUSED("host=h password='Hunter2Secret", kSecret);
    assert_non_null(strstr(err.c_str(), "unterminated quoted string"));

    err = REFUSED("host=h bogus=1 password=Hunter2Secret", kSecret);
    assert_non_null(strstr(err.c_str(), "invalid connection option"));
    /* a mistyped keyword is named: it is never a value */
    assert_non_null(strstr(err.c_str(), "option \"bogus\""));

    err = REFUSED("host=h Hunter2Secret=x", kSecret);
    err = REFUSED("password=Hunter2Secret host", kSecret);

    err = REFUSED("postgresql://u:Hunter2Secret%zz@h/db", kSecret);
    err = REFUSED("postgresql://u:Hunter2Secret@h/db?bogus=1", kSecret);
    err = REFUSED("postgresql://u:Hunter2Secret@h/db?Hunter2Secret=1",
                  kSecret);
    err = REFUSED("postgresql://u:Hunter2Secret@[::1/db", kSecret);
    err = REFUSED("postgresql://u:Hunter2Secret@h/db?sslmode", kSecret);
    err = REFUSED("postgresql://u:Hunter2Secret@h/d%00b", kSecret);

    err = REFUSED(std::string("host=h\0password=Hunter2Secret", 29),
                  kSecret);
    assert_non_null(strstr(err.c_str(), "NUL"));

    /* found by t/fuzz (corpus/pg_conninfo/crash-quote-in-fragment): a
     * quote inside the input made libpq's quoted fragment hold a quote,
     * and pairing the quotes up showed the rest of the fragment */
    err = REFUSED("host=h password\"Hunter2Secret", kSecret);
    assert_non_null(strstr(err.c_str(), "missing \"***\""));
    err = REFUSED("hpostgresql\"\xc9:/'Hunter2Secret\\'s'", kSecret);
    err = REFUSED("host=h a\"b\"Hunter2Secret\"", kSecret);

    /* mentions of "***" but no trailing newline */
    err = REFUSED("host=h port", nullptr);
    assert_true(err.back() != '\n');
    assert_true(err.back() != ' ');
}


void
test_mask(void **)
{
    struct {
        const char *in;
        const char *masked;
    } cases[] = {
        {"host=db.example port=5432 dbname=app user=nginx "
         "password=Hunter2Secret",
         "host=db.example port=5432 dbname=app user=nginx password=***"},

        /* fixed order, whatever the input order */
        {"password=Hunter2Secret user=nginx dbname=app port=5432 "
         "hostaddr=10.0.0.1 host=db.example",
         "host=db.example hostaddr=10.0.0.1 port=5432 dbname=app "
         "user=nginx password=***"},

        {"host=h", "host=h"},
        {"dbname=app", "dbname=app"},
        {"password=Hunter2Secret", "password=***"},
        {"", ""},

        /* other options never show: they may hold secrets */
        {"host=h sslmode=verify-full sslpassword=Hunter2Secret "
         "sslkey=/k application_name=x options='-c a=b'",
         "host=h"},

        /* host lists stay as they are */
        {"host=a,b,/tmp port=5432,5433,5434",
         "host=a,b,/tmp port=5432,5433,5434"},
        {"postgresql://u:Hunter2Secret@[::1]:5432,db2:5433/app",
         "host=::1,db2 port=5432,5433 dbname=app user=u password=***"},

        /* values that need quoting are quoted the libpq way */
        {"dbname='my db' user='o\\'brien'",
         "dbname='my db' user='o\\'brien'"},

        /* a dbname that is itself a connection string may carry one */
        {"dbname='host=x password=Hunter2Secret'", "dbname=***"},
        {"dbname=postgresql://u:Hunter2Secret@h/db", "dbname=***"},

        {"postgresql://nginx:Hunter2Secret@db.example:5433/app"
         "?sslmode=require",
         "host=db.example port=5433 dbname=app user=nginx password=***"},
        {"postgresql://h", "host=h"},
    };

    for (const auto &t : cases) {
        PgConninfo c = ok(t.in, __LINE__);
        std::string m = mask_pg_conninfo(c);

        if (m != t.masked) {
            fail_msg("[%s] masked as [%s], expected [%s]", t.in, m.c_str(),
                     t.masked);
        }

        /* the mask is itself a conninfo that libpq reads back */
        PgConninfo back;
        assert_true(parse_pg_conninfo(m, &back).empty());
    }
}


void
test_get_set(void **)
{
    PgConninfo c;

    assert_null(c.get("host"));
    assert_true(c.set("host", "a"));
    assert_string_equal(c.get("host")->c_str(), "a");
    assert_true(c.set("connect_timeout", "2"));
    assert_true(c.set("host", "b"));
    assert_string_equal(c.get("host")->c_str(), "b");
    assert_int_equal(c.keywords.size(), 2);
    assert_int_equal(c.values.size(), 2);
    assert_null(c.get("hos"));
    assert_null(c.get("hostx"));
}


void
test_split_hosts(void **)
{
    std::vector<std::string> h;

    h = split_hosts("db");
    assert_int_equal(h.size(), 1);
    assert_string_equal(h[0].c_str(), "db");

    h = split_hosts("a,b,/tmp");
    assert_int_equal(h.size(), 3);
    assert_string_equal(h[0].c_str(), "a");
    assert_string_equal(h[1].c_str(), "b");
    assert_string_equal(h[2].c_str(), "/tmp");

    h = split_hosts("");
    assert_int_equal(h.size(), 1);
    assert_string_equal(h[0].c_str(), "");

    h = split_hosts(",a,,");
    assert_int_equal(h.size(), 4);
    assert_string_equal(h[0].c_str(), "");
    assert_string_equal(h[1].c_str(), "a");
    assert_string_equal(h[2].c_str(), "");
    assert_string_equal(h[3].c_str(), "");
}

/* Issue 10 item 4: an unencoded '@' or '/' in a URI's password moves
 * pieces of it into the host, port or database name. */
void
test_uri_password_pieces(void **)
{
    std::string err;

    err = REFUSED("postgresql://nginx:PgSecret/9x2Wz@127.0.0.1:5432/sessions",
                  "PgSecret");
    assert_null(strstr(err.c_str(), "9x2Wz"));
    assert_non_null(strstr(err.c_str(), "%40"));
    err = REFUSED("postgresql://nginx:PgSecret@9x2Wz@127.0.0.1/sessions",
                  "9x2Wz");
    assert_null(strstr(err.c_str(), "PgSecret"));
    assert_null(strstr(err.c_str(), "127.0.0.1"));
    err = REFUSED("postgres://u:a@b@h/db", "a@b");
    err = REFUSED("postgresql://h/db@x", nullptr);

    /* '@' in the query part is libpq's business, not the authority's */
    PgConninfo c = OK("postgresql://h/db?application_name=a@b");
    assert_false(c.secret_authority);

    c = OK("postgresql://db.example/sessions");
    assert_false(c.secret_authority);
    c = OK("host=db.example port=5432 password=Hunter2Secret");
    assert_false(c.secret_authority);
    c = OK("postgresql://db.example:5432/sessions");
    assert_true(c.secret_authority);
    c = OK("postgresql://u@db.example/sessions");
    assert_true(c.secret_authority);
    /* the host forgotten: libpq reads host "nginx", port "PgSecret" */
    c = OK("postgresql://nginx:PgSecret/sessions");
    assert_true(c.secret_authority);
    assert_string_equal(get(c, "port").c_str(), "PgSecret");
}


PgConninfo
conf_with(const char *password)
{
    PgConninfo c = OK("host=127.0.0.1,db.example hostaddr=127.0.0.1,10.0.0.1 "
                      "port=54321 dbname=sessions user=edge");
    if (password) {
        assert_true(c.set("password", password));
    }
    return c;
}

const char kQuery[] = "SELECT user_id FROM platform.user_sessions "
                      "WHERE token = $1";

std::string
said(const char *msg, const char *password)
{
    return pg_message(msg, conf_with(password), kQuery);
}


/* Issue 10 item 1: libpq's words pass through pg_message() once. */
void
test_message(void **)
{
    const char *refused =
        "connection to server at \"127.0.0.1\", port 54321 failed: "
        "Connection refused\n\tIs the server running on that host and "
        "accepting TCP/IP connections?\n";
    const char *auth =
        "connection to server at \"127.0.0.1\", port 54321 failed: FATAL:  "
        "password authentication failed for user \"edge\"\n";
    const char *relation =
        "ERROR:  relation \"platform.user_sessions\" does not exist\n"
        "LINE 1: SELECT user_id FROM platform.user_sessions WHERE ...\n";

    /* the shape stays, first line only */
    assert_string_equal(said(refused, nullptr).c_str(),
        "connection to server at \"127.0.0.1\", port 54321 failed: "
        "Connection refused");
    assert_string_equal(said(auth, nullptr).c_str(),
        "connection to server at \"127.0.0.1\", port 54321 failed: FATAL:  "
        "password authentication failed for user \"edge\"");
    assert_string_equal(said(relation, nullptr).c_str(),
        "ERROR:  relation \"platform.user_sessions\" does not exist");
    assert_string_equal(said("", nullptr).c_str(), "unknown error");
    assert_string_equal(said("server closed the connection unexpectedly\n",
                             nullptr).c_str(),
                        "server closed the connection unexpectedly");
    assert_string_equal(said("connection to server on socket "
                             "\"/run/postgresql/.s.PGSQL.5432\" failed: "
                             "No such file or directory", nullptr).c_str(),
                        "connection to server on socket "
                        "\"/run/postgresql/.s.PGSQL.5432\" failed: "
                        "No such file or directory");

    /* no oracle: the password changes nothing it does not appear in,
     * however short or common it is */
    for (const char *pw : {"true", "postgres", "0", "1", "redis", "ok", ":",
                           "\"", "5", "4321", "edge", "failed", "FATAL",
                           "127.0.0.1", "relation", "refused"})
    {
        for (const char *m : {refused, auth, relation}) {
            std::string neutral = said(m, "neutral-Xq9");
            std::string with = said(m, pw);
            if (neutral != with
                && !(std::strcmp(pw, "failed") == 0 && m == auth)
                && !(std::strcmp(pw, "refused") == 0 && m == refused)
                && !(std::strcmp(pw, "relation") == 0 && m == relation))
            {
                fail_msg("password [%s] changed [%s] into [%s]", pw,
                         neutral.c_str(), with.c_str());
            }
        }
    }

    /* a server that was sent the password in clear text and repeats it */
    std::string s = said("connection to server at \"127.0.0.1\", port 54321 "
                         "failed: FATAL:  no thanks, Hunter2Secret\n",
                         kSecret);
    assert_string_equal(s.c_str(), "connection to server at \"127.0.0.1\", "
                        "port 54321 failed: FATAL:  (message withheld)");
    s = said("ERROR:  bad password \"Hunter2Secret\" for \"edge\"", kSecret);
    assert_string_equal(s.c_str(),
                        "ERROR:  bad password \"***\" for \"edge\"");
    s = said("FATAL:  xHunter2Secretx", kSecret);
    assert_string_equal(s.c_str(), "FATAL:  (message withheld)");
    s = said("FATAL:  got pass\"word, thanks", "pass\"word");
    assert_string_equal(s.c_str(), "FATAL:  (message withheld)");
    s = said("no severity at all: Hunter2Secret", kSecret);
    assert_string_equal(s.c_str(), "(message withheld)");

    /* libpq quoting an option's value, or anything not configured */
    s = said("invalid sslmode value: \"Hunter2Secret\"\n", nullptr);
    assert_string_equal(s.c_str(), "invalid sslmode value: \"***\"");
    s = said("FATAL:  role \"nobody\" does not exist", nullptr);
    assert_string_equal(s.c_str(), "FATAL:  role \"***\" does not exist");
    s = said("FATAL:  database \"sessions\" does not exist", nullptr);
    assert_string_equal(s.c_str(),
                        "FATAL:  database \"sessions\" does not exist");
    s = said("connection to server at \"db.example\" (10.0.0.1), port 54321 "
             "failed: timeout expired", nullptr);
    assert_string_equal(s.c_str(), "connection to server at \"db.example\" "
                        "(10.0.0.1), port 54321 failed: timeout expired");
    s = said("ERROR:  unterminated \"Hunter2Secret", nullptr);
    assert_string_equal(s.c_str(), "ERROR:  unterminated \"***\"");
    s = said("ERROR:  a\x1b[31m\"line\rbreak\"\x7f", nullptr);
    assert_string_equal(s.c_str(), "ERROR:  a?[31m\"***\"?");
    /* the name a server's certificate shows to every client (SPEC §11) */
    s = said("connection to server at \"db.example\" (10.0.0.1), port "
             "54321 failed: server certificate for \"pg.example\" (and 1 "
             "other name) does not match host name \"db.example\"",
             nullptr);
    assert_string_equal(s.c_str(), "connection to server at \"db.example\" "
                        "(10.0.0.1), port 54321 failed: server certificate "
                        "for \"pg.example\" (and 1 other name) does not "
                        "match host name \"db.example\"");
    s = said("server certificate for \"a b\" does not match", nullptr);
    assert_string_equal(s.c_str(),
                        "server certificate for \"***\" does not match");
}

/* SPEC §11: the options libpq would check only in a worker, at nginx -t */
void
test_check_options(void **)
{
    for (const char *tsa : {"any", "read-write", "read-only", "primary",
                            "standby", "prefer-standby"})
    {
        PgConninfo c =
            ok(std::string("host=a target_session_attrs=") + tsa, __LINE__);
        assert_string_equal(check_pg_options(c).c_str(), "");
    }

    PgConninfo c = ok("host=a target_session_attrs=bogus", __LINE__);
    assert_string_equal(check_pg_options(c).c_str(),
                        "invalid target_session_attrs \"bogus\" (expected "
                        "any, read-write, read-only, primary, standby or "
                        "prefer-standby)");

    /* a value that may be a piece of something else is not quoted */
    c = ok(std::string("host=a password=x target_session_attrs=") + kSecret,
           __LINE__);
    std::string e = check_pg_options(c);
    assert_null(std::strstr(e.c_str(), kSecret));
    assert_non_null(std::strstr(e.c_str(), "invalid target_session_attrs ("));

    for (const char *m :
         {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})
    {
        c = ok(std::string("host=a sslmode=") + m, __LINE__);
        assert_string_equal(check_pg_options(c).c_str(), "");
    }

    c = ok("host=a sslmode=verify", __LINE__);
    assert_string_equal(check_pg_options(c).c_str(),
                        "invalid sslmode \"verify\" (expected disable, "
                        "allow, prefer, require, verify-ca or verify-full)");

    /* libpq 15 has no load_balance_hosts: the message says what to use */
    PgConninfo  d;
    std::string err = parse_pg_conninfo("host=a load_balance_hosts=random", &d);
    assert_non_null(std::strstr(err.c_str(), "load_balance=random"));
}

/* load_balance=random: host, hostaddr and a port list move together */
void
test_shuffle_hosts(void **)
{
    PgConninfo c = ok("host=a,b,c,d hostaddr=10.0.0.1,10.0.0.2,10.0.0.3,"
                      "10.0.0.4 port=1,2,3,4 dbname=x",
                      __LINE__);
    assert_int_equal(session_cache::host_count(c), 4);

    for (unsigned seed = 1; seed < 50; seed++) {
        PgConninfo s = c;
        unsigned   r = seed;
        assert_true(session_cache::shuffle_hosts(&s, [&](std::size_t n) {
            r = r * 1103515245 + 12345;
            return static_cast<std::size_t>(r >> 8) % n;
        }));

        std::vector<std::string> h = split_hosts(*s.get("host"));
        std::vector<std::string> a = split_hosts(*s.get("hostaddr"));
        std::vector<std::string> p = split_hosts(*s.get("port"));
        assert_int_equal(h.size(), 4);
        assert_int_equal(a.size(), 4);
        assert_int_equal(p.size(), 4);

        std::string seen;
        for (std::size_t i = 0; i < 4; i++) {
            /* entry i still names one server: a <-> 10.0.0.1 <-> 1 */
            int k = h[i][0] - 'a' + 1;
            assert_string_equal(a[i].c_str(),
                                ("10.0.0." + std::to_string(k)).c_str());
            assert_string_equal(p[i].c_str(), std::to_string(k).c_str());
            seen += h[i];
        }
        std::sort(seen.begin(), seen.end());
        assert_string_equal(seen.c_str(), "abcd");
        assert_string_equal(s.get("dbname")->c_str(), "x");
    }

    /* every order comes out, over enough tries */
    std::vector<std::string> orders;
    unsigned                 r = 7;
    for (int i = 0; i < 2000; i++) {
        PgConninfo s = c;
        session_cache::shuffle_hosts(&s, [&](std::size_t n) {
            r = r * 1103515245 + 12345;
            return static_cast<std::size_t>(r >> 8) % n;
        });
        if (std::find(orders.begin(), orders.end(), *s.get("host"))
            == orders.end()) {
            orders.push_back(*s.get("host"));
        }
    }
    assert_int_equal(orders.size(), 24);

    /* one port for all stays one port */
    PgConninfo one =
        ok("host=a,b hostaddr=10.0.0.1,10.0.0.2 port=5433", __LINE__);
    assert_true(session_cache::shuffle_hosts(&one, [](std::size_t n) {
        return n - 1 - (n - 1); /* 0: swap the last with the first */
    }));
    assert_string_equal(one.get("host")->c_str(), "b,a");
    assert_string_equal(one.get("hostaddr")->c_str(), "10.0.0.2,10.0.0.1");
    assert_string_equal(one.get("port")->c_str(), "5433");

    /* a bad random source cannot break the lists */
    PgConninfo bad = c;
    assert_true(session_cache::shuffle_hosts(
        &bad, [](std::size_t n) { return n + 5; }));
    assert_int_equal(split_hosts(*bad.get("host")).size(), 4);
}

/* a new attempt without the hosts already tried */
void
test_drop_hosts(void **)
{
    PgConninfo c = ok("host=a,b,c hostaddr=10.0.0.1,10.0.0.2,10.0.0.3 "
                      "port=1,2,3",
                      __LINE__);
    PgConninfo s = c;
    assert_true(session_cache::drop_hosts_before(&s, 1));
    assert_string_equal(s.get("host")->c_str(), "b,c");
    assert_string_equal(s.get("hostaddr")->c_str(), "10.0.0.2,10.0.0.3");
    assert_string_equal(s.get("port")->c_str(), "2,3");
    s = c;
    assert_true(session_cache::drop_hosts_before(&s, 2));
    assert_string_equal(s.get("host")->c_str(), "c");
    assert_string_equal(s.get("port")->c_str(), "3");
    s = c;
    assert_false(session_cache::drop_hosts_before(&s, 3));
    assert_string_equal(s.get("host")->c_str(), "a,b,c");
}

}  // namespace

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keyword_value),
        cmocka_unit_test(test_uri),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_mask),
        cmocka_unit_test(test_get_set),
        cmocka_unit_test(test_split_hosts),
        cmocka_unit_test(test_uri_password_pieces),
        cmocka_unit_test(test_message),
        cmocka_unit_test(test_check_options),
        cmocka_unit_test(test_shuffle_hosts),
        cmocka_unit_test(test_drop_hosts),
    };

    return cmocka_run_group_tests_name("pg_conninfo", tests, nullptr,
                                       nullptr) ? 1 : 0;
}
