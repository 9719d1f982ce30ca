/*
 * libFuzzer target: what the module does with bytes from Redis.
 *
 * The Redis connection (src/redis/redis_pool.cpp) reads every reply
 * through ReplyReader (src/redis/resp.cpp), telling it which command the
 * next reply answers; this target does the same with the bytes given,
 * fed whole and in the chunks a socket may deliver them in, for one
 * command kind throughout. A GET's string goes through decode_session()
 * as session_check.cpp's redis_answered() does.
 *
 * Input: byte 0 picks the chunk size, byte 1 the command kind, the rest
 * is what the server sent.
 *
 * Invariants:
 *  - the replies, and where the stream is refused, do not depend on how
 *    the bytes were split into reads;
 *  - a reply has the shape its command expects (GET: bulk string or nil;
 *    SET, PING, AUTH, SELECT: a status, SET's being OK; INFO: a bulk
 *    string; DBSIZE: an integer; any: an error), and no more bytes or
 *    elements than ReplyReader's bounds;
 *  - an error reply is only its code (redis_error_code): no quote, no
 *    argument list;
 *  - decoding a GET's value in place (SessionView) and into a Session
 *    agree, and a valid session has an acceptable user id;
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

#include <hiredis/hiredis.h>

#include "redis/resp.h"
#include "check/session_value.h"

using namespace session_cache;

namespace {

bool
shape_ok(RedisCmd kind, const RedisReply &r)
{
    if (r.type == REDIS_REPLY_ERROR) {
        return true;
    }

    switch (kind) {
    case RedisCmd::Get:
        return r.type == REDIS_REPLY_STRING || r.type == REDIS_REPLY_NIL;
    case RedisCmd::Set:
        return r.type == REDIS_REPLY_STATUS
               && std::string_view(r.str, r.len) == "OK";
    case RedisCmd::Ping:
    case RedisCmd::Auth:
    case RedisCmd::Select:
    case RedisCmd::Asking:
        return r.type == REDIS_REPLY_STATUS;
    case RedisCmd::ClusterSlots:
        return r.type == REDIS_REPLY_ARRAY && r.nranges <= 16384
               && (r.nranges == 0 || r.ranges != nullptr);
    case RedisCmd::Info:
        return r.type == REDIS_REPLY_STRING;
    case RedisCmd::DbSize:
        return r.type == REDIS_REPLY_INTEGER;
    case RedisCmd::Sentinel:
        return r.type == REDIS_REPLY_ARRAY || r.type == REDIS_REPLY_NIL;
    case RedisCmd::Role:
    case RedisCmd::Subscribe:
        return r.type == REDIS_REPLY_ARRAY;
    case RedisCmd::Other:
        return r.type >= REDIS_REPLY_STRING && r.type <= REDIS_REPLY_STATUS;
    }

    return false;
}

/* What session_check.cpp's redis_answered() does with a GET's value. */
void
classify(const RedisReply &r)
{
    std::string_view value(r.str, r.len);
    char buf[kMaxUserIdLength];
    char attrs[kAttrBufferSize];
    SessionView v;
    Session s;

    Decoded a = decode_session(value, 1700000000, &v, buf, attrs);
    Decoded b = decode_session(value, 1700000000, &s);

    if (a != b) {
        abort();
    }

    if ((a == Decoded::Valid || a == Decoded::Expired)
        && (v.user_id != s.user_id || v.has_expiry != s.has_expiry
            || v.expires_at != s.expires_at
            || v.nattrs != s.attrs.size()))
    {
        abort();
    }

    if (a == Decoded::Valid && !user_id_acceptable(v.user_id)) {
        abort();
    }
}

void
describe(RedisCmd kind, const RedisReply &r, std::string *out)
{
    if (!shape_ok(kind, r)) {
        abort();
    }

    out->push_back(static_cast<char>('0' + r.type));

    switch (r.type) {
    case REDIS_REPLY_ERROR: {
        std::string_view code(r.str, r.len);
        if (code.find_first_of("'`\"") != std::string_view::npos
            || code.size() > 64 || redis_error_code(code) != code)
        {
            abort();
        }
    }
        /* fall through */
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        if (r.len > ReplyReader::kMaxInfo) {
            abort();
        }
        out->append(std::to_string(r.len)).push_back(':');
        out->append(r.str, r.len);
        break;

    case REDIS_REPLY_INTEGER:
        out->append(std::to_string(r.integer));
        break;

    case REDIS_REPLY_ARRAY:
        if (r.elements > (kind == RedisCmd::ClusterSlots
                              ? ReplyReader::kMaxSlotsElements
                              : ReplyReader::kMaxElements)) {
            abort();
        }
        out->append(std::to_string(r.elements)).push_back('[');
        /* the parts (Sentinel, Role, Subscribe) split or whole alike */
        for (std::string_view p : r.part) {
            if (p.size() > ReplyReader::kMaxValue) {
                abort();
            }
            out->append(std::to_string(p.size())).push_back(':');
            out->append(p);
        }
        break;
    }
    out->push_back(';');

    if (kind == RedisCmd::Get && r.type == REDIS_REPLY_STRING) {
        if (r.len > ReplyReader::kMaxValue) {
            abort();
        }
        classify(r);
    }
}

/* Feed data in pieces of `step` bytes (0: all at once): the replies in
 * order, then "E" when the stream was refused. */
std::string
read_all(RedisCmd kind, const uint8_t *data, size_t size, size_t step)
{
    std::string out;
    ReplyReader reader;

    if (!reader.init()) {
        abort();
    }

    size_t off = 0;

    while (off < size) {
        size_t n = step == 0 ? size - off : std::min(step, size - off);

        if (!reader.feed(reinterpret_cast<const char *>(data) + off, n)) {
            out += "E";
            break;
        }
        off += n;

        for (;;) {
            RedisReply reply;
            const char *error = nullptr;
            ReplyReader::Next next = reader.next(kind, &reply, &error);

            if (next == ReplyReader::Next::More) {
                break;
            }

            if (next == ReplyReader::Next::Refused) {
                if (error == nullptr || std::strlen(error) == 0) {
                    abort();
                }
                return out + "E";
            }

            describe(kind, reply, &out);
        }
    }

    return out;
}

void
command_round_trip(const uint8_t *data, size_t size)
{
    std::string key(reinterpret_cast<const char *>(data), size);
    std::string cmd;

    resp_append(&cmd, {"GET", key});

    std::size_t len;
    if (resp_first_command(cmd, &len) != RedisCmd::Get || len != cmd.size()) {
        abort();
    }

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

}  // namespace

extern "C" int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) {
        return 0;
    }

    size_t step = data[0] % 17 + 1;
    auto kind = static_cast<RedisCmd>(
        data[1] % (static_cast<int>(RedisCmd::Other) + 1));
    data += 2;
    size -= 2;

    std::string whole = read_all(kind, data, size, 0);
    std::string chunked = read_all(kind, data, size, step);

    if (whole != chunked) {
        abort();
    }

    command_round_trip(data, size);

    return 0;
}
