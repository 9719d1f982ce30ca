/*
 * RESP both ways (src/redis/resp.cpp): command kinds, the error code that
 * may be repeated, and ReplyReader's gate: each command's reply shape,
 * the bounds, and no dependence on how the bytes arrive.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

#include <string>
#include <string_view>

#include "redis/resp.h"

using namespace session_cache;

namespace {

void
test_command_kinds(void **)
{
    assert_int_equal(resp_command_kind("GET"), RedisCmd::Get);
    assert_int_equal(resp_command_kind("get"), RedisCmd::Get);
    assert_int_equal(resp_command_kind("DbSize"), RedisCmd::DbSize);
    assert_int_equal(resp_command_kind("GETDEL"), RedisCmd::Other);
    assert_int_equal(resp_command_kind(""), RedisCmd::Other);

    std::string hs;
    resp_append(&hs, {"AUTH", "default", "pw"});
    std::size_t auth = hs.size();
    resp_append(&hs, {"SELECT", "3"});

    std::size_t size;
    assert_int_equal(resp_first_command(hs, &size), RedisCmd::Auth);
    assert_int_equal(size, auth);
    assert_int_equal(resp_first_command(std::string_view(hs).substr(auth),
                                        &size), RedisCmd::Select);
    assert_int_equal(size, hs.size() - auth);
    assert_int_equal(resp_first_command(hs.substr(0, auth - 1), &size),
                     RedisCmd::Other);
    assert_int_equal(size, 0);
}

void
test_error_codes(void **)
{
    /* what redis 7.0 says when AUTH was renamed away */
    assert_true(redis_error_code("ERR unknown command 'AUTH', with args "
                                 "beginning with: 'default' 'pw' ")
                == "ERR unknown command");
    assert_true(redis_error_code("WRONGPASS invalid username-password pair "
                                 "or user is disabled.") == "WRONGPASS");
    assert_true(redis_error_code("NOAUTH Authentication required.")
                == "NOAUTH");
    assert_true(redis_error_code("ERR DB index is out of range")
                == "ERR DB index is out of range");
    assert_true(redis_error_code("ERR unknown command `GET`, with args "
                                 "beginning with: `session:tok`, ")
                == "ERR unknown command");
    assert_true(redis_error_code("ERR Client sent AUTH, but no password is "
                                 "set") == "ERR Client sent");
    assert_true(redis_error_code("ERR") == "ERR");
    assert_true(redis_error_code("") == "error");
    assert_true(redis_error_code("hunter2 is wrong") == "error");
    assert_true(redis_error_code("ERR: hunter2") == "error");
    assert_true(redis_error_code("WRONGPASS:hunter2") == "error");
}

/* The replies to kind in bytes, fed in pieces of step (0: whole), as one
 * string: per reply its type and text, then "E" if refused. */
std::string
read(RedisCmd kind, std::string_view bytes, std::size_t step = 0,
     std::string *error = nullptr)
{
    ReplyReader reader;
    std::string out;

    assert_true(reader.init());

    for (std::size_t off = 0; off < bytes.size();) {
        std::size_t n = step ? std::min(step, bytes.size() - off)
                             : bytes.size() - off;
        assert_true(reader.feed(bytes.data() + off, n));
        off += n;

        for (;;) {
            RedisReply r;
            const char *e = nullptr;
            ReplyReader::Next next = reader.next(kind, &r, &e);

            if (next == ReplyReader::Next::More) {
                break;
            }
            if (next == ReplyReader::Next::Refused) {
                if (error) {
                    *error = e;
                }
                return out + "E";
            }

            out += std::to_string(r.type) + ":";
            if (r.type == REDIS_REPLY_INTEGER) {
                out += std::to_string(r.integer);
            } else if (r.str) {
                out.append(r.str, r.len);
            }
            out += ";";
        }
    }

    return out;
}

void
test_shapes(void **)
{
    std::string error;

    assert_string_equal(read(RedisCmd::Get, "$3\r\nabc\r\n$-1\r\n").c_str(),
                        "1:abc;4:;");
    assert_string_equal(read(RedisCmd::Set, "+OK\r\n").c_str(), "5:OK;");
    assert_string_equal(read(RedisCmd::DbSize, ":42\r\n").c_str(), "3:42;");
    assert_string_equal(read(RedisCmd::Ping, "+PONG\r\n").c_str(),
                        "5:PONG;");

    /* an error is always allowed, and cut to its code */
    assert_string_equal(read(RedisCmd::Auth,
                             "-ERR unknown command 'AUTH', with args "
                             "beginning with: 'default' 'pw' \r\n").c_str(),
                        "6:ERR unknown command;");

    /* anything else, at its first byte */
    assert_string_equal(read(RedisCmd::Get, "*64\r\n", 0, &error).c_str(),
                        "E");
    assert_string_equal(error.c_str(), "unexpected reply: an array to GET");
    assert_string_equal(read(RedisCmd::Get, "*", 0, &error).c_str(), "E");
    assert_string_equal(read(RedisCmd::Get, ":1\r\n").c_str(), "E");
    assert_string_equal(read(RedisCmd::Info, "$-1\r\n").c_str(), "E");
    assert_string_equal(read(RedisCmd::Set, "+QUEUED\r\n").c_str(), "E");
    assert_string_equal(read(RedisCmd::DbSize, "+OK\r\n").c_str(), "E");
    assert_string_equal(read(RedisCmd::Get, "HTTP/1.1 400\r\n", 0,
                             &error).c_str(), "E");
    assert_string_equal(error.c_str(), "protocol error: not a reply to GET");

    /* Other takes arrays, within the element budget */
    assert_string_equal(read(RedisCmd::Other, "*2\r\n:1\r\n:2\r\n").c_str(),
                        "2:;");
    assert_string_equal(read(RedisCmd::Other, "*300000000\r\n").c_str(),
                        "E");
    std::string wide = "*2\r\n*1000\r\n";
    assert_string_equal(read(RedisCmd::Other, wide + "*100\r\n").c_str(),
                        "E");
}

