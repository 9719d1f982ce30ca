/*
 * libFuzzer target: what the module does with bytes from Redis.
 *
 * The reply handling in src/redis_pool.cpp and src/session_check.cpp is
 * tied to nginx types (connections, requests), so this target drives the
 * same pieces they use, in the same way: hiredis's redisReader fed the
 * bytes in the chunks a socket may deliver them in, every reply taken out
 * and classified as redis_answered() does (nil: miss; error: its text is
 * logged, at most 200 bytes; string: decode_session(); anything else:
 * failure), then freed.
 *
 * Not covered: hiredis 0.14 allocates an array's element table as soon as
 * it reads the announced count, so "*300000000\r\n" makes it calloc
 * 2.4 GB before a single element arrives (corpus/redis_reply/
 * oom-huge-array-count, found by this target). Only a hostile Redis can
 * send that; the module never asks for an array. Inputs announcing an
 * aggregate of more than kMaxElements are skipped, so the fuzzer keeps
 * looking for other faults.
 *
 * Invariants:
 *  - the replies (or the protocol error) do not depend on how the bytes
 *    were split into reads;
 *  - an error or string reply's text is exactly len bytes (what the log
 *    line and decode_session() read);
 *  - the command the module sends (resp_append) for any key parses back as
 *    exactly one array of two bulk strings, "GET" and the key: no key,
 *    whatever its bytes, can frame a second command.
 */
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include <hiredis/hiredis.h>

#include "redis/resp.h"
#include "check/session_value.h"

using namespace session_cache;

namespace {

void
describe(const redisReply *r, std::string *out)
{
    out->push_back(static_cast<char>('0' + r->type));

    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        if (r->str == nullptr || std::strlen(r->str) > r->len) {
            abort();
        }
        out->append(std::to_string(r->len)).push_back(':');
        out->append(r->str, r->len);
        break;

    case REDIS_REPLY_INTEGER:
        out->append(std::to_string(r->integer));
        break;

    case REDIS_REPLY_ARRAY:
        out->append(std::to_string(r->elements)).push_back('[');
        for (size_t i = 0; i < r->elements; i++) {
            describe(r->element[i], out);
        }
        out->push_back(']');
        break;
    }
    out->push_back(';');
}

/* What session_check.cpp's redis_answered() does with a GET reply. */
void
classify(const redisReply *r)
{
    static volatile size_t sink;

    switch (r->type) {
    case REDIS_REPLY_NIL:
        return;

    case REDIS_REPLY_ERROR: {
        /* "%*s" with ngx_min(len, 200): read exactly that much */
        std::string logged(r->str, r->len < 200 ? r->len : 200);
        sink = logged.size();
        return;
    }

    case REDIS_REPLY_STRING: {
        Session s;
        Decoded d = decode_session(std::string_view(r->str, r->len),
                                   1700000000, &s);
        if (d == Decoded::Valid && !user_id_acceptable(s.user_id)) {
            abort();
        }
        return;
    }

    default:
        return;  /* counted as a failure */
    }
}

/* Feed data in pieces of `step` bytes (0: all at once); the replies in
 * order, then "E" on a protocol error. */
std::string
read_all(const uint8_t *data, size_t size, size_t step, bool act)
{
    std::string out;
    redisReader *reader = redisReaderCreate();

    if (reader == nullptr) {
        abort();
    }

    size_t off = 0;

    while (off < size) {
        size_t n = step == 0 ? size - off : std::min(step, size - off);

        if (redisReaderFeed(reader, reinterpret_cast<const char *>(data)
                                    + off, n) != REDIS_OK)
        {
            out += "E";
            break;
        }
        off += n;

        for (;;) {
            void *p = nullptr;

            if (redisReaderGetReply(reader, &p) != REDIS_OK) {
                out += "E";
                off = size;
                break;
            }
            if (p == nullptr) {
                break;
            }

            auto *reply = static_cast<redisReply *>(p);
            describe(reply, &out);
            if (act) {
                classify(reply);
            }
            freeReplyObject(reply);
        }
    }

    redisReaderFree(reader);
    return out;
}

void
command_round_trip(const uint8_t *data, size_t size)
{
    std::string key(reinterpret_cast<const char *>(data), size);
    std::string cmd;

    resp_append(&cmd, {"GET", key});

    redisReader *reader = redisReaderCreate();
    void *p = nullptr;

    if (reader == nullptr
        || redisReaderFeed(reader, cmd.data(), cmd.size()) != REDIS_OK
        || redisReaderGetReply(reader, &p) != REDIS_OK || p == nullptr)
    {
        abort();
    }

    auto *r = static_cast<redisReply *>(p);

    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2
        || r->element[0]->type != REDIS_REPLY_STRING
        || std::string_view(r->element[0]->str, r->element[0]->len) != "GET"
        || r->element[1]->type != REDIS_REPLY_STRING
        || std::string_view(r->element[1]->str, r->element[1]->len) != key)
    {
        abort();
    }
    freeReplyObject(r);

    p = nullptr;
    if (redisReaderGetReply(reader, &p) != REDIS_OK || p != nullptr) {
        abort();  /* bytes left over: a second command */
    }

    redisReaderFree(reader);
}

/* Does data announce an array ("*N") larger than the limit? */
bool
huge_array(const uint8_t *data, size_t size)
{
    const size_t kMaxElements = 1 << 16;

    for (size_t i = 0; i < size; i++) {
        if (data[i] != '*') {
            continue;
        }

        size_t n = 0;

        for (size_t j = i + 1; j < size && data[j] >= '0' && data[j] <= '9';
             j++)
        {
            n = n * 10 + (data[j] - '0');
            if (n > kMaxElements) {
                return true;
            }
        }
    }

    return false;
}

}  // namespace

extern "C" int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0 || huge_array(data + 1, size - 1)) {
        return 0;
    }

    /* first byte: the read size for the chunked pass */
    size_t step = data[0] % 17 + 1;
    data++;
    size--;

    std::string whole = read_all(data, size, 0, true);
    std::string chunked = read_all(data, size, step, false);

    if (whole != chunked) {
        abort();
    }

    command_round_trip(data, size);

    return 0;
}
