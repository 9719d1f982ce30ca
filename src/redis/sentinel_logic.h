/*
 * Redis Sentinel (SPEC §10): the pure rules of discovery, beside
 * sentinel.cpp, which drives them on nginx's event loop. No nginx types:
 * t/unit/test_sentinel_logic.cpp links this file alone.
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace session_cache::sentinel {

/* An address a sentinel gave: an IP literal or a name, and a port. */
struct Address {
    std::string host;
    int         port = 0;

    bool operator==(const Address &o) const
    {
        return port == o.port && host == o.host;
    }
    bool operator!=(const Address &o) const { return !(*this == o); }
};

/* The reply to SENTINEL get-master-addr-by-name, [host, port]: false
 * when it is not a plausible address (an empty or odd host, a port
 * outside 1..65535). */
bool parse_address(std::string_view host, std::string_view port, Address *out);


/* A +switch-master message, "<master> <old-ip> <old-port> <new-ip>
 * <new-port>": true, and the new address, when it is about master. */
bool parse_switch(std::string_view payload, std::string_view master,
                  Address *to);

/* The ROLE reply's first element: the server is a master. */
bool is_master_role(std::string_view role);

/* An error reply (its code, see redis_error_code) by which a server says
 * it is not the master, or not one that can answer: READONLY (a
 * replica), LOADING, MASTERDOWN. */
bool is_refusal(std::string_view code);

/* "host:port", "[v6]:port": for logs and the health document. */
std::string address_text(const Address &a);

/*
 * Which sentinel to ask next. A round asks each one once, starting with
 * the one that answered last (Redis's guide for sentinel clients: the
 * first to answer goes to the head of the list).
 */
class Rotation {
public:
    explicit Rotation(std::size_t n = 1) : n_(n ? n : 1) {}

    void begin()
    {
        asked_ = 0;
        current_ = first_;
    }
    bool        done() const { return asked_ >= n_; }
    std::size_t current() const { return current_; }
    void        next()
    {
        asked_++;
        current_ = (current_ + 1) % n_;
    }
    void answered() { first_ = current_; } /* asked first next time */
    void prefer(std::size_t i) { first_ = i % n_; }

private:
    std::size_t n_;
    std::size_t first_ = 0;
    std::size_t current_ = 0;
    std::size_t asked_ = 0;
};

/* After a round that found no master: the wait before the next one,
 * doubling from kRetryMin to kRetryMax; failures counts rounds failed in
 * a row (1 for the first). */
constexpr std::uint64_t kRetryMin = 100;  /* ms */
constexpr std::uint64_t kRetryMax = 2000; /* ms */
std::uint64_t           retry_delay(std::uint64_t failures);

} // namespace session_cache::sentinel
