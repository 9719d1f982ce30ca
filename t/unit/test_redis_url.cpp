/*
 * Redis URL parsing and masking (SPEC §2, §7): every accepted form, every
 * refusal, and no password in any error or masked URL.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

#include <cstring>
#include <string>

#include "redis/redis_url.h"

using session_cache::mask_redis_url;
using session_cache::parse_redis_url;
using session_cache::RedisUrl;

namespace {

/* Parse, expecting success; also check that the mask hides the password
 * and that the mask parses back to the same address. */
RedisUrl
ok(const std::string &url, int line)
{
    RedisUrl u;
    std::string err = parse_redis_url(url, &u);

    if (!err.empty()) {
        fail_msg("line %d: [%s] refused: %s", line, url.c_str(),
                 err.c_str());
    }

    std::string masked = mask_redis_url(u);

    /* where the credentials sit: the userinfo, or the query (the path and
     * host may legitimately hold the same letters) */
    std::string creds = u.unix_socket
                        ? masked.substr(masked.find('?'))
                        : masked.substr(0, masked.rfind('@') + 1);

    if (!u.password.empty() && creds.find(u.password) != std::string::npos)
    {
        fail_msg("line %d: password in mask [%s]", line, masked.c_str());
    }

    RedisUrl again;
    err = parse_redis_url(masked, &again);

    if (!err.empty() || again.host != u.host || again.port != u.port
        || again.db != u.db || again.path != u.path || again.tls != u.tls
        || again.unix_socket != u.unix_socket || again.user != u.user
        || again.password != (u.password.empty() ? "" : "***"))
    {
        fail_msg("line %d: mask [%s] does not parse back: %s", line,
                 masked.c_str(), err.c_str());
    }

    return u;
}

#define OK(url) ok((url), __LINE__)


/* Parse, expecting an error that holds `want` and none of `secrets`. */
void
refused(const std::string &url, const std::string &want,
        std::initializer_list<const char *> secrets, int line)
{
    RedisUrl u;
    u.host = "untouched";
    std::string err = parse_redis_url(url, &u);

    if (err.empty()) {
        fail_msg("line %d: [%s] accepted", line, url.c_str());
    }

    if (err.find(want) == std::string::npos) {
        fail_msg("line %d: [%s]: error \"%s\" lacks \"%s\"", line,
                 url.c_str(), err.c_str(), want.c_str());
    }

    for (const char *s : secrets) {
        if (err.find(s) != std::string::npos) {
            fail_msg("line %d: [%s]: error \"%s\" leaks \"%s\"", line,
                     url.c_str(), err.c_str(), s);
        }
    }

    /* a failed parse leaves the output alone */
    assert_string_equal(u.host.c_str(), "untouched");
}

#define REFUSED(url, want, ...) refused((url), (want), {__VA_ARGS__}, __LINE__)


std::string
mask(const std::string &url)
{
    RedisUrl u;
    std::string err = parse_redis_url(url, &u);
    assert_true(err.empty());
    return mask_redis_url(u);
}


void
test_tcp_forms(void **)
{
    RedisUrl u = OK("redis://127.0.0.1:6379/0");
    assert_false(u.unix_socket);
    assert_false(u.tls);
    assert_string_equal(u.host.c_str(), "127.0.0.1");
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 0);
    assert_true(u.user.empty());
    assert_true(u.password.empty());
    assert_true(u.path.empty());

    u = OK("redis://localhost");
    assert_string_equal(u.host.c_str(), "localhost");
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 0);

    u = OK("redis://cache.internal:7000");
    assert_int_equal(u.port, 7000);

    u = OK("redis://h/");
    assert_int_equal(u.db, 0);

    u = OK("redis://h/15");
    assert_int_equal(u.db, 15);
    assert_int_equal(u.port, 6379);

    u = OK("redis://h:1/2147483647");
    assert_int_equal(u.port, 1);
    assert_int_equal(u.db, 2147483647);

    u = OK("redis://h:65535");
    assert_int_equal(u.port, 65535);

    u = OK("rediss://secure.example:6380/1");
    assert_true(u.tls);
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 1);

    u = OK("REDIS://H_1-a.b");      /* schemes are case-insensitive */
    assert_string_equal(u.host.c_str(), "H_1-a.b");

    u = OK("redis://[::1]:6380/3");
    assert_string_equal(u.host.c_str(), "::1");
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 3);

    u = OK("redis://[2001:db8::ffff:10.0.0.1]");
    assert_string_equal(u.host.c_str(), "2001:db8::ffff:10.0.0.1");
    assert_int_equal(u.port, 6379);
}


