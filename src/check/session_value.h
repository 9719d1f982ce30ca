/*
 * The cached session value (SPEC §3): the JSON object
 *   {"user_id":"<id>","expires_at":<unix seconds>}
 * stored under prefix+token, and the negative entry that marks an unknown
 * token. Pure logic: no nginx types.
 */
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace session_cache {

struct Session {
    std::string  user_id;
    bool         has_expiry = false;
    std::int64_t expires_at = 0; /* unix seconds, valid if has_expiry */
};

/* The longest user id accepted (see user_id_acceptable). */
constexpr std::size_t kMaxUserIdLength = 256;

/* A decoded session whose user id lives in the caller's buffer. */
struct SessionView {
    std::string_view user_id;
    bool             has_expiry = false;
    std::int64_t     expires_at = 0;
};

enum class Decoded {
    Valid,    /* a usable session, *out filled */
    Negative, /* the negative marker: the token is known to be invalid */
    Expired,  /* a well-formed session whose expires_at <= now */
    Malformed /* anything else: not JSON, wrong types, hostile input */
};

/*
 * The exact value written for a negative entry. It is not a JSON object
 * with a user_id, so it can never decode as a valid session.
 */
std::string_view negative_marker() noexcept;

/*
 * Decode a value read from Redis. Strict: the top level must be one JSON
 * object; "user_id" must be present exactly once as a string that passes
 * user_id_acceptable() after unescaping; "expires_at", if present, must be
 * an integer (no fraction, no exponent) that fits in int64. Unknown keys
 * are ignored (their values are still validated as JSON, nesting depth is
 * limited to 16). Duplicate "user_id"/"expires_at" keys are Malformed.
 * Never throws; never reads past value.end().
 */
Decoded decode_session(std::string_view value, std::int64_t now,
                       Session *out) noexcept;

/*
 * The same, allocating nothing (the cache-hit path): the user id is
 * unescaped into user_id, which has room for kMaxUserIdLength bytes, and
 * out->user_id points into it.
 */
Decoded decode_session(std::string_view value, std::int64_t now,
                       SessionView *out, char *user_id) noexcept;

/*
 * Encode a session as the JSON object above; "expires_at" is omitted when
 * !has_expiry. user_id is escaped as JSON (", \, control characters as
 * \u00XX). Returns false only on allocation failure.
 */
bool encode_session(const Session &s, std::string *out) noexcept;

/*
 * A user id is acceptable when it is 1..256 bytes and holds no ASCII control
 * character (0x00..0x1f, 0x7f): it ends up in request headers such as
 * X-User-Id, so CR/LF must never get through. Bytes >= 0x80 are allowed.
 */
bool user_id_acceptable(std::string_view id) noexcept;

/*
 * Seconds a valid session may stay cached: min(ttl, expires_at - now) when
 * the expiry is known, else ttl. A result <= 0 means "do not cache".
 */
std::int64_t cache_seconds(std::int64_t ttl, const Session &s,
                           std::int64_t now) noexcept;

} // namespace session_cache
