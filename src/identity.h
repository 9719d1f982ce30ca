/*
 * What the module accepts as a session's identity (SPEC §3, §12): the user
 * id and the attributes, wherever they come from (a cached value, a
 * Postgres row) and wherever they go (variables, request headers). Pure
 * logic: the lowest layer, for the codec in check/ and the pool in pg/.
 */
#pragma once

#include <cstddef>
#include <string_view>

namespace session_cache {

/* The longest user id accepted (see user_id_acceptable). */
constexpr std::size_t kMaxUserIdLength = 256;

/* Attributes (SPEC §12): at most this many per session, names that are
 * plain identifiers of at most kMaxAttrNameLength bytes (see
 * attr_name_acceptable), values as user ids but possibly empty (see
 * attr_value_acceptable). */
constexpr std::size_t kMaxAttrs = 16;
constexpr std::size_t kMaxAttrNameLength = 63; /* Postgres's NAMEDATALEN-1 */
constexpr std::size_t kMaxAttrValueLength = 256;


/*
 * A user id is acceptable when it is 1..256 bytes and holds no ASCII control
 * character (0x00..0x1f, 0x7f): it ends up in request headers such as
 * X-User-Id, so CR/LF must never get through. Bytes >= 0x80 are allowed.
 */
bool user_id_acceptable(std::string_view id) noexcept;

/* An attribute value: as a user id, but it may be empty. */
bool attr_value_acceptable(std::string_view value) noexcept;

/*
 * An attribute name: a plain lower-case identifier, [a-z_][a-z0-9_]*, of
 * at most kMaxAttrNameLength bytes, and not "user_id" (auth_session_require
 * names the user id so). nginx lowercases variable names: a name with
 * upper case could never be read as $session_attr_<name>.
 */
bool attr_name_acceptable(std::string_view name) noexcept;

} // namespace session_cache
