/*
 * Redis address parsing and masking (SPEC §2, §7).
 *
 * Error messages end up in "nginx -t" output and the error log, so they
 * quote only what cannot be a secret: never the userinfo, the host or the
 * port (a malformed URL puts pieces of a password there), and a query key
 * only when it looks like one.
 */
#include "redis/redis_url.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include "integer.h"

#include <cstdint>
#include <cstring>
#include <new>

namespace session_cache {

namespace {

constexpr char kExpected[] =
    "expected redis://, rediss://, unix:, sentinel://, rediss-sentinel://, "
    "redis-cluster:// or rediss-cluster://";

/* sizeof(sockaddr_un::sun_path) on Linux, less the terminating NUL */
constexpr std::size_t kMaxSocketPath = 107;


bool starts_with_nocase(std::string_view s, std::string_view prefix)
{
    if (s.size() < prefix.size()) {
        return false;
    }

    for (std::size_t i = 0; i < prefix.size(); i++) {
        char c = s[i];

        if (c >= 'A' && c <= 'Z') {
            c = static_cast<char>(c - 'A' + 'a');
        }
        if (c != prefix[i]) {
            return false;
        }
    }

    return true;
}


bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}


bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}


/* Decimal digits only (no sign, no spaces) into 0..max. */
bool parse_decimal(std::string_view s, std::int64_t max, std::int64_t *out)
{
    std::int64_t v;

    if (s.empty() || s[0] == '-' || !parse_integer(s, &v) || v > max) {
        return false;
    }

    *out = v;
    return true;
}


int hex_value(char c)
{
    if (is_digit(c)) {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
    }
    return -1;
}


bool percent_decode(std::string_view s, std::string *out)
{
    out->clear();

    for (std::size_t i = 0; i < s.size(); i++) {
        if (s[i] != '%') {
            out->push_back(s[i]);
            continue;
        }

        if (i + 2 >= s.size()) {
            return false;
        }

        int hi = hex_value(s[i + 1]);
        int lo = hex_value(s[i + 2]);

        if (hi < 0 || lo < 0) {
            return false;
        }

        out->push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
    }

    return true;
}


/* For display: keep what needs no escaping in a URL's userinfo or query,
 * percent-encode the rest, so the masked form still parses. */
void percent_encode(std::string_view s, std::string *out)
{
    static const char hex[] = "0123456789ABCDEF";

    for (char ch : s) {
        auto c = static_cast<unsigned char>(ch);

        if (is_alpha(ch) || is_digit(ch) || ch == '-' || ch == '.' || ch == '_'
            || ch == '~')
        {
            out->push_back(ch);

        } else {
            out->push_back('%');
            out->push_back(hex[c >> 4]);
            out->push_back(hex[c & 0xf]);
        }
    }
}


std::string quoted(std::string_view what, std::string_view value)
{
    std::string s(what);

    s += " \"";
    s += value;
    s += '"';

    return s;
}


/* The port is named, never quoted: in "redis://default:937162" (the host
 * forgotten) it is the password. */
const char *port_error()
{
    return "invalid port (expected a decimal number 1..65535)";
}


const char *db_error()
{
    return "invalid database number (expected 0..2147483647)";
}


