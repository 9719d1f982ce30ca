/*
 * Token plausibility rules (SPEC §4.1).
 */
#include "check/token.h"

namespace session_cache {

bool token_plausible(const unsigned char *data, std::size_t len) noexcept
{
    if (data == nullptr || len == 0 || len > kMaxTokenLength) {
        return false;
    }

    for (std::size_t i = 0; i < len; i++) {
        unsigned char c = data[i];

        /* ';' would split a Cookie header; the rest keeps the token safe to
         * put in a Redis key, a log line and a SQL parameter. */
        if (c < 0x21 || c > 0x7e || c == ';') {
            return false;
        }
    }

    return true;
}

} // namespace session_cache