void
test_credentials(void **)
{
    RedisUrl u = OK("redis://:s3cret@h:6379/0");
    assert_true(u.user.empty());
    assert_string_equal(u.password.c_str(), "s3cret");

    u = OK("redis://default:s3cret@h/2");
    assert_string_equal(u.user.c_str(), "default");
    assert_string_equal(u.password.c_str(), "s3cret");
    assert_int_equal(u.db, 2);

    u = OK("redis://alice@h");
    assert_string_equal(u.user.c_str(), "alice");
    assert_true(u.password.empty());

    u = OK("redis://alice:@h");
    assert_string_equal(u.user.c_str(), "alice");
    assert_true(u.password.empty());

    u = OK("redis://@h");
    assert_true(u.user.empty());
    assert_true(u.password.empty());

    /* percent-decoding */
    u = OK("redis://us%65r:p%40ss%3Aw%2fd%25@h");
    assert_string_equal(u.user.c_str(), "user");
    assert_string_equal(u.password.c_str(), "p@ss:w/d%");

    /* a password may hold ':' ... */
    u = OK("redis://u:a:b:c@h");
    assert_string_equal(u.user.c_str(), "u");
    assert_string_equal(u.password.c_str(), "a:b:c");

    /* ... and, unescaped, '@', '/', '?' and '#': the last '@' wins */
    u = OK("redis://u:p@ss/w?rd#x@h:7000/4");
    assert_string_equal(u.password.c_str(), "p@ss/w?rd#x");
    assert_string_equal(u.host.c_str(), "h");
    assert_int_equal(u.port, 7000);
    assert_int_equal(u.db, 4);

    u = OK("rediss://u:pw@[::1]:7000");
    assert_true(u.tls);
    assert_string_equal(u.host.c_str(), "::1");
    assert_string_equal(u.password.c_str(), "pw");
}


void
test_unix_forms(void **)
{
    RedisUrl u = OK("unix:/tmp/redis.sock");
    assert_true(u.unix_socket);
    assert_false(u.tls);
    assert_string_equal(u.path.c_str(), "/tmp/redis.sock");
    assert_true(u.host.empty());
    assert_int_equal(u.db, 0);

    u = OK("unix:/var/run/redis/r.sock?db=1&password=x&user=u");
    assert_string_equal(u.path.c_str(), "/var/run/redis/r.sock");
    assert_int_equal(u.db, 1);
    assert_string_equal(u.password.c_str(), "x");
    assert_string_equal(u.user.c_str(), "u");

    u = OK("unix:/r.sock?user=u&db=7");
    assert_int_equal(u.db, 7);
    assert_string_equal(u.user.c_str(), "u");
    assert_true(u.password.empty());

    u = OK("unix:/r.sock?password=p%26q%3D&db=2147483647");
    assert_string_equal(u.password.c_str(), "p&q=");
    assert_int_equal(u.db, 2147483647);

    u = OK("unix:/r.sock?");
    assert_int_equal(u.db, 0);

    u = OK("unix:/r.sock?db=3&&");
    assert_int_equal(u.db, 3);

    u = OK("unix:///tmp/r.sock");
    assert_string_equal(u.path.c_str(), "/tmp/r.sock");

    /* found by t/fuzz (corpus/redis_url/crash-extra-slashes): extra
     * leading slashes once stayed in the path, so the masked form read
     * back as another path ("unix:////x" even as "unix://x", a host) */
    u = OK("unix://///run/r.sock?password=Hunter2");
    assert_string_equal(u.path.c_str(), "/run/r.sock");
    u = OK("unix:////x");
    assert_string_equal(u.path.c_str(), "/x");

    u = OK("UNIX:/tmp/r.sock");
    assert_string_equal(u.path.c_str(), "/tmp/r.sock");

    u = OK("unix:/" + std::string(106, 'a'));   /* 107 bytes: the limit */
}