std::string parse_tcp(std::string_view rest, RedisUrl *u)
{
    std::string_view userinfo, hostport;
    std::int64_t     n;

    /* The last '@' ends the userinfo: host, port and db never hold one,
     * and an unescaped '@', '/' or '?' in a password stays in the
     * userinfo instead of leaking into host or db (and error messages). */
    std::size_t at = rest.rfind('@');

    if (at != std::string_view::npos) {
        userinfo = rest.substr(0, at);
        hostport = rest.substr(at + 1);

        std::size_t      colon = userinfo.find(':');
        std::string_view user = userinfo.substr(0, colon);
        std::string_view pass = colon == std::string_view::npos
                                    ? std::string_view()
                                    : userinfo.substr(colon + 1);

        if (!percent_decode(user, &u->user)
            || !percent_decode(pass, &u->password)) {
            return "invalid percent-encoding in credentials";
        }

    } else {
        hostport = rest;
    }

    std::string_view authority = rest.substr(0, rest.find_first_of("/?#"));

    u->secret_authority = at != std::string_view::npos
                          || authority.find(':') != std::string_view::npos;

    std::size_t i;

    if (!hostport.empty() && hostport[0] == '[') {
        std::size_t close = hostport.find(']');

        if (close == std::string_view::npos) {
            return "invalid IPv6 address: missing \"]\"";
        }

        std::string_view addr = hostport.substr(1, close - 1);
        bool             colon = false;

        for (char c : addr) {
            if (c == ':') {
                colon = true;
            } else if (!is_digit(c) && hex_value(c) < 0 && c != '.') {
                return "invalid IPv6 address";
            }
        }

        if (!colon) {
            return "invalid IPv6 address";
        }

        u->host.assign(addr);
        i = close + 1;

    } else {
        for (i = 0; i < hostport.size(); i++) {
            char c = hostport[i];

            if (c == ':' || c == '/' || c == '?' || c == '#') {
                break;
            }

            if (!is_alpha(c) && !is_digit(c) && c != '-' && c != '.'
                && c != '_') {
                return "invalid character in host";
            }
        }

        if (i == 0) {
            return "missing host";
        }

        u->host.assign(hostport.substr(0, i));
    }

    if (i < hostport.size() && hostport[i] == ':') {
        std::size_t start = ++i;

        while (i < hostport.size() && hostport[i] != '/' && hostport[i] != '?'
               && hostport[i] != '#')
        {
            i++;
        }

        std::string_view port = hostport.substr(start, i - start);

        if (port.empty()) {
            return "missing port after \":\"";
        }

        if (!parse_decimal(port, 65535, &n) || n == 0) {
            return port_error();
        }

        u->port = static_cast<int>(n);
    }

    if (i < hostport.size() && hostport[i] == '/') {
        std::size_t start = ++i;

        while (i < hostport.size() && hostport[i] != '?' && hostport[i] != '#')
        {
            i++;
        }

        std::string_view db = hostport.substr(start, i - start);

        if (!db.empty()) {
            if (!parse_decimal(db, 2147483647, &n)) {
                return db_error();
            }
            u->db = static_cast<int>(n);
        }
    }

    if (i < hostport.size()) {
        if (hostport[i] == '?') {
            return "query parameters are only supported in unix: URLs";
        }
        if (hostport[i] == '#') {
            return "unexpected \"#\" in URL";
        }
        return "invalid character after host";
    }

    return {};
}


/* A query key is echoed only when it looks like a key, not like a value
 * the user forgot to name. */
std::string key_error(std::string_view what, std::string_view key)
{
    bool plain = !key.empty() && key.size() <= 32;

    for (char c : key) {
        plain = plain && (is_alpha(c) || is_digit(c) || c == '_' || c == '-');
    }

    return plain ? quoted(what, key) : std::string(what);
}


