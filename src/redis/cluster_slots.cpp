#include "redis/cluster_slots.h"

#include <cstring>

namespace session_cache {

namespace {

/* The table of CRC16-XMODEM for each byte, built at compile time. */
struct Crc16Table {
    std::uint16_t v[256];

    constexpr Crc16Table() : v()
    {
        for (unsigned b = 0; b < 256; b++) {
            std::uint16_t crc = static_cast<std::uint16_t>(b << 8);
            for (int i = 0; i < 8; i++) {
                crc = (crc & 0x8000)
                          ? static_cast<std::uint16_t>((crc << 1) ^ 0x1021)
                          : static_cast<std::uint16_t>(crc << 1);
            }
            v[b] = crc;
        }
    }
};

constexpr Crc16Table kCrc16;

} // namespace

std::uint16_t crc16(const char *data, std::size_t len) noexcept
{
    std::uint16_t crc = 0;

    for (std::size_t i = 0; i < len; i++) {
        auto byte = static_cast<unsigned char>(data[i]);
        crc = static_cast<std::uint16_t>(
            (crc << 8) ^ kCrc16.v[((crc >> 8) ^ byte) & 0xff]);
    }

    return crc;
}

unsigned key_slot(std::string_view key) noexcept
{
    std::size_t open = key.find('{');

    if (open != std::string_view::npos) {
        std::size_t close = key.find('}', open + 1);

        if (close != std::string_view::npos && close > open + 1) {
            key = key.substr(open + 1, close - open - 1);
        }
    }

    return crc16(key.data(), key.size()) & (kClusterSlots - 1);
}

std::string node_address(std::string_view host, int port)
{
    std::string s;

    if (host.find(':') != std::string_view::npos) {
        s += '[';
        s += host;
        s += ']';
    } else {
        s += host;
    }

    s += ':';
    s += std::to_string(port);
    return s;
}

bool SlotMap::build(const ClusterSlotRange *ranges, std::size_t n,
                    std::string *error)
{
    std::vector<std::string> nodes;
    std::uint16_t            slots[kClusterSlots];
    std::size_t              covered = 0;

    for (unsigned s = 0; s < kClusterSlots; s++) {
        slots[s] = kNone;
    }

    for (std::size_t i = 0; i < n; i++) {
        const ClusterSlotRange &r = ranges[i];

        if (r.start < 0 || r.end < r.start || r.end >= kClusterSlots) {
            *error = "CLUSTER SLOTS: a range outside 0..16383";
            return false;
        }

        /* "" or "?": the master's address is unknown (a failover in
         * progress); its slots wait for the next map */
        if (r.host.empty() || r.host == "?" || r.port <= 0 || r.port > 65535) {
            continue;
        }

        std::string   addr = node_address(r.host, static_cast<int>(r.port));
        std::uint16_t index = kNone;

        for (std::size_t k = 0; k < nodes.size(); k++) {
            if (nodes[k] == addr) {
                index = static_cast<std::uint16_t>(k);
                break;
            }
        }

        if (index == kNone) {
            if (nodes.size() >= kMaxNodes) {
                *error = "CLUSTER SLOTS: too many nodes";
                return false;
            }
            index = static_cast<std::uint16_t>(nodes.size());
            nodes.push_back(std::move(addr));
        }

        for (long long s = r.start; s <= r.end; s++) {
            if (slots[s] == kNone) {
                covered++;
            }
            slots[s] = index;
        }
    }

    if (nodes.empty()) {
        *error = "CLUSTER SLOTS: no slot is served";
        return false;
    }

    std::memcpy(slots_, slots, sizeof(slots_));
    nodes_ = std::move(nodes);
    covered_ = covered;
    return true;
}

std::size_t SlotMap::slots_of(std::size_t i) const noexcept
{
    std::size_t n = 0;

    for (unsigned s = 0; s < kClusterSlots; s++) {
        n += slots_[s] == i;
    }

    return n;
}

bool SlotMap::same(const SlotMap &other) const noexcept
{
    for (unsigned s = 0; s < kClusterSlots; s++) {
        std::uint16_t a = slots_[s], b = other.slots_[s];

        if ((a == kNone) != (b == kNone)) {
            return false;
        }
        if (a != kNone && nodes_[a] != other.nodes_[b]) {
            return false;
        }
    }

    return true;
}

bool parse_redirect(std::string_view e, Redirect *out)
{
    Redirect r;

    if (e.substr(0, 6) == "MOVED ") {
        e.remove_prefix(6);
    } else if (e.substr(0, 4) == "ASK ") {
        r.ask = true;
        e.remove_prefix(4);
    } else {
        return false;
    }

    std::size_t sp = e.find(' ');
    if (sp == 0 || sp == std::string_view::npos || sp > 5) {
        return false;
    }

    unsigned slot = 0;
    for (char c : e.substr(0, sp)) {
        if (c < '0' || c > '9') {
            return false;
        }
        slot = slot * 10 + static_cast<unsigned>(c - '0');
    }
    if (slot >= kClusterSlots) {
        return false;
    }

    std::string_view hp = e.substr(sp + 1);
    std::size_t      colon = hp.rfind(':');

    if (colon == std::string_view::npos || colon + 1 == hp.size()
        || hp.size() - colon > 6)
    {
        return false;
    }

    int port = 0;
    for (char c : hp.substr(colon + 1)) {
        if (c < '0' || c > '9') {
            return false;
        }
        port = port * 10 + (c - '0');
    }
    if (port <= 0 || port > 65535) {
        return false;
    }

    std::string_view host = hp.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
    }

    /* an empty host: the node that answered (Redis 7's
     * cluster-preferred-endpoint-type unknown-endpoint) */
    r.slot = slot;
    r.host.assign(host.data(), host.size());
    r.port = port;
    *out = std::move(r);
    return true;
}

} // namespace session_cache