void
test_errors(void **)
{
    REFUSED("", "expected redis://, rediss://, unix:, sentinel://");
    REFUSED("http://h:6379", "unknown scheme \"http\"");
    REFUSED("https://h", "unknown scheme \"https\"");
    REFUSED("redis+sentinel://h", "unknown scheme \"redis+sentinel\"");
    REFUSED("localhost:6379", "expected redis://, rediss://, unix:, sentinel://");
    REFUSED("localhost", "expected redis://, rediss://, unix:, sentinel://");
    REFUSED("redis:/h", "expected redis://");
    REFUSED("redis:h", "expected redis://");
    REFUSED("//h:6379", "expected redis://");
    REFUSED(" redis://h", "expected redis://");

    REFUSED("redis://", "missing host");
    REFUSED("redis://:6379", "missing host");
    REFUSED("redis:///0", "missing host");
    REFUSED("redis://u:pw@", "missing host", "pw");
    REFUSED("redis://u:pw@:6379/0", "missing host", "pw");
    REFUSED("redis://h st", "invalid character in host");
    REFUSED("redis://h%41", "invalid character in host");
    REFUSED("redis://[::1", "IPv6");
    REFUSED("redis://[]:6379", "IPv6");
    REFUSED("redis://[zz::1]", "IPv6");
    REFUSED("redis://[127.0.0.1]", "IPv6");
    REFUSED("redis://[::1]x", "invalid character after host");

    REFUSED("redis://h:", "missing port");
    /* the port is named, never quoted (see test_errors_never_leak) */
    REFUSED("redis://h:0", "invalid port (expected", "\"0\"");
    REFUSED("redis://h:65536", "invalid port (expected", "65536");
    REFUSED("redis://h:99999", "invalid port (expected", "99999");
    REFUSED("redis://h:-1", "invalid port");
    REFUSED("redis://h:+80", "invalid port");
    REFUSED("redis://h:0x50", "invalid port");
    REFUSED("redis://h: 80", "invalid port");
    REFUSED("redis://h:6379:6380", "invalid port");
    REFUSED("redis://h:99999999999999999999999", "invalid port");

    REFUSED("redis://h/x", "invalid database number");
    REFUSED("redis://h/-1", "invalid database number");
    REFUSED("redis://h/2147483648", "invalid database number");
    REFUSED("redis://h/1/2", "invalid database number");
    REFUSED("redis://h/0x1", "invalid database number");
    REFUSED("redis://h/0?db=1", "query");
    REFUSED("redis://h#frag", "#");

    REFUSED("redis://u:p%zzw@h", "invalid percent-encoding in credentials",
            "p%zzw", "zz");
    REFUSED("redis://u:pw%4@h", "invalid percent-encoding in credentials",
            "pw");
    REFUSED("redis://u%@h", "invalid percent-encoding in credentials");

    REFUSED("unix:", "missing unix socket path");
    REFUSED("unix:?db=1", "missing unix socket path");
    REFUSED("unix:relative.sock", "must be absolute");
    REFUSED("unix:./r.sock", "must be absolute");
    REFUSED("unix://host/r.sock", "no host");
    REFUSED("unix:/" + std::string(107, 'a'), "too long");
    REFUSED(std::string("unix:/a\0b", 9), "invalid character");
    REFUSED("unix:/r.sock?foo=1", "unknown query parameter \"foo\"");
    REFUSED("unix:/r.sock?db=1&timeout=5", "\"timeout\"");
    REFUSED("unix:/r.sock?db=x", "invalid database number");
    REFUSED("unix:/r.sock?db=", "invalid database number");
    REFUSED("unix:/r.sock?db=1&db=2", "duplicate query parameter \"db\"");
    REFUSED("unix:/r.sock?password=a&password=b",
            "duplicate query parameter \"password\"", "=a", "=b");
    REFUSED("unix:/r.sock?password=p%zz", "invalid percent-encoding",
            "p%zz");
    REFUSED("unix:/r.sock?user=%", "invalid percent-encoding");
    REFUSED("unix:/r.sock?hunter2", "expected key=value", "hunter2");
}