void
test_bounds(void **)
{
    std::string error;
    std::string value(ReplyReader::kMaxValue, 'v');
    std::string ok = "$" + std::to_string(value.size()) + "\r\n" + value
                     + "\r\n";

    assert_int_equal(read(RedisCmd::Get, ok).size(),
                     2 + value.size() + 1);

    /* one byte more is refused as soon as its length is read */
    assert_string_equal(read(RedisCmd::Get, "$65537\r\n", 0,
                             &error).c_str(), "E");
    assert_string_equal(error.c_str(), "reply too large for GET");
    assert_string_equal(read(RedisCmd::Get, "$65537\r\n", 1).c_str(), "E");

    /* a status line without its end */
    assert_string_equal(
        read(RedisCmd::Ping, "+" + std::string(ReplyReader::kMaxLine, 'x'))
            .c_str(), "E");
    assert_string_equal(
        read(RedisCmd::Ping, "+" + std::string(ReplyReader::kMaxLine, 'x')
                             + "\r\n", 7).c_str(), "E");
}

void
test_split_does_not_matter(void **)
{
    std::string bytes = "$3\r\nabc\r\n$-1\r\n-WRONGTYPE Operation\r\n"
                        "$0\r\n\r\n";
    std::string whole = read(RedisCmd::Get, bytes);

    for (std::size_t step = 1; step < bytes.size(); step++) {
        assert_string_equal(read(RedisCmd::Get, bytes, step).c_str(),
                            whole.c_str());
    }
}


/* the shapes of Sentinel discovery (SPEC §10): their first elements */
void
test_sentinel_shapes(void **)
{
    ReplyReader r;
    RedisReply  reply;
    const char *error = nullptr;

    assert_true(r.init());

    std::string bytes = "*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n"
                        "*-1\r\n"
                        "*3\r\n$6\r\nmaster\r\n:42\r\n*1\r\n*3\r\n$9\r\n"
                        "127.0.0.1\r\n$4\r\n6381\r\n$2\r\n42\r\n"
                        "*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n"
                        "$5\r\nm a b\r\n"
                        "-NOAUTH Authentication required.\r\n";
    assert_true(r.feed(bytes.data(), bytes.size()));

    assert_int_equal(r.next(RedisCmd::Sentinel, &reply, &error),
                     ReplyReader::Next::Reply);
    assert_int_equal(reply.type, REDIS_REPLY_ARRAY);
    assert_int_equal(reply.elements, 2);
    assert_true(reply.part[0] == "127.0.0.1");
    assert_true(reply.part[1] == "6380");
    assert_true(reply.part[2].empty());

    assert_int_equal(r.next(RedisCmd::Sentinel, &reply, &error),
                     ReplyReader::Next::Reply);
    assert_int_equal(reply.type, REDIS_REPLY_NIL);

    assert_int_equal(r.next(RedisCmd::Role, &reply, &error),
                     ReplyReader::Next::Reply);
    assert_int_equal(reply.type, REDIS_REPLY_ARRAY);
    assert_true(reply.part[0] == "master");
    assert_true(reply.part[1].empty()); /* an integer */

    assert_int_equal(r.next(RedisCmd::Subscribe, &reply, &error),
                     ReplyReader::Next::Reply);
    assert_true(reply.part[0] == "message");
    assert_true(reply.part[1] == "+switch-master");
    assert_true(reply.part[2] == "m a b");

    assert_int_equal(r.next(RedisCmd::Sentinel, &reply, &error),
                     ReplyReader::Next::Reply);
    assert_int_equal(reply.type, REDIS_REPLY_ERROR);
    assert_true(std::string_view(reply.str, reply.len) == "NOAUTH");

    /* other shapes are refused at their first byte */
    assert_string_equal(read(RedisCmd::Sentinel, "$3\r\nabc\r\n").c_str(),
                        "E");
    assert_string_equal(read(RedisCmd::Role, "+master\r\n").c_str(), "E");
    assert_string_equal(read(RedisCmd::Subscribe, ":1\r\n").c_str(), "E");
    assert_int_equal(resp_command_kind("sentinel"), RedisCmd::Sentinel);
    assert_int_equal(resp_command_kind("ROLE"), RedisCmd::Role);
    assert_int_equal(resp_command_kind("subscribe"), RedisCmd::Subscribe);

    /* split anywhere: the same parts */
    std::string msg = "*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n"
                      "$5\r\nm a b\r\n";
    for (std::size_t step = 1; step < msg.size(); step++) {
        ReplyReader split;
        assert_true(split.init());
        ReplyReader::Next next = ReplyReader::Next::More;

        for (std::size_t off = 0; off < msg.size(); off += step) {
            assert_int_equal(next, ReplyReader::Next::More);
            assert_true(split.feed(msg.data() + off,
                                   std::min(step, msg.size() - off)));
            next = split.next(RedisCmd::Subscribe, &reply, &error);
        }

        assert_int_equal(next, ReplyReader::Next::Reply);
        assert_true(reply.part[0] == "message");
        assert_true(reply.part[2] == "m a b");
    }
}

}  // namespace

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_command_kinds),
        cmocka_unit_test(test_error_codes),
        cmocka_unit_test(test_shapes),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_split_does_not_matter),
        cmocka_unit_test(test_sentinel_shapes),
    };

    return cmocka_run_group_tests_name("resp", tests, nullptr, nullptr);
}
