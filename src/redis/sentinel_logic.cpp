#include "redis/sentinel_logic.h"

#include "integer.h"

namespace session_cache::sentinel {

bool parse_address(std::string_view host, std::string_view port, Address *out)
{
    int p;

    if (host.empty() || host.size() > 253) {
        return false;
    }

    for (char c : host) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
                  || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_'
                  || c == ':';
        if (!ok) {
            return false;
        }
    }

    if (port.empty() || port[0] == '-' || port[0] == '+'
        || !parse_integer(port, &p) || p < 1 || p > 65535)
    {
        return false;
    }

    out->host.assign(host);
    out->port = p;
    return true;
}

bool parse_switch(std::string_view payload, std::string_view master,
                  Address *to)
{
    std::string_view word[5];
    std::size_t      n = 0;

    while (!payload.empty()) {
        std::size_t      sp = payload.find(' ');
        std::string_view w = payload.substr(0, sp);

        if (!w.empty()) {
            if (n == 5) {
                return false;
            }
            word[n++] = w;
        }

        if (sp == std::string_view::npos) {
            break;
        }
        payload.remove_prefix(sp + 1);
    }

    return n == 5 && word[0] == master && parse_address(word[3], word[4], to);
}

bool is_master_role(std::string_view role)
{
    return role == "master";
}

bool is_refusal(std::string_view code)
{
    return code == "READONLY" || code == "LOADING" || code == "MASTERDOWN";
}

std::string address_text(const Address &a)
{
    bool v6 = a.host.find(':') != std::string::npos;

    return (v6 ? "[" + a.host + "]" : a.host) + ":" + std::to_string(a.port);
}

std::uint64_t retry_delay(std::uint64_t failures)
{
    std::uint64_t d = kRetryMin;

    for (std::uint64_t i = 1; i < failures && d < kRetryMax; i++) {
        d *= 2;
    }

    return d < kRetryMax ? d : kRetryMax;
}

} // namespace session_cache::sentinel
