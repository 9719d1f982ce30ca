/*
 * Redis Cluster's key space (SPEC §10): CRC16 and hash tags as Redis's
 * cluster specification gives them, the slot map from a CLUSTER SLOTS
 * reply (read by the shape-gated ReplyReader), MOVED and ASK.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

#include <cstring>
#include <string>

#include "redis/cluster_slots.h"
#include "redis/redis_url.h"
#include "redis/resp.h"

using namespace session_cache;

namespace {

void test_crc16(void **)
{
    /* the check value of CRC16/XMODEM, and the cluster spec's examples */
    assert_int_equal(crc16("123456789", 9), 0x31c3);
    assert_int_equal(key_slot("foo"), 12182);
    assert_int_equal(key_slot("somekey"), 11058);
    assert_int_equal(key_slot(""), 0);
}

void test_hash_tags(void **)
{
    assert_int_equal(key_slot("{user1000}.following"),
                     key_slot("{user1000}.followers"));
    assert_int_equal(key_slot("{user1000}.following"), key_slot("user1000"));
    /* the first { and the next }: "bar" */
    assert_int_equal(key_slot("foo{bar}{zap}"), key_slot("bar"));
    /* an empty tag: the whole key */
    assert_int_equal(key_slot("foo{}{bar}"), crc16("foo{}{bar}", 10) & 16383);
    /* "{bar" is the tag */
    assert_int_equal(key_slot("foo{{bar}}zap"), key_slot("{bar"));
    /* no closing brace: the whole key */
    assert_int_equal(key_slot("foo{bar"), crc16("foo{bar", 7) & 16383);
    assert_int_equal(key_slot("session:{abc}"), key_slot("abc"));
}

/* A CLUSTER SLOTS reply as Redis 7 writes it (a node: ip, port, id,
 * metadata), fed to the reader in pieces of every size. */
std::string slots_reply()
{
    return "*3\r\n"
           "*4\r\n:0\r\n:5460\r\n"
           "*4\r\n$9\r\n127.0.0.1\r\n:7000\r\n$4\r\nid-a\r\n*0\r\n"
           "*4\r\n$9\r\n127.0.0.1\r\n:7003\r\n$4\r\nid-d\r\n*2\r\n"
           "$8\r\nhostname\r\n$4\r\nhost\r\n"
           "*3\r\n:5461\r\n:10922\r\n"
           "*4\r\n$9\r\n127.0.0.1\r\n:7001\r\n$4\r\nid-b\r\n*0\r\n"
           "*3\r\n:10923\r\n:16383\r\n"
           "*3\r\n$3\r\n::1\r\n:7002\r\n$4\r\nid-c\r\n";
}

void test_reader_slots(void **)
{
    std::string text = slots_reply();

    for (std::size_t step = 1; step <= text.size(); step++) {
        ReplyReader r;
        assert_true(r.init());

        RedisReply        reply{};
        const char       *error = nullptr;
        ReplyReader::Next next = ReplyReader::Next::More;

        for (std::size_t at = 0; at < text.size(); at += step) {
            assert_true(
                r.feed(text.data() + at, std::min(step, text.size() - at)));
            next = r.next(RedisCmd::ClusterSlots, &reply, &error);
            if (next != ReplyReader::Next::More) {
                break;
            }
        }

        assert_int_equal(static_cast<int>(next),
                         static_cast<int>(ReplyReader::Next::Reply));
        assert_int_equal(reply.nranges, 3);
        assert_int_equal(reply.ranges[0].start, 0);
        assert_int_equal(reply.ranges[0].end, 5460);
        assert_string_equal(reply.ranges[0].host.c_str(), "127.0.0.1");
        assert_int_equal(reply.ranges[0].port, 7000);
        assert_int_equal(reply.ranges[1].port, 7001);
        assert_string_equal(reply.ranges[2].host.c_str(), "::1");

        SlotMap     map;
        std::string err;
        assert_true(map.build(reply.ranges, reply.nranges, &err));
        assert_int_equal(map.nodes().size(), 3);
        assert_int_equal(map.covered(), 16384);
        assert_string_equal(map.nodes()[map.node_of(0)].c_str(),
                            "127.0.0.1:7000");
        assert_string_equal(map.nodes()[map.node_of(5461)].c_str(),
                            "127.0.0.1:7001");
        assert_string_equal(map.nodes()[map.node_of(16383)].c_str(),
                            "[::1]:7002");
        assert_int_equal(map.slots_of(0), 5461);
    }
}

