/*
 * libFuzzer target: Redis URL parsing and masking (SPEC §2, §7).
 *
 * Invariants:
 *  - a parsed URL masks to the same text whatever its password is, so the
 *    masked form cannot carry the password (or any part of it);
 *  - the masked form parses back to the same address;
 *  - an error message does not depend on the credentials: the same URL
 *    with the letters g-z/G-Z of its userinfo (redis://, rediss://) or of
 *    its password= values (unix:) or of its userinfo and sentinel_password=
 *    (sentinel://) rotated gives the very same message. Those
 *    letters mean nothing to the parser (not hex digits, not separators), so
 *    any difference would be credentials echoed into the message.
 */
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "redis/redis_url.h"

using namespace session_cache;

namespace {

char
rot(char c)
{
    if (c >= 'g' && c <= 'z') {
        return c == 'z' ? 'g' : c + 1;
    }
    if (c >= 'G' && c <= 'Z') {
        return c == 'Z' ? 'G' : c + 1;
    }
    return c;
}

bool
starts_nocase(std::string_view s, std::string_view p)
{
    if (s.size() < p.size()) {
        return false;
    }
    for (size_t i = 0; i < p.size(); i++) {
        char c = s[i];
        if (c >= 'A' && c <= 'Z') {
            c = c - 'A' + 'a';
        }
        if (c != p[i]) {
            return false;
        }
    }
    return true;
}

/* The input with its credentials' letters rotated; false if it has none. */
bool
rotate_credentials(std::string *s)
{
    bool changed = false;

    if (starts_nocase(*s, "redis://") || starts_nocase(*s, "rediss://")) {
        size_t start = s->find("://") + 3;
        size_t at = s->rfind('@');

        if (at == std::string::npos || at < start) {
            return false;
        }
        for (size_t i = start; i < at; i++) {
            char c = rot((*s)[i]);
            changed = changed || c != (*s)[i];
            (*s)[i] = c;
        }
        return changed;
    }

    if (starts_nocase(*s, "sentinel://")) {
        /* the URL's userinfo, and the value of each sentinel_password=
         * after the first white space */
        size_t start = 11;
        size_t ws = s->find_first_of(" \t\r\n", start);
        size_t end = ws == std::string::npos ? s->size() : ws;
        size_t at = s->rfind('@', end == 0 ? 0 : end - 1);

        if (at != std::string::npos && at >= start && at < end) {
            for (size_t i = start; i < at; i++) {
                char c = rot((*s)[i]);
                changed = changed || c != (*s)[i];
                (*s)[i] = c;
            }
        }

        for (size_t p = s->find("sentinel_password=", end);
             p != std::string::npos;
             p = s->find("sentinel_password=", p + 1))
        {
            if (p == 0 || !std::isspace(static_cast<unsigned char>((*s)[p - 1]))) {
                continue;
            }
            for (size_t i = p + 18;
                 i < s->size()
                 && !std::isspace(static_cast<unsigned char>((*s)[i]));
                 i++)
            {
                char c = rot((*s)[i]);
                changed = changed || c != (*s)[i];
                (*s)[i] = c;
            }
        }
        return changed;
    }

    if (starts_nocase(*s, "unix:")) {
        size_t q = s->find('?');

        /* each "password=" that starts a query parameter: its value */
        for (size_t p = q; p != std::string::npos && p + 1 < s->size();
             p = s->find('&', p + 1))
        {
            if (s->compare(p + 1, 9, "password=") != 0) {
                continue;
            }
            for (size_t i = p + 10; i < s->size() && (*s)[i] != '&'; i++) {
                char c = rot((*s)[i]);
                changed = changed || c != (*s)[i];
                (*s)[i] = c;
            }
        }
        return changed;
    }

    return false;
}

}  // namespace

extern "C" int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    std::string input(reinterpret_cast<const char *>(data), size);
    RedisUrl u;
    std::string err = parse_redis_url(input, &u);

    if (!err.empty()) {
        std::string rotated = input;

        if (rotate_credentials(&rotated)) {
            RedisUrl v;

            if (parse_redis_url(rotated, &v) != err) {
                abort();  /* the message depends on the credentials */
            }
        }
        return 0;
    }

    std::string masked = mask_redis_url(u);

    if (masked.empty()) {
        abort();
    }

    RedisUrl other = u;
    other.password = u.password.empty() ? "" : "x";
    other.sentinel_password = u.sentinel_password.empty() ? "" : "x";

    if (mask_redis_url(other) != masked) {
        abort();  /* the masked form depends on the password */
    }

    if ((!u.password.empty() || !u.sentinel_password.empty())
        && masked.find("***") == std::string::npos)
    {
        abort();  /* a password must show as *** */
    }

    RedisUrl back;

    if (!parse_redis_url(masked, &back).empty()
        || back.unix_socket != u.unix_socket || back.tls != u.tls
        || back.host != u.host || back.port != u.port || back.path != u.path
        || back.user != u.user || back.db != u.db
        || back.password != (u.password.empty() ? "" : "***")
        || back.sentinel != u.sentinel || back.master != u.master
        || back.sentinels.size() != u.sentinels.size()
        || back.sentinel_password
               != (u.sentinel_password.empty() ? "" : "***"))
    {
        abort();  /* the masked form no longer names the same address */
    }

    for (size_t i = 0; i < u.sentinels.size(); i++) {
        if (back.sentinels[i].host != u.sentinels[i].host
            || back.sentinels[i].port != u.sentinels[i].port)
        {
            abort();
        }
    }

    return 0;
}
