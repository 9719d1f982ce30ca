/*
 * The cache-fill tracker: see fill_tracker.h for the rules.
 */
#include "check/fill_tracker.h"

#include <new>
#include <string>
#include <utility>

namespace session_cache {

struct FillTracker::Fill {
    std::string   token;      /* the map's key views it */
    Session       answer;     /* user_id empty: no such session */
    std::uint32_t writes = 0; /* SETs not yet acknowledged */
    std::uint32_t queued = 0; /* its items in acked_ */
    std::uint64_t acked = 0;  /* GETs numbered below it may take the
                               * answer; 0: none (never acknowledged,
                               * or the last SET failed) */
};

FillTracker::FillTracker() = default;
FillTracker::~FillTracker() = default;

static bool same_answer(const Session &a, const Session &b)
{
    return a.user_id == b.user_id && a.has_expiry == b.has_expiry
           && a.expires_at == b.expires_at;
}

FillTracker::Fill *FillTracker::write_started(std::string_view token,
                                              const Session   *s)
{
    /* copied first: a failed allocation leaves the entries as they were */
    Session answer;
    if (s != nullptr && !s->user_id.empty()) {
        answer = *s;
    }

    Fill *f;
    auto  it = fills_.find(token);

    if (it != fills_.end()) {
        f = it->second.get();

        /* the callers that shared one Postgres query (single flight) all
         * get here with the same answer: one SET of it is enough */
        if (f->writes > 0 && same_answer(f->answer, answer)) {
            return nullptr;
        }

    } else {
        auto fresh = std::make_unique<Fill>();
        fresh->token.assign(token.data(), token.size());
        f = fresh.get();
        std::string_view key = f->token;
        fills_.emplace(key, std::move(fresh));
    }

    f->answer = std::move(answer);
    f->writes++;

    return f;
}

void FillTracker::write_acked(Fill *f, bool ok, std::uint64_t now) noexcept
{
    /* while another SET of it is out, that one decides */
    if (--f->writes > 0) {
        return;
    }

    if (ok) {
        try {
            acked_.push_back(Acked{now, f});
        } catch (...) {
            /* it could not be timed: never bridging is always safe */
            ok = false;
        }
    }

    if (!ok) {
        /* the cache does not hold it: nothing to bridge */
        f->acked = 0;
        if (f->queued == 0) {
            drop(f);
        }
        /* else it stays, answering nothing, until sweep() pops its items */
        return;
    }

    f->queued++;
    f->acked = gets_ + 1;
}

const Session *FillTracker::lookup(std::string_view token,
                                   std::uint64_t get_seq, bool redis_failed,
                                   std::int64_t now_sec) const noexcept
{
    auto it = fills_.find(token);

    if (it == fills_.end()) {
        return nullptr;
    }

    const Fill *f = it->second.get();

    if (f->writes == 0 && (redis_failed || get_seq == 0 || get_seq >= f->acked))
    {
        return nullptr;
    }

    const Session &a = f->answer;

    if (!a.user_id.empty() && a.has_expiry && a.expires_at <= now_sec) {
        return nullptr;
    }

    return &a;
}

void FillTracker::sweep(std::uint64_t now, std::uint64_t get_timeout) noexcept
{
    while (!acked_.empty() && now - acked_.front().at > get_timeout) {
        Fill *f = acked_.front().fill;
        acked_.pop_front();

        /* its last acknowledgement, and no SET out since */
        if (--f->queued == 0 && f->writes == 0) {
            drop(f);
        }
    }
}

void FillTracker::drop(Fill *f) noexcept
{
    /* the key views f->token: find first, then erase by position */
    fills_.erase(fills_.find(std::string_view(f->token)));
}

} // namespace session_cache