void test_reader_refuses(void **)
{
    struct {
        const char *text;
        RedisCmd    kind;
    } cases[] = {
        /* not an array to CLUSTER SLOTS */
        {"$3\r\nabc\r\n", RedisCmd::ClusterSlots},
        {":1\r\n", RedisCmd::ClusterSlots},
        /* a range that is not an array */
        {"*1\r\n:5\r\n", RedisCmd::ClusterSlots},
        /* ASKING answers a status */
        {"$2\r\nOK\r\n", RedisCmd::Asking},
    };

    for (auto &c : cases) {
        ReplyReader r;
        assert_true(r.init());
        RedisReply  reply{};
        const char *error = nullptr;
        assert_true(r.feed(c.text, std::strlen(c.text)));
        assert_int_equal(static_cast<int>(r.next(c.kind, &reply, &error)),
                         static_cast<int>(ReplyReader::Next::Refused));
        assert_non_null(error);
    }

    /* an error reply is always possible: CLUSTERDOWN, or cluster
     * support disabled */
    ReplyReader r;
    assert_true(r.init());
    RedisReply  reply{};
    const char *error = nullptr;
    const char *text = "-ERR This instance has cluster support disabled\r\n";
    assert_true(r.feed(text, std::strlen(text)));
    assert_int_equal(
        static_cast<int>(r.next(RedisCmd::ClusterSlots, &reply, &error)),
        static_cast<int>(ReplyReader::Next::Reply));
    assert_int_equal(reply.type, REDIS_REPLY_ERROR);
    assert_int_equal(reply.nranges, 0);
}

void test_map_errors(void **)
{
    SlotMap     map;
    std::string err;

    /* no map yet: no slot is served */
    assert_true(map.empty());
    assert_int_equal(map.node_of(0), SlotMap::kNone);
    assert_int_equal(map.node_of(16383), SlotMap::kNone);
    assert_int_equal(map.covered(), 0);

    ClusterSlotRange bad[1];
    bad[0].start = 10;
    bad[0].end = 16384;
    bad[0].host = "127.0.0.1";
    bad[0].port = 7000;
    assert_false(map.build(bad, 1, &err));
    assert_true(map.empty());

    bad[0].end = 5;
    assert_false(map.build(bad, 1, &err));

    /* a master without an address: its slots are not covered */
    ClusterSlotRange two[2];
    two[0].start = 0;
    two[0].end = 99;
    two[0].host = "10.0.0.1";
    two[0].port = 7000;
    two[1].start = 100;
    two[1].end = 16383;
    two[1].host = "?";
    two[1].port = 7001;
    assert_true(map.build(two, 2, &err));
    assert_int_equal(map.covered(), 100);
    assert_int_equal(map.node_of(100), SlotMap::kNone);
    assert_int_equal(map.node_of(99), 0);

    SlotMap other;
    assert_true(other.build(two, 2, &err));
    assert_true(map.same(other));
    two[0].end = 98;
    assert_true(other.build(two, 2, &err));
    assert_false(map.same(other));

    assert_false(map.build(nullptr, 0, &err));
    assert_int_equal(map.covered(), 100); /* unchanged */
}

void test_redirects(void **)
{
    Redirect r;

    assert_true(parse_redirect("MOVED 3999 127.0.0.1:6381", &r));
    assert_false(r.ask);
    assert_int_equal(r.slot, 3999);
    assert_string_equal(r.host.c_str(), "127.0.0.1");
    assert_int_equal(r.port, 6381);

    assert_true(parse_redirect("ASK 0 [::1]:7000", &r));
    assert_true(r.ask);
    assert_string_equal(r.host.c_str(), "::1");

    assert_true(parse_redirect("MOVED 1 redis-1.internal:7000", &r));
    assert_false(is_ip_literal(r.host));
    assert_true(is_ip_literal("10.1.2.3"));
    assert_true(is_ip_literal("::1"));

    assert_false(parse_redirect("MOVED", &r));
    assert_false(parse_redirect("MOVED 16384 1.2.3.4:1", &r));
    assert_false(parse_redirect("MOVED 1 1.2.3.4", &r));
    assert_false(parse_redirect("MOVED 1 1.2.3.4:0", &r));
    assert_false(parse_redirect("MOVED x 1.2.3.4:1", &r));
    assert_false(parse_redirect("TRYAGAIN", &r));
    assert_false(parse_redirect("CLUSTERDOWN", &r));

    /* the error code the reader keeps: the whole redirection, and for
     * anything else the code alone */
    assert_string_equal(
        std::string(redis_error_code("MOVED 3999 127.0.0.1:6381")).c_str(),
        "MOVED 3999 127.0.0.1:6381");
    assert_string_equal(
        std::string(redis_error_code("ASK 3999 127.0.0.1:6381")).c_str(),
        "ASK 3999 127.0.0.1:6381");
    assert_string_equal(std::string(redis_error_code("MOVED 1 'x' pw")).c_str(),
                        "MOVED");
    assert_string_equal(
        std::string(redis_error_code("CLUSTERDOWN The cluster is down"))
            .c_str(),
        "CLUSTERDOWN");
}

} // namespace

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc16),
        cmocka_unit_test(test_hash_tags),
        cmocka_unit_test(test_reader_slots),
        cmocka_unit_test(test_reader_refuses),
        cmocka_unit_test(test_map_errors),
        cmocka_unit_test(test_redirects),
    };

    return cmocka_run_group_tests_name("cluster_slots", tests, nullptr,
                                       nullptr);
}