std::string parse_unix(std::string_view rest, RedisUrl *u)
{
    std::size_t      q = rest.find('?');
    std::string_view path = rest.substr(0, q);
    std::string_view query =
        q == std::string_view::npos ? std::string_view() : rest.substr(q + 1);

    /* unix:///path is a common spelling; unix://host/path is not a thing.
     * Extra leading slashes go too, so the masked form ("unix:" + path)
     * names the same socket when read back. */
    if (path.substr(0, 3) == "///") {
        while (path.size() > 1 && path[1] == '/') {
            path.remove_prefix(1);
        }
    } else if (path.substr(0, 2) == "//") {
        return "unix socket URLs take no host: use unix:/path/to.sock";
    }

    if (path.empty()) {
        return "missing unix socket path";
    }

    if (path[0] != '/') {
        return "unix socket path must be absolute";
    }

    if (path.find('\0') != std::string_view::npos) {
        return "invalid character in unix socket path";
    }

    if (path.size() > kMaxSocketPath) {
        return "unix socket path is too long";
    }

    u->unix_socket = true;
    u->path.assign(path);

    bool seen_db = false, seen_user = false, seen_password = false;

    while (!query.empty()) {
        std::size_t      amp = query.find('&');
        std::string_view param = query.substr(0, amp);

        query = amp == std::string_view::npos ? std::string_view()
                                              : query.substr(amp + 1);

        if (param.empty()) {
            continue;
        }

        std::size_t eq = param.find('=');

        if (eq == std::string_view::npos) {
            return "invalid query parameter (expected key=value)";
        }

        std::string_view key = param.substr(0, eq);
        std::string_view val = param.substr(eq + 1);
        bool            *seen;

        if (key == "db") {
            seen = &seen_db;
        } else if (key == "user") {
            seen = &seen_user;
        } else if (key == "password") {
            seen = &seen_password;
        } else {
            return key_error("unknown query parameter", key)
                   + " (expected db, user or password)";
        }

        if (*seen) {
            return key_error("duplicate query parameter", key);
        }

        *seen = true;

        if (key == "db") {
            std::int64_t n;

            if (!parse_decimal(val, 2147483647, &n)) {
                return db_error();
            }
            u->db = static_cast<int>(n);

        } else if (!percent_decode(val,
                                   key == "user" ? &u->user : &u->password)) {
            return "invalid percent-encoding in credentials";
        }
    }

    return {};
}


/*
 * redis-cluster://[userinfo@]seed[,seed...] (rediss-cluster://: the same,
 * over TLS): the userinfo as in redis://, each seed a host[:port] read by
 * parse_tcp; an optional /0 after the last (a cluster has database 0
 * only).
 */
std::string parse_cluster(std::string_view rest, RedisUrl *u)
{
    std::size_t      at = rest.rfind('@');
    std::string_view seeds = rest;

    u->cluster = true;

    if (at != std::string_view::npos) {
        /* the credentials, read once with the first seed */
        seeds = rest.substr(at + 1);
    }

    if (seeds.empty()) {
        return "missing host";
    }

    std::size_t start = 0;

    for (;;) {
        std::size_t      comma = seeds.find(',', start);
        std::string_view seed = seeds.substr(
            start, comma == std::string_view::npos ? std::string_view::npos
                                                   : comma - start);
        RedisUrl    one;
        std::string err;

        if (seed.empty()) {
            return "empty seed in the redis-cluster:// list";
        }

        if (u->cluster_seeds.empty() && at != std::string_view::npos) {
            err = parse_tcp(rest.substr(0, at + 1 + seed.size()), &one);
            u->user = one.user;
            u->password = one.password;

        } else {
            err = parse_tcp(seed, &one);
        }

        if (!err.empty()) {
            return err;
        }

        if (one.db != 0) {
            return "invalid database number (Redis Cluster has database 0 "
                   "only)";
        }

        if (comma != std::string_view::npos
            && seed.find('/') != std::string_view::npos) {
            return "invalid character after host";
        }

        u->secret_authority = u->secret_authority || one.secret_authority;
        u->cluster_seeds.push_back({one.host, one.port});

        if (comma == std::string_view::npos) {
            break;
        }

        start = comma + 1;
    }

    u->host = u->cluster_seeds[0].host;
    u->port = u->cluster_seeds[0].port;

    return {};
}


/* --- sentinel:// (SPEC §10) ---------------------------------------------- */

constexpr std::size_t kMaxSentinels = 16;
constexpr int         kSentinelPort = 26379; /* when a sentinel has none */

bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* One sentinel's host[:port]. Neither is ever quoted: in a list the
 * password's pieces can land anywhere (see port_error). */
