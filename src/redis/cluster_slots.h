/*
 * Redis Cluster's key space (SPEC §10), pure logic: the slot of a key
 * (CRC16-XMODEM of the key, or of its hash tag, modulo 16384, as Redis's
 * cluster specification says), the slot map built from a CLUSTER SLOTS
 * reply (slot -> master node), and the MOVED / ASK redirections.
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "redis/resp.h"

namespace session_cache {

constexpr unsigned kClusterSlots = 16384;

/* CRC16-CCITT (XMODEM): poly 0x1021, init 0, no reflection. */
std::uint16_t crc16(const char *data, std::size_t len) noexcept;

/* The slot of key: the part between the first '{' and the next '}' when
 * that part is not empty (a hash tag), else the whole key. */
unsigned key_slot(std::string_view key) noexcept;

/* "127.0.0.1:7000", "[::1]:7000": the address a node is known by. */
std::string node_address(std::string_view host, int port);

/*
 * Which master serves each slot. Nodes are numbered in the order their
 * first range appears; a slot no master serves maps to kNone.
 */
class SlotMap {
public:
    static constexpr std::uint16_t kNone = 0xffff;

    SlotMap() noexcept
    {
        for (unsigned s = 0; s < kClusterSlots; s++) {
            slots_[s] = kNone;
        }
    }

    /* From CLUSTER SLOTS' ranges. false and *error (in the module's
     * words) when the reply cannot be a slot map: a range out of
     * 0..16383 or reversed, a master without a usable address, more
     * nodes than kMaxNodes. The map is unchanged then. */
    bool build(const ClusterSlotRange *ranges, std::size_t n,
               std::string *error);

    std::uint16_t node_of(unsigned slot) const noexcept
    {
        return slot < kClusterSlots ? slots_[slot] : kNone;
    }

    const std::vector<std::string> &nodes() const noexcept { return nodes_; }

    /* slots some master serves */
    std::size_t covered() const noexcept { return covered_; }

    /* slots served by node i */
    std::size_t slots_of(std::size_t i) const noexcept;

    bool empty() const noexcept { return nodes_.empty(); }

    /* the same assignment of slots to addresses */
    bool same(const SlotMap &other) const noexcept;

    static constexpr std::size_t kMaxNodes = 1000;

private:
    std::uint16_t            slots_[kClusterSlots];
    std::vector<std::string> nodes_;
    std::size_t              covered_ = 0;
};

/* A MOVED or ASK error reply: "MOVED 3999 127.0.0.1:6381". */
struct Redirect {
    bool        ask = false; /* ASK: this once; MOVED: from now on */
    unsigned    slot = 0;
    std::string host; /* an IP, or a name (cluster-announce-hostname) */
    int         port = 0;
};

/* false: not a MOVED or ASK reply, or a malformed one. */
bool parse_redirect(std::string_view error, Redirect *out);

} // namespace session_cache
