/*
 * Postgres connection string parsing and masking (SPEC §2, §7). libpq does
 * the parsing, so the module accepts exactly what psql would; this file
 * only keeps secrets out of what it gives back.
 */
#include "pg/pg_conninfo.h"

#include <libpq-fe.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>

namespace session_cache {

namespace {

struct OptionsFree {
    void operator()(PQconninfoOption *o) const { PQconninfoFree(o); }
};

struct ErrorFree {
    void operator()(char *s) const { PQfreemem(s); }
};

/*
 * The one fragment worth showing: the name in 'invalid connection option
 * "foo"', a keyword the user mistyped, never a value.
 */
static bool option_name(const std::string &before, const char *start,
                        const char *end)
{
    static const char prefix[] = "invalid connection option ";
    std::size_t       n = sizeof(prefix) - 1;

    if (before.size() < n || before.compare(before.size() - n, n, prefix) != 0
        || end - start < 1 || end - start > 32)
    {
        return false;
    }

    for (const char *p = start; p < end; p++) {
        if (!((*p >= 'a' && *p <= 'z') || *p == '_')) {
            return false;
        }
    }

    return true;
}

/*
 * libpq quotes whatever it failed on ("missing \"=\" after \"%s\"",
 * "invalid percent-encoded token: \"%s\"") and that may be the password,
 * so every quoted fragment goes, but an option's name. An unterminated one
 * runs to the end.
 */
std::string mask_quoted(const char *msg, bool input_has_quote)
{
    std::string s;

    if (input_has_quote) {
        /* A quoted fragment may hold quotes itself, so pairing them up
         * would show part of the input: hide everything from the first
         * quote to the last one instead. */
        const char *first = std::strchr(msg, '"');
        const char *last = std::strrchr(msg, '"');

        if (first != nullptr) {
            s.assign(msg, first - msg);
            s += "\"***\"";
            if (last != first) {
                s += last + 1;
            }
            msg = "";
        }
    }

    for (const char *p = msg; *p; p++) {
        if (*p != '"') {
            s.push_back(*p);
            continue;
        }

        const char *start = p + 1;

        for (p++; *p && *p != '"'; p++) {
            /* skip the fragment */
        }

        if (*p && option_name(s, start, p)) {
            s.push_back('"');
            s.append(start, p - start);
            s.push_back('"');
        } else {
            s += "\"***\"";
        }

        if (*p == '\0') {
            break;
        }
    }

    while (!s.empty()
           && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) {
        s.pop_back();
    }

    if (s.empty()) {
        s = "invalid connection string";
    }

    return s;
}


/*
 * libpq reads postgresql://[user[:password]@]host[:port][,...][/dbname]
 * [?param=value...]: the user part ends at the first '@' before the first
 * '/', the host at ':', the port at '/'. An unencoded '@' or '/' in a
 * password moves pieces of it into the host, port or database name, which
 * messages and the display form would then show: an '@' anywhere but at
 * the end of the user part is refused (it is %40 in a URI), and an
 * authority with '@' or ':' is marked so that its host and port are never
 * quoted.
 */
std::string check_uri(std::string_view s, bool *secret_authority)
{
    std::string_view rest;

    if (s.substr(0, 13) == "postgresql://") {
        rest = s.substr(13);
    } else if (s.substr(0, 11) == "postgres://") {
        rest = s.substr(11);
    } else {
        return {};
    }

    std::string_view body = rest.substr(0, rest.find('?'));
    std::string_view authority = body.substr(0, body.find('/'));
    std::size_t      at = authority.find('@');

    if (body.find('@', at == std::string_view::npos ? 0 : at + 1)
        != std::string_view::npos)
    {
        return "an \"@\" outside the URI's user:password part (in a user, "
               "password or database name, write \"@\" as %40 and \"/\" "
               "as %2F)";
    }

    *secret_authority = at != std::string_view::npos
                        || authority.find(':') != std::string_view::npos;

    return {};
}


std::string parse(std::string_view conninfo, PgConninfo *out)
{
    /* libpq reads a C string: a NUL would silently cut the rest off */
    if (conninfo.find('\0') != std::string_view::npos) {
        return "connection string contains a NUL byte";
    }

    bool        secret_authority = false;
    std::string uri_error = check_uri(conninfo, &secret_authority);

    if (!uri_error.empty()) {
        return uri_error;
    }

    std::string                                    s(conninfo);
    char                                          *err = nullptr;
    std::unique_ptr<PQconninfoOption, OptionsFree> opts(
        PQconninfoParse(s.c_str(), &err));
    std::unique_ptr<char, ErrorFree> err_guard(err);

    if (!opts) {
        std::string m = err ? mask_quoted(err, s.find('"') != std::string::npos)
                            : "out of memory";

        if (m.find("\"load_balance_hosts\"") != std::string::npos) {
            m += " (libpq " + std::to_string(PQlibVersion() / 10000)
                 + " has no load_balance_hosts: give the directive's "
                   "load_balance=random instead)";
        }

        return m;
    }

    PgConninfo c;
    c.secret_authority = secret_authority;

    for (PQconninfoOption *o = opts.get(); o->keyword; o++) {
        if (o->val != nullptr && o->val[0] != '\0') {
            c.keywords.emplace_back(o->keyword);
            c.values.emplace_back(o->val);
        }
    }

    *out = std::move(c);
    return {};
}


/* Quote a value the way libpq reads it back, when it has to be. */
void append_value(std::string_view v, std::string *out)
{
    bool quote = v.empty();

    for (char c : v) {
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'
            || c == '\v' || c == '\'' || c == '\\')
        {
            quote = true;
        }
    }

