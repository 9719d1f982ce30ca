#include "pg/revocation.h"

#include "check/token.h"

namespace session_cache::revocation {

const char *channel_problem(std::string_view name) noexcept
{
    if (name.empty()) {
        return "is empty";
    }

    if (name.size() > kMaxChannel) {
        return "is longer than 63 bytes (a Postgres identifier's limit)";
    }

    char first = name[0];

    if (!((first >= 'a' && first <= 'z') || first == '_')) {
        return "must start with a lowercase letter or '_'";
    }

    for (char c : name) {
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) {
            return "may hold only lowercase letters, digits and '_'";
        }
    }

    return nullptr;
}

Payload classify(std::string_view payload) noexcept
{
    if (payload == "*") {
        return Payload::All;
    }

    if (!payload.empty() && payload[0] == '*') {
        return Payload::Ignored;
    }

    if (!token_plausible(
            reinterpret_cast<const unsigned char *>(payload.data()),
            payload.size()))
    {
        return Payload::Ignored;
    }

    return Payload::Token;
}

} // namespace session_cache::revocation
