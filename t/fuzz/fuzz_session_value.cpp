/*
 * libFuzzer target: the cached-value decoder (SPEC §3). Whatever Redis
 * hands back, decode_session() never crashes, a Valid or Expired result
 * carries an acceptable user id, only the exact marker is Negative, and a
 * decoded session encodes and decodes back to itself.
 */
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "check/session_value.h"

using namespace session_cache;

extern "C" int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exact-size heap copy, so ASan sees any read past the end */
    std::string input(reinterpret_cast<const char *>(data), size);
    std::string_view value(input);
    const std::int64_t now = 1700000000;
    Session s;

    Decoded d = decode_session(value, now, &s);

    if (d == Decoded::Negative && value != negative_marker()) {
        abort();
    }

    if (d != Decoded::Valid && d != Decoded::Expired) {
        return 0;
    }

    if (!user_id_acceptable(s.user_id) || s.attrs.size() > kMaxAttrs) {
        abort();
    }

    for (const Attr &a : s.attrs) {
        if (!attr_name_acceptable(a.name) || !attr_value_acceptable(a.value)) {
            abort();
        }
    }

    if (d == Decoded::Expired && !(s.has_expiry && s.expires_at <= now)) {
        abort();
    }

    if (d == Decoded::Valid && s.has_expiry && s.expires_at <= now) {
        abort();
    }

    std::string encoded;
    Session back;

    if (!encode_session(s, &encoded)) {
        return 0;  /* allocation failure */
    }

    if (decode_session(encoded, now, &back) != d
        || back.user_id != s.user_id || back.has_expiry != s.has_expiry
        || back.expires_at != s.expires_at)
    {
        abort();
    }

    for (std::size_t i = 0; i < s.attrs.size(); i++) {
        if (back.attrs[i].name != s.attrs[i].name
            || back.attrs[i].value != s.attrs[i].value) {
            abort();
        }
    }

    /* the cache lifetime never exceeds the ttl nor outlives the session */
    std::int64_t secs = cache_seconds(300, s, now);

    if (secs > 300 || (s.has_expiry && secs > 0 && now + secs > s.expires_at))
    {
        abort();
    }

    return 0;
}
