/*
 * Redis address parsing and masking (SPEC §2, §7). Pure logic.
 *
 *   redis://[user[:password]@]host[:port][/db]
 *   rediss://...                 (TLS)
 *   unix:/path/to.sock           (optionally unix:/path.sock?db=N&password=P
 *                                 &user=U, query keys in any order)
 *   redis-cluster://[user[:password]@]host[:port][,host[:port]...]
 *                                (Redis Cluster seeds, SPEC §10; db 0 only)
 *   rediss-cluster://...         (the same over TLS)
 *   sentinel://[user[:password]@]host[:port][,host[:port]...]/MASTER[/db]
 *       [sentinel_password=P]     (Redis Sentinel, SPEC §10)
 *   rediss-sentinel://...        (the same, TLS to the sentinels and to
 *                                 the data nodes: tls and sentinel set)
 *
 * host may be a name, an IPv4 address or a bracketed IPv6 address
 * ([::1]). user and password are percent-decoded. Defaults: port 6379,
 * db 0, no user, no password.
 */
#pragma once

#include <sys/socket.h>

#include <string>
#include <string_view>
#include <vector>

namespace session_cache {

struct RedisUrl {
    bool        unix_socket = false;
    bool        tls = false;
    std::string host;        /* without brackets for IPv6; empty for unix */
    int         port = 6379; /* 1..65535 */
    std::string path;        /* unix socket path; empty for TCP */
    std::string user;        /* empty: AUTH with password only */
    std::string password;    /* empty: no AUTH */
    int         db = 0;      /* 0..2147483647 */

    /* The authority held an '@' or a ':' (redis://u:pw@h, redis://h:6379,
     * but also redis://default:937162 with the host forgotten): what was
     * read as host or port may be a piece of a password, so messages name
     * those fields and never quote their values. */
    bool secret_authority = false;

    /* A host and port of a list: a redis-cluster:// seed, a sentinel. */
    struct Endpoint {
        std::string host;
        int         port = 6379;
    };

    /* redis-cluster:// (rediss-cluster://: tls too): every seed, in order
     * (host and port above are the first one's); empty for any other
     * scheme */
    bool                  cluster = false;
    std::vector<Endpoint> cluster_seeds;

    /* sentinel://: the sentinels (host, port: default 26379), the master's
     * name, and the password for the sentinels (user and password above
     * are the data nodes'); host and port above stay unset */
    bool                  sentinel = false;
    std::vector<Endpoint> sentinels;
    std::string           master;
    std::string           sentinel_password;
};

/*
 * Parse url into *out. Returns an empty string on success, else a short
 * English description of the problem ("invalid port (expected
 * 1..65535)", "unknown scheme \"http\"", "missing host", "invalid
 * database number", ...). The description never contains the password,
 * the userinfo, the host or the port: a malformed URL can put a piece of
 * a password in any of them.
 */
std::string parse_redis_url(std::string_view url, RedisUrl *out);

/*
 * An address learned at run time (a sentinel's answer, a CLUSTER SLOTS
 * node): when host is an IPv4 or IPv6 literal, its socket address with
 * port in *sa (room for a sockaddr_in6: a sockaddr_storage or nginx's
 * ngx_sockaddr_t), its length in *len, and true; false for a name (to be
 * resolved) or anything else.
 */
bool ip_sockaddr(std::string_view host, int port, struct sockaddr *sa,
                 socklen_t *len) noexcept;

/* host is an IPv4 or IPv6 literal, not a name. */
bool is_ip_literal(std::string_view host) noexcept;

/*
 * The URL for logs and the health document, password replaced by ***:
 *   redis://default:***@127.0.0.1:6379/0, redis://127.0.0.1:6379/0,
 *   rediss://..., redis://[::1]:6379/0, unix:/path.sock?db=0,
 *   redis-cluster://default:***@10.0.0.1:7000,10.0.0.2:7000
 *   rediss-cluster://default:***@redis-1.internal:7000
 *   sentinel://:***@10.0.0.1:26379,10.0.0.2:26379/mymaster/0
 *   sentinel_password=***, rediss-sentinel://...
 * The user is shown (it is not secret); a password is always "***".
 */
std::string mask_redis_url(const RedisUrl &u);

} // namespace session_cache