/* Passwords must not surface in errors, however broken the URL. */
void
test_errors_never_leak(void **)
{
    const char *pw = "Hunter2Secret";

    REFUSED("redis://default:Hunter2Secret@h:99999", "invalid port",
            pw, "default");
    REFUSED("redis://default:Hunter2Secret@h/xx", "database", pw);
    REFUSED("redis://default:Hunter2Secret@h st", "host", pw);
    REFUSED("redis://default:Hunter2Secret@[::1", "IPv6", pw);
    REFUSED("redis://default:Hunter2Secret%@h", "percent", pw);
    REFUSED("redis://default:Hunter2Secret@h?x=1", "query", pw);
    REFUSED("http://default:Hunter2Secret@h", "unknown scheme \"http\"",
            pw, "default");
    REFUSED("default:Hunter2Secret@h:6379", "expected", pw, "default");
    REFUSED("default:Hunter2Secret@h://x", "expected", pw, "default");
    REFUSED("redis:default:Hunter2Secret@h", "expected", pw);

    /* the host forgotten: the password would be read as the port */
    REFUSED("redis://default:Hunter2Secret", "invalid port", pw);
    REFUSED("redis://default:Hunter2Secret/0", "invalid port", pw);
    REFUSED("redis://default:123456789", "invalid port", "123456789");
    /* issue 10 item 4: a short all-digit password read as the port */
    REFUSED("redis://default:937162", "invalid port", "937162", "default");
    REFUSED("redis://default:93716", "invalid port", "93716", "default");
    REFUSED("redis://default:937162/0", "invalid port", "937162");

    REFUSED("unix:/r.sock?password=Hunter2Secret&bogus=1",
            "unknown query parameter \"bogus\"", pw);
    REFUSED("unix:/r.sock?pass word=Hunter2Secret", "unknown query parameter",
            pw, "pass word");
    REFUSED("unix:/r.sock?password=Hunter2Secret%", "percent", pw);
    REFUSED("unix:/r.sock?password=Hunter2Secret&password=x", "duplicate",
            pw);
    REFUSED("unix:/r.sock?db=Hunter2Secret", "database", pw);
}


/* Where the authority could hold a password, the caller (conf.cpp) must
 * not quote the host in its own messages (a name that does not resolve). */
void
test_secret_authority(void **)
{
    RedisUrl u;

    assert_true(parse_redis_url("redis://cache.example/0", &u).empty());
    assert_false(u.secret_authority);
    assert_true(parse_redis_url("redis://cache.example:6380", &u).empty());
    assert_true(u.secret_authority);
    assert_true(parse_redis_url("redis://u:pw@cache.example", &u).empty());
    assert_true(u.secret_authority);
    assert_true(parse_redis_url("redis://:pw@cache.example/1", &u).empty());
    assert_true(u.secret_authority);
    /* the '/' of a password ends the authority, the '@' still counts */
    assert_true(parse_redis_url("redis://u:a/b@h", &u).empty());
    assert_true(u.secret_authority);
    assert_true(parse_redis_url("rediss://[::1]:6379", &u).empty());
    assert_true(u.secret_authority);
    assert_true(parse_redis_url("unix:/r.sock?password=x", &u).empty());
    assert_false(u.secret_authority);
}