    if (!quote) {
        out->append(v);
        return;
    }

    out->push_back('\'');

    for (char c : v) {
        if (c == '\'' || c == '\\') {
            out->push_back('\\');
        }
        out->push_back(c);
    }

    out->push_back('\'');
}


bool in_list(std::string_view f, const std::string *list)
{
    if (list == nullptr) {
        return false;
    }

    std::string_view l(*list);

    for (;;) {
        std::size_t comma = l.find(',');

        if (l.substr(0, comma) == f) {
            return true;
        }

        if (comma == std::string_view::npos) {
            return false;
        }

        l.remove_prefix(comma + 1);
    }
}


/* A unix socket's name as libpq shows it: DIR/.s.PGSQL.PORT */
bool socket_name(std::string_view f)
{
    static const char mark[] = "/.s.PGSQL.";
    std::size_t       m = f.rfind(mark);

    if (f.empty() || f[0] != '/' || m == std::string_view::npos
        || m + sizeof(mark) - 1 == f.size())
    {
        return false;
    }

    for (char ch : f.substr(m + sizeof(mark) - 1)) {
        if (ch < '0' || ch > '9') {
            return false;
        }
    }

    return true;
}


/* A quoted fragment worth repeating: a name the configuration holds. */
bool known_name(std::string_view f, const PgConninfo &c, std::string_view query)
{
    static const char *const names[] = {"host", "hostaddr", "port",
                                        "user", "dbname",   "application_name"};

    if (f.empty() || socket_name(f)) {
        return true;
    }

    for (const char *key : names) {
        if (in_list(f, c.get(key))) {
            return true;
        }
    }

    return query.find(f) != std::string_view::npos;
}


/*
 * libpq's "server certificate for \"NAME\" does not match host name": the
 * name the server's certificate holds, which it shows to every client; a
 * plain DNS name or address only.
 */
bool certificate_name(const std::string &before, std::string_view f)
{
    static const char prefix[] = "server certificate for ";
    std::size_t       n = sizeof(prefix) - 1;

    if (before.size() < n || before.compare(before.size() - n, n, prefix) != 0
        || f.size() > 253)
    {
        return false;
    }

    for (char ch : f) {
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')
              || (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' || ch == '*'
              || ch == ':'))
        {
            return false;
        }
    }

    return true;
}


/*
 * Where the peer's own text starts in bare: after libpq's
 * "connection to server ... failed: " and a severity ("FATAL:  ").
 */
std::size_t peer_text(const std::string &bare)
{
    static const char frame[] = "connection to server ";
    static const char failed[] = " failed: ";
    std::size_t       pos = 0;

    if (bare.compare(0, sizeof(frame) - 1, frame) == 0) {
        std::size_t f = bare.find(failed);

        if (f != std::string::npos) {
            pos = f + sizeof(failed) - 1;
        }
    }

    std::size_t i = pos;

    while (i < bare.size() && bare[i] >= 'A' && bare[i] <= 'Z') {
        i++;
    }

    if (i > pos && bare.compare(i, 3, ":  ") == 0) {
        pos = i + 3;
    }

    return pos;
}


