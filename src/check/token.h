/*
 * Token plausibility rules (SPEC §4.1). Pure logic: no nginx types, so the
 * unit tests link this file alone.
 */
#pragma once

#include <cstddef>

namespace session_cache {

constexpr std::size_t kMaxTokenLength = 512;

/*
 * A token is plausible when it is 1..512 bytes long and every byte is
 * printable ASCII other than space and ';' (0x21..0x7e, except 0x3b).
 * Anything else is refused with 401 before any backend is touched.
 */
bool token_plausible(const unsigned char *data, std::size_t len) noexcept;

} // namespace session_cache