void
test_mask(void **)
{
    assert_string_equal(mask("redis://127.0.0.1").c_str(),
                        "redis://127.0.0.1:6379/0");
    assert_string_equal(mask("redis://127.0.0.1:6379/0").c_str(),
                        "redis://127.0.0.1:6379/0");
    assert_string_equal(mask("redis://:pw@h").c_str(),
                        "redis://:***@h:6379/0");
    assert_string_equal(mask("redis://u:pw@h/2").c_str(),
                        "redis://u:***@h:6379/2");
    assert_string_equal(mask("redis://default:pw@127.0.0.1:6379/0").c_str(),
                        "redis://default:***@127.0.0.1:6379/0");
    assert_string_equal(mask("redis://u@h").c_str(), "redis://u@h:6379/0");
    assert_string_equal(mask("redis://u:@h").c_str(), "redis://u@h:6379/0");
    assert_string_equal(mask("redis://@h").c_str(), "redis://h:6379/0");
    assert_string_equal(mask("rediss://u:pw@h:6380/1").c_str(),
                        "rediss://u:***@h:6380/1");
    assert_string_equal(mask("redis://[::1]").c_str(),
                        "redis://[::1]:6379/0");
    assert_string_equal(mask("REDIS://H").c_str(), "redis://H:6379/0");

    /* a user with URL-special bytes is shown escaped, so the mask still
     * reads as one URL (and a CR/LF cannot forge a log line) */
    assert_string_equal(mask("redis://a%40b%0d%0a:pw@h").c_str(),
                        "redis://a%40b%0D%0A:***@h:6379/0");

    assert_string_equal(mask("unix:/tmp/r.sock").c_str(),
                        "unix:/tmp/r.sock?db=0");
    assert_string_equal(mask("unix:/tmp/r.sock?db=1").c_str(),
                        "unix:/tmp/r.sock?db=1");
    assert_string_equal(
        mask("unix:/tmp/r.sock?password=x&user=u&db=3").c_str(),
        "unix:/tmp/r.sock?db=3&user=u&password=***");
    assert_string_equal(mask("unix:/tmp/r.sock?user=u").c_str(),
                        "unix:/tmp/r.sock?db=0&user=u");
    assert_string_equal(mask("unix:/tmp/r.sock?password=x").c_str(),
                        "unix:/tmp/r.sock?db=0&password=***");
    assert_string_equal(mask("unix:///tmp/r.sock").c_str(),
                        "unix:/tmp/r.sock?db=0");

    /* the password never shows, whatever it looks like */
    static const char *const urls[] = {
        "redis://:Hunter2Secret@h", "redis://u:Hunter2Secret@h",
        "rediss://u:Hunter2Secret@[::1]:7000/9",
        "redis://u:Hunter2Secret@Hunter2Secret",
        "unix:/tmp/r.sock?password=Hunter2Secret",
        "redis://u:Hunter2%53ecret@h",
    };

    for (const char *url : urls) {
        RedisUrl u = OK(url);
        std::string m = mask_redis_url(u);
        /* one of them uses the password as the host name too */
        std::string checked = u.unix_socket ? m
                              : m.substr(0, m.rfind('@') + 1);

        assert_null(strstr(checked.c_str(), "Hunter2"));
        assert_non_null(strstr(m.c_str(), "***"));
    }
}


/* sentinel:// (SPEC §10): the sentinels, the master's name, the database,
 * the data nodes' credentials and the sentinels' password */