std::string filter_message(std::string_view msg, const PgConninfo &c,
                           std::string_view query)
{
    msg = msg.substr(0, msg.find('\n'));

    while (!msg.empty()
           && (msg.back() == ' ' || msg.back() == '\r' || msg.back() == '\t'))
    {
        msg.remove_suffix(1);
    }

    /* out: what is shown; bare: the unquoted text only (a quoted
     * fragment is one '\x01'), searched for the password; at[i] and
     * raw[i]: where bare[i] is in out and in msg */
    std::string              out, bare;
    std::vector<std::size_t> at, raw;

    for (std::size_t i = 0; i < msg.size(); i++) {
        auto ch = static_cast<unsigned char>(msg[i]);

        raw.push_back(i);

        if (ch != '"') {
            at.push_back(out.size());
            bare.push_back(ch < 0x20 || ch == 0x7f ? '?' : msg[i]);
            out.push_back(bare.back());
            continue;
        }

        std::size_t      end = msg.find('"', i + 1);
        std::string_view f = msg.substr(i + 1, end == std::string_view::npos
                                                   ? std::string_view::npos
                                                   : end - i - 1);
        bool             control = false;

        for (char fc : f) {
            auto u = static_cast<unsigned char>(fc);
            control = control || u < 0x20 || u == 0x7f;
        }

        at.push_back(out.size());
        bare.push_back('\x01');

        if (end != std::string_view::npos && !control
            && (known_name(f, c, query) || certificate_name(out, f)))
        {
            out.push_back('"');
            out.append(f);
            out.push_back('"');
        } else {
            out += "\"***\"";
        }

        if (end == std::string_view::npos) {
            break;
        }

        i = end;
    }

    at.push_back(out.size());
    raw.push_back(msg.size());

    const std::string *pw = c.get("password");
    std::size_t        peer = peer_text(bare);

    /* a password with a quote in it would be cut up by the quotes: look
     * for it in the peer's text as sent too */
    if (pw != nullptr && !pw->empty()
        && (bare.find(*pw, peer) != std::string::npos
            || (pw->size() > 1 && pw->find('"') != std::string::npos
                && msg.find(*pw, raw[peer]) != std::string_view::npos)))
    {
        out.resize(at[peer]);
        out += "(message withheld)";
    }

    if (out.empty()) {
        out = "unknown error";
    }

    return out;
}

} // namespace


const std::string *PgConninfo::get(std::string_view keyword) const noexcept
{
    for (std::size_t i = 0; i < keywords.size() && i < values.size(); i++) {
        if (keywords[i] == keyword) {
            return &values[i];
        }
    }

    return nullptr;
}


bool PgConninfo::set(std::string_view keyword, std::string_view value) noexcept
{
    try {
        for (std::size_t i = 0; i < keywords.size() && i < values.size(); i++) {
            if (keywords[i] == keyword) {
                values[i].assign(value);
                return true;
            }
        }

        keywords.emplace_back(keyword);

        try {
            values.emplace_back(value);

        } catch (...) {
            keywords.pop_back(); /* keep the two vectors in step */
            throw;
        }

        return true;

    } catch (...) {
        return false;
    }
}


std::string parse_pg_conninfo(std::string_view conninfo, PgConninfo *out)
{
    try {
        return parse(conninfo, out);

    } catch (const std::bad_alloc &) {
        return "out of memory"; /* short enough to need no allocation */

    } catch (...) {
        return "internal error";
    }
}


std::string mask_pg_conninfo(const PgConninfo &c)
{
    static const char *const shown[] = {"host", "hostaddr", "port", "dbname",
                                        "user"};

    try {
        std::string s;

        for (const char *key : shown) {
            const std::string *v = c.get(key);

            if (v == nullptr) {
                continue;
            }

            if (!s.empty()) {
                s.push_back(' ');
            }

            s += key;
            s.push_back('=');

            /* libpq can expand a dbname that is itself a connection
             * string or URI, which may carry a password. Host lists
             * ("a,b") are shown as they are: hosts are not secret. */
            if (std::string_view(key) == "dbname"
                && (v->find('=') != std::string::npos
                    || v->find("://") != std::string::npos))
            {
                s += "***";
            } else {
                append_value(*v, &s);
            }
        }

        if (c.get("password") != nullptr) {
            if (!s.empty()) {
                s.push_back(' ');
            }
            s += "password=***";
        }

        return s;

    } catch (...) {
        return {}; /* std::bad_alloc */
    }
}


std::vector<std::string> split_hosts(std::string_view hosts)
{
    try {
        std::vector<std::string> parts;

        for (;;) {
            std::size_t comma = hosts.find(',');

            parts.emplace_back(hosts.substr(0, comma));

            if (comma == std::string_view::npos) {
                return parts;
            }

            hosts.remove_prefix(comma + 1);
        }

    } catch (...) {
        return {}; /* std::bad_alloc */
    }
}