std::string parse_sentinel_host(std::string_view s, RedisUrl::Endpoint *out)
{
    std::size_t  i;
    std::int64_t n;

    if (s.empty()) {
        return "missing sentinel host (an empty entry in the list)";
    }

    if (s[0] == '[') {
        std::size_t close = s.find(']');

        if (close == std::string_view::npos) {
            return "invalid IPv6 address: missing \"]\"";
        }

        std::string_view addr = s.substr(1, close - 1);
        bool             colon = false;

        for (char c : addr) {
            if (c == ':') {
                colon = true;
            } else if (hex_value(c) < 0 && c != '.') {
                return "invalid IPv6 address";
            }
        }

        if (!colon) {
            return "invalid IPv6 address";
        }

        out->host.assign(addr);
        i = close + 1;

    } else {
        for (i = 0; i < s.size() && s[i] != ':'; i++) {
            char c = s[i];

            if (!is_alpha(c) && !is_digit(c) && c != '-' && c != '.'
                && c != '_') {
                return "invalid character in sentinel host";
            }
        }

        if (i == 0) {
            return "missing sentinel host";
        }

        out->host.assign(s.substr(0, i));
    }

    if (i == s.size()) {
        return {};
    }

    if (s[i] != ':') {
        return "invalid character after sentinel host";
    }

    std::string_view port = s.substr(i + 1);

    if (port.empty()) {
        return "missing port after \":\"";
    }

    if (!parse_decimal(port, 65535, &n) || n == 0) {
        return port_error();
    }

    out->port = static_cast<int>(n);
    return {};
}

/* What may follow the URL, separated by white space: sentinel_password=P
 * (the sentinels' password; an env= or file= source holds it there). */
std::string parse_sentinel_options(std::string_view opts, RedisUrl *u)
{
    bool seen = false;

    for (;;) {
        while (!opts.empty() && is_space(opts[0])) {
            opts.remove_prefix(1);
        }

        if (opts.empty()) {
            return {};
        }

        std::size_t end = 0;

        while (end < opts.size() && !is_space(opts[end])) {
            end++;
        }

        std::string_view token = opts.substr(0, end);
        std::string_view key = token.substr(0, token.find('='));

        opts.remove_prefix(end);

        if (key != "sentinel_password" || key.size() == token.size()) {
            /* a word without "=" may be a password written alone */
            return (key.size() == token.size()
                        ? std::string("unknown parameter")
                        : key_error("unknown parameter", key))
                   + " after the URL (expected sentinel_password=)";
        }

        if (seen) {
            return "duplicate sentinel_password=";
        }

        seen = true;
        u->sentinel_password.assign(token.substr(key.size() + 1));

        if (u->sentinel_password.empty()) {
            return "empty sentinel_password=";
        }
    }
}