void
test_sentinel(void **)
{
    RedisUrl u;

    assert_true(parse_redis_url("sentinel://127.0.0.1:26379/mymaster", &u)
                    .empty());
    assert_true(u.sentinel);
    assert_false(u.tls);
    assert_false(u.unix_socket);
    assert_int_equal(u.sentinels.size(), 1);
    assert_string_equal(u.sentinels[0].host.c_str(), "127.0.0.1");
    assert_int_equal(u.sentinels[0].port, 26379);
    assert_string_equal(u.master.c_str(), "mymaster");
    assert_int_equal(u.db, 0);
    assert_true(u.password.empty());
    assert_true(u.sentinel_password.empty());

    u = RedisUrl();
    assert_true(parse_redis_url("SENTINEL://u:p%40ss@a,b:26380,[::1]:7/m-1.x_y/3"
                                "  sentinel_password=s3cr/et@x",
                                &u)
                    .empty());
    assert_int_equal(u.sentinels.size(), 3);
    assert_string_equal(u.sentinels[0].host.c_str(), "a");
    assert_int_equal(u.sentinels[0].port, 26379);
    assert_string_equal(u.sentinels[1].host.c_str(), "b");
    assert_int_equal(u.sentinels[1].port, 26380);
    assert_string_equal(u.sentinels[2].host.c_str(), "::1");
    assert_int_equal(u.sentinels[2].port, 7);
    assert_string_equal(u.master.c_str(), "m-1.x_y");
    assert_int_equal(u.db, 3);
    assert_string_equal(u.user.c_str(), "u");
    assert_string_equal(u.password.c_str(), "p@ss");
    assert_string_equal(u.sentinel_password.c_str(), "s3cr/et@x");
    assert_true(u.secret_authority);

    /* a password with '/' and '@' stays in the userinfo */
    u = RedisUrl();
    assert_true(parse_redis_url("sentinel://:a/b@c@h:1/m/", &u).empty());
    assert_string_equal(u.password.c_str(), "a/b@c");
    assert_string_equal(u.sentinels[0].host.c_str(), "h");
    assert_int_equal(u.db, 0);

    /* the mask: both passwords hidden, and it reads back the same */
    std::string m =
        mask("sentinel://u:Hunter2Secret@a,b:26380,[::1]:7/mm/3 "
             "sentinel_password=Hunter2Other");
    assert_string_equal(m.c_str(),
                        "sentinel://u:***@a:26379,b:26380,[::1]:7/mm/3 "
                        "sentinel_password=***");
    assert_null(strstr(m.c_str(), "Hunter2"));

    RedisUrl again;
    assert_true(parse_redis_url(m, &again).empty());
    assert_true(mask_redis_url(again) == m);
    assert_string_equal(again.password.c_str(), "***");
    assert_string_equal(again.sentinel_password.c_str(), "***");

    assert_string_equal(mask("sentinel://h/m").c_str(),
                        "sentinel://h:26379/m/0");

    /* refusals: named, never quoting a secret */
    REFUSED("sentinel://h:26379", "missing master name", "26379");
    REFUSED("sentinel://h:26379/", "missing master name");
    REFUSED("sentinel://h:26379//0", "missing master name");
    REFUSED("sentinel:///m", "missing sentinel host");
    REFUSED("sentinel://a,,b/m", "missing sentinel host");
    REFUSED("sentinel://a,/m", "missing sentinel host");
    REFUSED("sentinel://u:Secret9@h:Secret9/m", "invalid port", "Secret9");
    REFUSED("sentinel://h:0/m", "invalid port");
    REFUSED("sentinel://h:/m", "missing port");
    REFUSED("sentinel://h!x/m", "invalid character in sentinel host");
    REFUSED("sentinel://h/m y=1", "unknown parameter \"y\"");
    REFUSED("sentinel://h/m$x", "invalid character in master name");
    REFUSED("sentinel://h/m/x", "invalid database number");
    REFUSED("sentinel://h/m?db=1", "query parameters");
    REFUSED("sentinel://h/m sentinel_password=", "empty sentinel_password=");
    REFUSED("sentinel://h/m sentinel_password=Secret8 "
            "sentinel_password=Secret8",
            "duplicate sentinel_password=", "Secret8");
    REFUSED("sentinel://h/m Secret7", "unknown parameter", "Secret7");
    REFUSED("sentinel://h/m sentinel_pass=Secret6", "unknown parameter",
            "Secret6");
    REFUSED("sentinel://[::1/m", "missing \"]\"");
    REFUSED("sentinel://" + std::string(17 * 2, ',') + "/m",
            "missing sentinel host");

    std::string many = "sentinel://h";
    for (int i = 0; i < 16; i++) {
        many += ",h";
    }
    REFUSED(many + "/m", "too many sentinels");
}


/* rediss-sentinel:// (Lettuce's name): sentinel:// with TLS to the
 * sentinels and the data nodes; parsed and masked the same way */