namespace {

/* a value worth quoting in a message: a short lower-case word */
std::string shown_value(const std::string &v)
{
    if (v.empty() || v.size() > 24) {
        return std::string();
    }

    for (char ch : v) {
        if (!((ch >= 'a' && ch <= 'z') || ch == '-' || ch == '_')) {
            return std::string();
        }
    }

    return " \"" + v + "\"";
}

std::string check_one(const PgConninfo &c, const char *key,
                      std::initializer_list<const char *> accepted)
{
    const std::string *v = c.get(key);

    if (v == nullptr) {
        return std::string();
    }

    std::string list;
    std::size_t i = 0;

    for (const char *a : accepted) {
        if (*v == a) {
            return std::string();
        }

        list += i == 0 ? "" : i + 1 == accepted.size() ? " or " : ", ";
        list += a;
        i++;
    }

    return std::string("invalid ") + key + shown_value(*v) + " (expected "
           + list + ")";
}

/* The lists that name one entry per host: host, hostaddr, and port when
 * it is a list (a single port applies to every host). */
std::vector<const char *> host_lists(const PgConninfo &c, std::size_t n)
{
    std::vector<const char *> keys;

    for (const char *k : {"host", "hostaddr", "port"}) {
        const std::string *v = c.get(k);

        if (v != nullptr && split_hosts(*v).size() == n
            && (n > 1 || std::string_view(k) != "port"))
        {
            keys.push_back(k);
        }
    }

    return keys;
}

} // namespace

std::string join_hosts(const std::vector<std::string> &parts)
{
    std::string s;

    for (std::size_t i = 0; i < parts.size(); i++) {
        if (i) {
            s += ',';
        }
        s += parts[i];
    }

    return s;
}

std::string check_pg_options(const PgConninfo &c)
{
    try {
        std::string e = check_one(c, "target_session_attrs",
                                  {"any", "read-write", "read-only", "primary",
                                   "standby", "prefer-standby"});
        if (e.empty()) {
            e = check_one(c, "sslmode",
                          {"disable", "allow", "prefer", "require", "verify-ca",
                           "verify-full"});
        }
        return e;

    } catch (...) {
        return "out of memory";
    }
}


std::size_t host_count(const PgConninfo &c)
{
    std::size_t n = 1;

    for (const char *k : {"host", "hostaddr"}) {
        const std::string *v = c.get(k);

        if (v != nullptr) {
            n = std::max(n, split_hosts(*v).size());
        }
    }

    return n;
}


bool shuffle_hosts(PgConninfo                                    *c,
                   const std::function<std::size_t(std::size_t)> &below)
{
    try {
        std::size_t n = host_count(*c);

        if (n < 2) {
            return true;
        }

        std::vector<std::size_t> order(n);

        for (std::size_t i = 0; i < n; i++) {
            order[i] = i;
        }

        for (std::size_t i = n - 1; i > 0; i--) {
            std::size_t j = below(i + 1);
            std::swap(order[i], order[j < i + 1 ? j : i]);
        }

        PgConninfo out = *c;

        for (const char *k : host_lists(*c, n)) {
            std::vector<std::string> parts = split_hosts(*c->get(k));
            std::vector<std::string> moved(n);

            for (std::size_t i = 0; i < n; i++) {
                moved[i] = parts[order[i]];
            }

            if (!out.set(k, join_hosts(moved))) {
                return false;
            }
        }

        *c = std::move(out);
        return true;

    } catch (...) {
        return false;
    }
}


bool drop_hosts_before(PgConninfo *c, std::size_t from)
{
    try {
        std::size_t n = host_count(*c);

        if (from >= n) {
            return false;
        }

        PgConninfo out = *c;

        for (const char *k : host_lists(*c, n)) {
            std::vector<std::string> parts = split_hosts(*c->get(k));
            parts.erase(parts.begin(), parts.begin() + from);

            if (!out.set(k, join_hosts(parts))) {
                return false;
            }
        }

        *c = std::move(out);
        return true;

    } catch (...) {
        return false;
    }
}

std::string pg_message(std::string_view msg, const PgConninfo &c,
                       std::string_view query)
{
    try {
        return filter_message(msg, c, query);

    } catch (...) {
        return "unknown error"; /* std::bad_alloc */
    }
}

} // namespace session_cache
