/*
 * Postgres answers on their way into the cache, per worker (SPEC §4). Pure
 * logic: no nginx types; time is passed in (milliseconds on a monotonic
 * clock for the acknowledgements, Unix seconds for session expiry).
 *
 * After a miss, Postgres answers and the answer is written to Redis with a
 * SET that nobody waits for. A request for the same token whose GET missed
 * because it ran before that SET landed takes the answer instead of asking
 * Postgres again: with PgPool's single flight, one query per token per
 * worker. The rules:
 *
 *   - While a SET of the token is unacknowledged, every miss takes it.
 *   - GETs are numbered as they are sent. The SET's acknowledgement
 *     means Redis has run it, and Redis runs commands in order, so a GET
 *     sent after the acknowledgement that misses means the key went away
 *     (deleted by the application, expired): Postgres is asked. A GET sent
 *     before it (numbered up to the last GET sent at that moment) may have
 *     run before the SET landed: it takes the answer.
 *   - An acknowledged entry is dropped once no GET sent before it can
 *     still be waiting: after the Redis timeout (sweep()).
 *   - A SET that failed leaves nothing to bridge: the entry stops
 *     answering at once.
 *   - The callers that shared one Postgres query all write the same
 *     answer: while it is on its way, only the first one sends a SET.
 *   - A session that has expired since it was answered is not handed out.
 *   - A GET that failed (Redis refused, timed out) proves nothing about
 *     the key: only an unacknowledged SET answers it.
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string_view>
#include <unordered_map>

#include "check/session_value.h"

namespace session_cache {

class FillTracker {
public:
    struct Fill; /* one token's answer; the handle of its writes */

    FillTracker();
    ~FillTracker();

    FillTracker(const FillTracker &) = delete;
    FillTracker &operator=(const FillTracker &) = delete;

    /* A GET was sent: its number (from 1), for lookup(). */
    std::uint64_t get_sent() noexcept { return ++gets_; }

    /*
     * Postgres answered token with s (nullptr: no such session) and the
     * caller is about to SET it in Redis. Returns the handle to give
     * write_acked() when the SET's reply comes (or at once, if it could
     * not be sent); nullptr when the same answer is already on its way:
     * send nothing. Throws std::bad_alloc, leaving nothing behind.
     */
    Fill *write_started(std::string_view token, const Session *s);

    /* The reply to a SET started with write_started(): ok, or it failed
     * (an error reply, a timeout, never sent). now: ms. */
    void write_acked(Fill *fill, bool ok, std::uint64_t now) noexcept;

    /*
     * The GET numbered get_seq (0: none was sent) missed, or failed
     * (redis_failed): the answer on its way for token, if the rules above
     * let this request take it; else nullptr, and Postgres must be asked.
     * An empty user_id is the answer "no such session". now_sec: Unix
     * seconds, to leave out a session that has expired since.
     */
    const Session *lookup(std::string_view token, std::uint64_t get_seq,
                          bool         redis_failed,
                          std::int64_t now_sec) const noexcept;

    /* Drop acknowledged entries that no GET sent before their
     * acknowledgement can still need: acknowledged more than get_timeout
     * ms before now. */
    void sweep(std::uint64_t now, std::uint64_t get_timeout) noexcept;

    /* Entries held (tests, and a figure to watch). */
    std::size_t size() const noexcept { return fills_.size(); }

private:
    struct Acked {
        std::uint64_t at;
        Fill         *fill;
    };

    void drop(Fill *fill) noexcept;

    /* keyed by a view of the token each Fill owns: a lookup by the
     * request's token copies nothing */
    std::unordered_map<std::string_view, std::unique_ptr<Fill>> fills_;
    std::deque<Acked> acked_;    /* in the order of acknowledgement */
    std::uint64_t     gets_ = 0; /* GETs sent */
};

} // namespace session_cache