void
test_sentinel_tls(void **)
{
    RedisUrl u;

    assert_true(parse_redis_url("rediss-sentinel://:pw@10.0.0.1,sentinel-2:"
                                "26380/mymaster/2 sentinel_password=Spw",
                                &u)
                    .empty());
    assert_true(u.sentinel);
    assert_true(u.tls);
    assert_false(u.cluster);
    assert_int_equal(u.sentinels.size(), 2);
    assert_string_equal(u.sentinels[0].host.c_str(), "10.0.0.1");
    assert_int_equal(u.sentinels[0].port, 26379);
    assert_string_equal(u.sentinels[1].host.c_str(), "sentinel-2");
    assert_int_equal(u.sentinels[1].port, 26380);
    assert_string_equal(u.master.c_str(), "mymaster");
    assert_int_equal(u.db, 2);
    assert_string_equal(u.password.c_str(), "pw");
    assert_string_equal(u.sentinel_password.c_str(), "Spw");

    u = RedisUrl();
    assert_true(parse_redis_url("REDISS-SENTINEL://h/m", &u).empty());
    assert_true(u.tls && u.sentinel);

    /* plain sentinel:// stays without TLS */
    u = RedisUrl();
    assert_true(parse_redis_url("sentinel://h/m", &u).empty());
    assert_false(u.tls);

    /* the mask keeps the scheme, hides both passwords, reads back */
    std::string m = mask("rediss-sentinel://u:Hunter2Secret@a,[::1]:7/mm "
                         "sentinel_password=Hunter2Other");
    assert_string_equal(m.c_str(), "rediss-sentinel://u:***@a:26379,"
                                   "[::1]:7/mm/0 sentinel_password=***");
    assert_null(strstr(m.c_str(), "Hunter2"));

    RedisUrl again;
    assert_true(parse_redis_url(m, &again).empty());
    assert_true(again.tls && again.sentinel);
    assert_true(mask_redis_url(again) == m);

    /* the same refusals as sentinel://, never quoting a secret */
    REFUSED("rediss-sentinel://h:26379", "missing master name", "26379");
    REFUSED("rediss-sentinel://u:Secret9@h:Secret9/m", "invalid port",
            "Secret9");
    REFUSED("rediss-sentinel://h/m Secret7", "unknown parameter", "Secret7");
    REFUSED("rediss-sentinel:///m", "missing sentinel host");
    REFUSED("rediss+sentinel://h/m", "unknown scheme \"rediss+sentinel\"");
    REFUSED("", "rediss-sentinel://");
}

}  // namespace

/* redis-cluster:// (SPEC §10): seeds, credentials once, db 0 only */
void
test_cluster_forms(void **)
{
    RedisUrl u = OK("redis-cluster://127.0.0.1:7000");
    assert_true(u.cluster);
    assert_int_equal(u.cluster_seeds.size(), 1);
    assert_string_equal(u.host.c_str(), "127.0.0.1");
    assert_int_equal(u.port, 7000);

    u = OK("redis-cluster://default:s3cr%40t@10.0.0.1:7000,10.0.0.2,"
           "[::1]:7002/0");
    assert_true(u.cluster);
    assert_string_equal(u.user.c_str(), "default");
    assert_string_equal(u.password.c_str(), "s3cr@t");
    assert_int_equal(u.cluster_seeds.size(), 3);
    assert_string_equal(u.cluster_seeds[0].host.c_str(), "10.0.0.1");
    assert_int_equal(u.cluster_seeds[0].port, 7000);
    assert_string_equal(u.cluster_seeds[1].host.c_str(), "10.0.0.2");
    assert_int_equal(u.cluster_seeds[1].port, 6379);
    assert_string_equal(u.cluster_seeds[2].host.c_str(), "::1");
    assert_int_equal(u.cluster_seeds[2].port, 7002);

    /* a password holding a comma and an '@' stays a password */
    u = OK("redis-cluster://:a,b@c@h1:1,h2:2");
    assert_string_equal(u.password.c_str(), "a,b@c");
    assert_int_equal(u.cluster_seeds.size(), 2);

    assert_false(OK("redis://h:1").cluster);

    assert_string_equal(
        mask("redis-cluster://u:pw@10.0.0.1:7000,10.0.0.2:7001").c_str(),
        "redis-cluster://u:***@10.0.0.1:7000,10.0.0.2:7001");
    assert_string_equal(mask("REDIS-CLUSTER://h").c_str(),
                        "redis-cluster://h:6379");

    REFUSED("redis-cluster://", "missing host");
    REFUSED("redis-cluster://u:pw@", "missing host", "pw");
    REFUSED("redis-cluster://h1:1,,h2:2", "empty seed");
    REFUSED("redis-cluster://h1:1,", "empty seed");
    REFUSED("redis-cluster://h1:1/3", "database 0 only");
    REFUSED("redis-cluster://h1:1/0,h2:2", "invalid character");
    REFUSED("redis-cluster://u:pw@h1:99999,h2", "invalid port", "pw",
            "99999");
    REFUSED("redis-cluster://h1:1,h$2", "invalid character in host");
    REFUSED("redis-cluster://u:pw@h1?x=1", "query", "pw");
}

