/*
 * The module's one integer parser, for every number it reads: a port, a
 * database index, an expiry from Postgres or a cached value, a figure of
 * Redis's INFO. Pure logic, header only.
 */
#pragma once

#include <charconv>
#include <string_view>
#include <system_error>

namespace session_cache {

/*
 * The whole of s as a decimal T: digits, with a leading '-' only for a
 * signed T; no '+', no spaces, no empty string. false on anything else
 * and on a value T cannot hold.
 */
template <class T>
bool parse_integer(std::string_view s, T *out) noexcept
{
    const char *end = s.data() + s.size();
    T           v{};

    auto [p, ec] = std::from_chars(s.data(), end, v);

    if (s.empty() || ec != std::errc() || p != end) {
        return false;
    }

    *out = v;
    return true;
}

} // namespace session_cache
