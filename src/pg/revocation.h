/*
 * Revocation from Postgres (SPEC §9), its rules as pure logic: no nginx
 * types, so the unit tests link this file (and check/token.cpp) alone.
 * pg/pg_listener.cpp holds the LISTEN connection and applies them.
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace session_cache::revocation {

/* What a channel name may be: a lowercase Postgres identifier, a letter
 * or '_' then letters, digits or '_', at most 63 bytes (NAMEDATALEN - 1).
 * Lowercase only: an unquoted LISTEN Foo listens on "foo" while
 * pg_notify('Foo', ...) sends on "Foo"; refusing capitals leaves no room
 * for that mismatch. nullptr when name is one, else what is wrong. */
const char *channel_problem(std::string_view name) noexcept;

constexpr std::size_t kMaxChannel = 63;

/* What a notification's payload asks for. */
enum class Payload {
    Token,  /* a plausible token (check/token.h): drop it */
    All,    /* exactly "*": drop all of L1 */
    Ignored /* anything else, "*" followed by anything included */
};

/* A payload starting with '*' is never a token: '*' alone is the one
 * command, the rest is kept for later (a token starting with '*' is not
 * revoked by a notification; the README says so). */
Payload classify(std::string_view payload) noexcept;

/* The listener's heartbeat: an empty query every second, answered within
 * 3 s or the connection is given up. */
constexpr std::uint64_t kHeartbeatInterval = 1000;
constexpr std::uint64_t kHeartbeatTimeout = 3000;

/* Before connecting again after failures connections in a row were lost
 * or refused: 1 s, 2 s, 4 s, then 8 s. */
inline std::uint64_t reconnect_delay(unsigned failures) noexcept
{
    return kHeartbeatInterval << (failures < 3 ? failures : 3);
}

} // namespace session_cache::revocation