/* rediss-cluster://: the same seeds over TLS */
void
test_cluster_tls(void **)
{
    RedisUrl u = OK("rediss-cluster://default:s3cr%40t@redis-1.internal:7000,"
                    "10.0.0.2,[::1]:7002/0");
    assert_true(u.cluster);
    assert_true(u.tls);
    assert_false(u.sentinel);
    assert_string_equal(u.user.c_str(), "default");
    assert_string_equal(u.password.c_str(), "s3cr@t");
    assert_int_equal(u.cluster_seeds.size(), 3);
    assert_string_equal(u.cluster_seeds[0].host.c_str(), "redis-1.internal");
    assert_int_equal(u.cluster_seeds[0].port, 7000);
    assert_string_equal(u.cluster_seeds[1].host.c_str(), "10.0.0.2");
    assert_int_equal(u.cluster_seeds[1].port, 6379);
    assert_string_equal(u.cluster_seeds[2].host.c_str(), "::1");
    assert_string_equal(u.host.c_str(), "redis-1.internal");
    assert_int_equal(u.port, 7000);

    assert_false(OK("redis-cluster://h:1").tls);
    assert_true(OK("REDISS-CLUSTER://h:1").tls);

    assert_string_equal(
        mask("rediss-cluster://u:pw@10.0.0.1:7000,[::1]:7001").c_str(),
        "rediss-cluster://u:***@10.0.0.1:7000,[::1]:7001");
    assert_string_equal(mask("REDISS-CLUSTER://h").c_str(),
                        "rediss-cluster://h:6379");

    /* the masked form reads back as the same cluster, over TLS */
    u = RedisUrl();
    assert_true(
        parse_redis_url(mask("rediss-cluster://:pw@h1:1,h2:2"), &u).empty());
    assert_true(u.cluster && u.tls);
    assert_int_equal(u.cluster_seeds.size(), 2);

    REFUSED("rediss-cluster://", "missing host");
    REFUSED("rediss-cluster://u:pw@", "missing host", "pw");
    REFUSED("rediss-cluster://h1:1,,h2:2", "empty seed");
    REFUSED("rediss-cluster://h1:1/3", "database 0 only");
    REFUSED("rediss-cluster://u:pw@h1:99999,h2", "invalid port", "pw",
            "99999");
    REFUSED("rediss-cluster://u:pw@h1?x=1", "query", "pw");
    REFUSED("rediss-clusters://h1", "unknown scheme \"rediss-clusters\"");
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tcp_forms),
        cmocka_unit_test(test_credentials),
        cmocka_unit_test(test_unix_forms),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_errors_never_leak),
        cmocka_unit_test(test_secret_authority),
        cmocka_unit_test(test_mask),
        cmocka_unit_test(test_cluster_forms),
        cmocka_unit_test(test_cluster_tls),
        cmocka_unit_test(test_sentinel),
        cmocka_unit_test(test_sentinel_tls),
    };

    return cmocka_run_group_tests_name("redis_url", tests, nullptr, nullptr)
           ? 1 : 0;
}