std::string parse_sentinel(std::string_view rest, RedisUrl *u)
{
    u->sentinel = true;

    std::size_t ws = 0;

    while (ws < rest.size() && !is_space(rest[ws])) {
        ws++;
    }

    std::string err = parse_sentinel_options(rest.substr(ws), u);
    if (!err.empty()) {
        return err;
    }

    rest = rest.substr(0, ws);

    /* the last '@' ends the userinfo: the rest never holds one (the
     * master's name is checked below), as for redis:// */
    std::size_t      at = rest.rfind('@');
    std::string_view after = rest;

    if (at != std::string_view::npos) {
        std::string_view userinfo = rest.substr(0, at);
        std::size_t      colon = userinfo.find(':');
        std::string_view pass = colon == std::string_view::npos
                                    ? std::string_view()
                                    : userinfo.substr(colon + 1);

        if (!percent_decode(userinfo.substr(0, colon), &u->user)
            || !percent_decode(pass, &u->password))
        {
            return "invalid percent-encoding in credentials";
        }

        after = rest.substr(at + 1);
    }

    std::size_t      slash = after.find('/');
    std::string_view hosts = after.substr(0, slash);

    u->secret_authority = at != std::string_view::npos
                          || hosts.find(':') != std::string_view::npos;

    while (true) {
        std::size_t comma = hosts.find(',');

        if (u->sentinels.size() == kMaxSentinels) {
            return "too many sentinels (at most 16)";
        }

        u->sentinels.push_back({std::string(), kSentinelPort});
        err = parse_sentinel_host(hosts.substr(0, comma), &u->sentinels.back());

        if (!err.empty()) {
            return err;
        }

        if (comma == std::string_view::npos) {
            break;
        }

        hosts.remove_prefix(comma + 1);
    }

    if (slash == std::string_view::npos || slash + 1 == after.size()
        || after[slash + 1] == '/')
    {
        return "missing master name (expected sentinel://host:port/MASTER)";
    }

    std::string_view path = after.substr(slash + 1);
    std::size_t      i = 0;

    while (i < path.size() && path[i] != '/') {
        char c = path[i];

        if (c == '?') {
            return "query parameters are only supported in unix: URLs";
        }

        if (!is_alpha(c) && !is_digit(c) && c != '-' && c != '.' && c != '_') {
            return "invalid character in master name (expected letters, "
                   "digits, \"-\", \".\" or \"_\")";
        }

        i++;
    }

    u->master.assign(path.substr(0, i));

    if (i < path.size()) {
        std::string_view db = path.substr(i + 1);
        std::int64_t     n;

        if (!db.empty() && !parse_decimal(db, 2147483647, &n)) {
            return db_error();
        }

        u->db = db.empty() ? 0 : static_cast<int>(n);
    }

    return {};
}

std::string parse(std::string_view url, RedisUrl *out)
{
    RedisUrl    u;
    std::string err;

    if (url.empty()) {
        return std::string("empty Redis URL (") + kExpected + ")";
    }

    if (starts_with_nocase(url, "redis://")) {
        err = parse_tcp(url.substr(8), &u);

    } else if (starts_with_nocase(url, "rediss://")) {
        u.tls = true;
        err = parse_tcp(url.substr(9), &u);

    } else if (starts_with_nocase(url, "unix:")) {
        err = parse_unix(url.substr(5), &u);

    } else if (starts_with_nocase(url, "redis-cluster://")) {
        err = parse_cluster(url.substr(16), &u);

    } else if (starts_with_nocase(url, "rediss-cluster://")) {
        u.tls = true;
        err = parse_cluster(url.substr(17), &u);

    } else if (starts_with_nocase(url, "sentinel://")) {
        err = parse_sentinel(url.substr(11), &u);

    } else if (starts_with_nocase(url, "rediss-sentinel://")) {
        /* TLS to the sentinels and to the data nodes (Lettuce's name) */
        u.tls = true;
        err = parse_sentinel(url.substr(18), &u);

    } else {
        /* Name the scheme only if it is one (RFC 3986 syntax): in
         * "user:pw@host://" the "scheme" would be the credentials. */
        std::size_t sep = url.find("://");
        bool scheme = sep != std::string_view::npos && sep > 0 && sep <= 16
                      && is_alpha(url[0]);

        for (std::size_t i = 0; scheme && i < sep; i++) {
            char c = url[i];
            scheme =
                is_alpha(c) || is_digit(c) || c == '+' || c == '-' || c == '.';
        }

        if (scheme) {
            return quoted("unknown scheme", url.substr(0, sep)) + " ("
                   + kExpected + ")";
        }

        return kExpected;
    }

    if (!err.empty()) {
        return err;
    }

    *out = std::move(u);
    return {};
}

} // namespace


std::string parse_redis_url(std::string_view url, RedisUrl *out)
{
    try {
        return parse(url, out);

    } catch (const std::bad_alloc &) {
        return "out of memory"; /* short enough to need no allocation */

    } catch (...) {
        return "internal error";
    }
}


