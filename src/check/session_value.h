/*
 * The cached session value (SPEC §3, §12): the JSON object
 *   {"user_id":"<id>","expires_at":<unix seconds>,"attrs":{"role":"admin"}}
 * stored under prefix+token ("expires_at" and "attrs" optional), and the
 * negative entry that marks an unknown token. Pure logic: no nginx types.
 */
#pragma once

#include "identity.h"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace session_cache {


/* Room for every attribute's value, unescaped: the size of the buffer
 * decode_session() takes for them. */
constexpr std::size_t kAttrBufferSize = kMaxAttrs * kMaxAttrValueLength;

struct Attr {
    std::string name;
    std::string value;
};

struct Session {
    std::string       user_id;
    bool              has_expiry = false;
    std::int64_t      expires_at = 0; /* unix seconds, valid if has_expiry */
    std::vector<Attr> attrs;          /* SQL NULL: not there */
};

struct AttrView {
    std::string_view name;
    std::string_view value;
};

/* A decoded session whose user id and attributes live in the caller's
 * buffers or in the value decoded (see decode_session()). */
struct SessionView {
    std::string_view user_id;
    bool             has_expiry = false;
    std::int64_t     expires_at = 0;
    std::size_t      nattrs = 0;
    AttrView         attrs[kMaxAttrs];
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
 * limited to 16). Duplicate "user_id"/"expires_at"/"attrs" keys are
 * Malformed. "attrs", if present, must be an object of at most kMaxAttrs
 * members, each named by a distinct acceptable name, each a string that
 * passes attr_value_acceptable() after unescaping, or null (as if it were
 * not there); anything else there is Malformed.
 * Never throws; never reads past value.end().
 */
Decoded decode_session(std::string_view value, std::int64_t now,
                       Session *out) noexcept;

/*
 * The same, allocating nothing (the cache-hit path): the user id is
 * unescaped into user_id, which has room for kMaxUserIdLength bytes, and
 * out->user_id points into it. out->attrs point into value itself (names,
 * and values written without escapes) or into attrs, which has room for
 * kAttrBufferSize bytes (values with escapes, unescaped): out is good
 * while both are.
 */
Decoded decode_session(std::string_view value, std::int64_t now,
                       SessionView *out, char *user_id, char *attrs) noexcept;

/*
 * Encode a session as the JSON object above; "expires_at" is omitted when
 * !has_expiry, "attrs" when there are none. Strings are escaped as JSON (", \, control characters as
 * \u00XX). Returns false only on allocation failure.
 */
bool encode_session(const Session &s, std::string *out) noexcept;


/*
 * Seconds a valid session may stay cached: min(ttl, expires_at - now) when
 * the expiry is known, else ttl. A result <= 0 means "do not cache".
 */
std::int64_t cache_seconds(std::int64_t ttl, const Session &s,
                           std::int64_t now) noexcept;

} // namespace session_cache