namespace {

void append_host(std::string *s, const std::string &host, int port)
{
    bool ipv6 = host.find(':') != std::string::npos;

    if (ipv6) {
        *s += '[';
    }
    *s += host;
    if (ipv6) {
        *s += ']';
    }

    *s += ':';
    *s += std::to_string(port);
}


/* scheme://user:***@host:port,host:port: the userinfo and the list of a
 * redis-cluster:// or sentinel:// URL */
std::string mask_list(const char *scheme, const RedisUrl &u,
                      const std::vector<RedisUrl::Endpoint> &list)
{
    std::string s = scheme;

    if (!u.user.empty() || !u.password.empty()) {
        percent_encode(u.user, &s);
        if (!u.password.empty()) {
            s += ":***";
        }
        s += '@';
    }

    for (std::size_t i = 0; i < list.size(); i++) {
        if (i) {
            s += ',';
        }
        append_host(&s, list[i].host, list[i].port);
    }

    return s;
}

/* sentinel://:***@10.0.0.1:26379,10.0.0.2:26379/mymaster/0
 * sentinel_password=*** (rediss-sentinel:// with TLS) */
std::string mask_sentinel(const RedisUrl &u)
{
    std::string s =
        mask_list(u.tls ? "rediss-sentinel://" : "sentinel://", u, u.sentinels);

    s += '/';
    s += u.master;
    s += '/';
    s += std::to_string(u.db);

    if (!u.sentinel_password.empty()) {
        s += " sentinel_password=***";
    }

    return s;
}

} // namespace


std::string mask_redis_url(const RedisUrl &u)
{
    try {
        std::string s;

        if (u.unix_socket) {
            s = "unix:";
            s += u.path;
            s += "?db=";
            s += std::to_string(u.db);

            if (!u.user.empty()) {
                s += "&user=";
                percent_encode(u.user, &s);
            }

            if (!u.password.empty()) {
                s += "&password=***";
            }

            return s;
        }

        if (u.cluster) {
            return mask_list(u.tls ? "rediss-cluster://" : "redis-cluster://",
                             u, u.cluster_seeds);
        }

        if (u.sentinel) {
            return mask_sentinel(u);
        }

        s = u.tls ? "rediss://" : "redis://";

        if (!u.user.empty() || !u.password.empty()) {
            percent_encode(u.user, &s);
            if (!u.password.empty()) {
                s += ":***";
            }
            s += '@';
        }

        bool ipv6 = u.host.find(':') != std::string::npos;

        if (ipv6) {
            s += '[';
        }
        s += u.host;
        if (ipv6) {
            s += ']';
        }

        s += ':';
        s += std::to_string(u.port);
        s += '/';
        s += std::to_string(u.db);

        return s;

    } catch (...) {
        return {}; /* std::bad_alloc: nothing sensible to show */
    }
}

bool ip_sockaddr(std::string_view host, int port, struct sockaddr *sa,
                 socklen_t *len) noexcept
{
    char text[INET6_ADDRSTRLEN + 1];

    if (host.empty() || host.size() >= sizeof(text) || port < 0 || port > 65535)
    {
        return false;
    }

    host.copy(text, host.size());
    text[host.size()] = '\0';

    auto *in = reinterpret_cast<struct sockaddr_in *>(sa);
    auto *in6 = reinterpret_cast<struct sockaddr_in6 *>(sa);

    std::memset(in6, 0, sizeof(*in6));

    if (inet_pton(AF_INET, text, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons(static_cast<std::uint16_t>(port));
        *len = sizeof(*in);
        return true;
    }

    if (inet_pton(AF_INET6, text, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(static_cast<std::uint16_t>(port));
        *len = sizeof(*in6);
        return true;
    }

    return false;
}

bool is_ip_literal(std::string_view host) noexcept
{
    struct sockaddr_storage sa;
    socklen_t               len;

    return ip_sockaddr(host, 0, reinterpret_cast<struct sockaddr *>(&sa), &len);
}

} // namespace session_cache
