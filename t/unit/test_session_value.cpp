/*
 * The cached session value codec (SPEC §3, §12): strict decoding of whatever
 * Redis holds, encoding, the negative marker and cache_seconds().
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "check/session_value.h"

using session_cache::cache_seconds;
using session_cache::Decoded;
using session_cache::decode_session;
using session_cache::encode_session;
using session_cache::negative_marker;
using session_cache::Session;
using session_cache::user_id_acceptable;
using session_cache::attr_name_acceptable;
using session_cache::attr_value_acceptable;
using session_cache::Attr;
using session_cache::SessionView;
using session_cache::kAttrBufferSize;
using session_cache::kMaxAttrs;
using session_cache::kMaxUserIdLength;

namespace {

/* A settable clock rather than the real one. */
constexpr std::int64_t kNow = 1800000000;

const char *
name(Decoded d)
{
    switch (d) {
    case Decoded::Valid:     return "Valid";
    case Decoded::Negative:  return "Negative";
    case Decoded::Expired:   return "Expired";
    case Decoded::Malformed: return "Malformed";
    }
    return "?";
}


/* Decode from a heap buffer of exactly the value's size, so that ASan
 * reports any read past the end. */
Decoded
decode(const std::string &v, Session *out = nullptr,
       std::int64_t now = kNow)
{
    std::vector<char> buf(v.begin(), v.end());
    Session scratch;
    return decode_session(std::string_view(buf.data(), buf.size()), now,
                          out ? out : &scratch);
}


void
expect(const std::string &v, Decoded want, int line)
{
    Decoded got = decode(v);

    if (got != want) {
        fail_msg("line %d: %s for [%s], expected %s", line, name(got),
                 v.c_str(), name(want));
    }
}

#define EXPECT(v, want) expect((v), Decoded::want, __LINE__)


std::string
valid_with(const std::string &extra)
{
    return "{\"user_id\":\"u1\"," + extra + "}";
}


/* ---- the negative marker ---- */

void
test_negative_marker(void **)
{
    assert_true(negative_marker() == "{\"invalid\":true}");
    EXPECT(std::string(negative_marker()), Negative);

    /* only the exact bytes count; anything else is a malformed session */
    EXPECT("{ \"invalid\":true}", Malformed);
    EXPECT("{\"invalid\": true}", Malformed);
    EXPECT(" {\"invalid\":true}", Malformed);
    EXPECT("{\"invalid\":true} ", Malformed);
    EXPECT("{\"invalid\":true}\n", Malformed);
    EXPECT("{\"invalid\":false}", Malformed);
    EXPECT("{\"invalid\":true", Malformed);
    EXPECT(std::string("{\"invalid\":true}\0", 17), Malformed);

    /* a marker with a user_id is a session, not a negative entry */
    EXPECT("{\"invalid\":true,\"user_id\":\"u\"}", Valid);
}


/* ---- valid values ---- */

void
test_valid(void **)
{
    Session s;

    assert_int_equal(decode("{\"user_id\":\"42\",\"expires_at\":1900000000}",
                            &s), Decoded::Valid);
    assert_string_equal(s.user_id.c_str(), "42");
    assert_true(s.has_expiry);
    assert_true(s.expires_at == 1900000000);

    s = Session();
    assert_int_equal(decode("{\"user_id\":\"alice\"}", &s), Decoded::Valid);
    assert_string_equal(s.user_id.c_str(), "alice");
    assert_false(s.has_expiry);

    /* key order, whitespace, unknown keys of every type */
    s = Session();
    assert_int_equal(decode(" \t\r\n{ \"expires_at\" : 1900000001 ,\n"
                            "  \"role\": \"admin\", \"n\": -1.5e+3,"
                            " \"a\": [1, [true, false, null], {}],"
                            " \"o\": {\"k\": {\"k\": []}},"
                            " \"user_id\" : \"bob\" } \r\n\t", &s),
                     Decoded::Valid);
    assert_string_equal(s.user_id.c_str(), "bob");
    assert_true(s.expires_at == 1900000001);

    /* duplicate unknown keys are ignored */
    EXPECT(valid_with("\"x\":1,\"x\":2"), Valid);

    /* huge and odd numbers are fine where nobody reads them */
    EXPECT(valid_with("\"x\":1e400"), Valid);
    EXPECT(valid_with("\"x\":-0.0E-0"), Valid);
    EXPECT(valid_with("\"x\":" + std::string(10000, '9')), Valid);

    /* user_id: 256 bytes is the limit */
    EXPECT("{\"user_id\":\"" + std::string(256, 'u') + "\"}", Valid);
    EXPECT("{\"user_id\":\"" + std::string(257, 'u') + "\"}", Malformed);
}


void
test_expiry(void **)
{
    Session s;

    EXPECT("{\"user_id\":\"u\",\"expires_at\":1800000001}", Valid);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":1800000000}", Expired);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":1799999999}", Expired);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":0}", Expired);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":-5}", Expired);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":-0}", Expired);

    assert_int_equal(decode("{\"user_id\":\"u\",\"expires_at\":1}", &s),
                     Decoded::Expired);
    assert_true(s.has_expiry);
    assert_true(s.expires_at == 1);

    /* int64 bounds */
    assert_int_equal(
        decode("{\"user_id\":\"u\",\"expires_at\":9223372036854775807}", &s),
        Decoded::Valid);
    assert_true(s.expires_at == std::numeric_limits<std::int64_t>::max());
    assert_int_equal(
        decode("{\"user_id\":\"u\",\"expires_at\":-9223372036854775808}", &s),
        Decoded::Expired);
    assert_true(s.expires_at == std::numeric_limits<std::int64_t>::min());

    EXPECT("{\"user_id\":\"u\",\"expires_at\":9223372036854775808}",
           Malformed);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":-9223372036854775809}",
           Malformed);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":18446744073709551616}",
           Malformed);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":" + std::string(400, '9')
           + "}", Malformed);

    /* not an integer, or not JSON */
    EXPECT("{\"user_id\":\"u\",\"expires_at\":1900000000.0}", Malformed);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":1.9e9}", Malformed);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":19E8}", Malformed);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":01900000000}", Malformed);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":+1900000000}", Malformed);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":0x71000000}", Malformed);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":-}", Malformed);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":1.}", Malformed);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":.5}", Malformed);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":1e}", Malformed);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":Infinity}", Malformed);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":NaN}", Malformed);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":\"1900000000\"}", Malformed);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":null}", Malformed);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":true}", Malformed);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":[1900000000]}", Malformed);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":1900000000 1}", Malformed);
}


/* ---- structure ---- */

void
test_structure(void **)
{
    EXPECT("", Malformed);
    EXPECT(" ", Malformed);
    EXPECT("{}", Malformed);
    EXPECT("[]", Malformed);
    EXPECT("null", Malformed);
    EXPECT("\"u\"", Malformed);
    EXPECT("42", Malformed);
    EXPECT("[{\"user_id\":\"u\"}]", Malformed);
    EXPECT("{\"user_id\":\"u\"", Malformed);
    EXPECT("{\"user_id\":\"u\",}", Malformed);          /* trailing comma */
    EXPECT("{,\"user_id\":\"u\"}", Malformed);
    EXPECT("{\"user_id\" \"u\"}", Malformed);
    EXPECT("{\"user_id\":\"u\" \"x\":1}", Malformed);
    EXPECT("{'user_id':'u'}", Malformed);
    EXPECT("{user_id:\"u\"}", Malformed);
    EXPECT("{\"user_id\":\"u\"}}", Malformed);           /* trailing garbage */
    EXPECT("{\"user_id\":\"u\"}x", Malformed);
    EXPECT("{\"user_id\":\"u\"}{\"user_id\":\"v\"}", Malformed);
    EXPECT("{\"user_id\":\"u\"}\x0b", Malformed);        /* not JSON space */
    EXPECT("\xef\xbb\xbf{\"user_id\":\"u\"}", Malformed);  /* BOM */
    EXPECT(valid_with("\"x\":[1,]"), Malformed);
    EXPECT(valid_with("\"x\":[1 2]"), Malformed);
    EXPECT(valid_with("\"x\":{\"a\"}"), Malformed);
    EXPECT(valid_with("\"x\":{\"a\":1,}"), Malformed);
    EXPECT(valid_with("\"x\":{1:1}"), Malformed);
    EXPECT(valid_with("\"x\":tru"), Malformed);
    EXPECT(valid_with("\"x\":True"), Malformed);
    EXPECT(valid_with("\"x\":nul"), Malformed);
    EXPECT(valid_with("\"x\":undefined"), Malformed);
    EXPECT(valid_with("\"x\":"), Malformed);
    EXPECT(valid_with("\"x\":01"), Malformed);
    EXPECT(valid_with("\"x\":+1"), Malformed);
    EXPECT(valid_with("\"x\":'a'"), Malformed);
    EXPECT(valid_with("\"x\":\"a"), Malformed);
    EXPECT(valid_with("/* c */ \"x\":1"), Malformed);
}


void
test_duplicates_and_types(void **)
{
    EXPECT("{\"user_id\":\"u\",\"user_id\":\"u\"}", Malformed);
    EXPECT("{\"user_id\":\"u\",\"user_id\":\"admin\"}", Malformed);
    EXPECT("{\"user_id\":\"u\",\"expires_at\":1900000000,"
           "\"expires_at\":1900000000}", Malformed);
    /* the same key spelled with an escape is still the same key */
    EXPECT("{\"user_id\":\"u\",\"user\\u005fid\":\"admin\"}", Malformed);
    EXPECT("{\"user\\u005fid\":\"u\"}", Valid);

    EXPECT("{\"expires_at\":1900000000}", Malformed);     /* no user_id */
    EXPECT("{\"User_Id\":\"u\"}", Malformed);
    EXPECT("{\"user_id \":\"u\"}", Malformed);
    EXPECT("{\"user_id\":42}", Malformed);
    EXPECT("{\"user_id\":null}", Malformed);
    EXPECT("{\"user_id\":true}", Malformed);
    EXPECT("{\"user_id\":[\"u\"]}", Malformed);
    EXPECT("{\"user_id\":{\"id\":\"u\"}}", Malformed);
    EXPECT("{\"user_id\":\"\"}", Malformed);
}


/* ---- strings ---- */

void
test_escapes(void **)
{
    Session s;

    assert_int_equal(decode("{\"user_id\":\"a\\\"b\\\\c\\/d\"}", &s),
                     Decoded::Valid);
    assert_string_equal(s.user_id.c_str(), "a\"b\\c/d");

    assert_int_equal(decode("{\"user_id\":\"\\u0041\\u00e9\\u20AC\"}", &s),
                     Decoded::Valid);
    assert_string_equal(s.user_id.c_str(), "A\xc3\xa9\xe2\x82\xac");

    /* a surrogate pair: U+1F600 */
    assert_int_equal(decode("{\"user_id\":\"\\ud83d\\ude00\"}", &s),
                     Decoded::Valid);
    assert_string_equal(s.user_id.c_str(), "\xf0\x9f\x98\x80");

    /* U+10FFFF, the last code point */
    assert_int_equal(decode("{\"user_id\":\"\\udbff\\udfff\"}", &s),
                     Decoded::Valid);
    assert_string_equal(s.user_id.c_str(), "\xf4\x8f\xbf\xbf");

    /* escapes that decode to control characters end up in headers:
     * refused by user_id_acceptable() */
    EXPECT("{\"user_id\":\"u\\r\\nX-Admin: 1\"}", Malformed);
    EXPECT("{\"user_id\":\"u\\n\"}", Malformed);
    EXPECT("{\"user_id\":\"u\\r\"}", Malformed);
    EXPECT("{\"user_id\":\"u\\t\"}", Malformed);
    EXPECT("{\"user_id\":\"u\\b\"}", Malformed);
    EXPECT("{\"user_id\":\"u\\f\"}", Malformed);
    EXPECT("{\"user_id\":\"u\\u000d\\u000a\"}", Malformed);
    EXPECT("{\"user_id\":\"u\\u007f\"}", Malformed);
    EXPECT("{\"user_id\":\"u\\u001f\"}", Malformed);

    /* ... but they are fine where nobody uses them */
    EXPECT(valid_with("\"note\":\"line\\r\\nline\\t\\b\\f\""), Valid);

    /* bad escapes */
    EXPECT("{\"user_id\":\"u\\u0000\"}", Malformed);
    EXPECT(valid_with("\"x\":\"\\u0000\""), Malformed);
    EXPECT("{\"user_id\":\"\\ud83d\"}", Malformed);        /* lone high */
    EXPECT("{\"user_id\":\"\\ud83dx\"}", Malformed);
    EXPECT("{\"user_id\":\"\\ud83d\\n\"}", Malformed);
    EXPECT("{\"user_id\":\"\\ud83d\\u0041\"}", Malformed);
    EXPECT("{\"user_id\":\"\\ud83d\\ud83d\"}", Malformed);
    EXPECT("{\"user_id\":\"\\ude00\"}", Malformed);        /* lone low */
    EXPECT("{\"user_id\":\"\\ude00\\ud83d\"}", Malformed);
    EXPECT("{\"user_id\":\"\\u12\"}", Malformed);
    EXPECT("{\"user_id\":\"\\u12g4\"}", Malformed);
    EXPECT("{\"user_id\":\"\\U0041\"}", Malformed);
    EXPECT("{\"user_id\":\"\\x41\"}", Malformed);
    EXPECT("{\"user_id\":\"\\a\"}", Malformed);
    EXPECT("{\"user_id\":\"\\'\"}", Malformed);
    EXPECT("{\"user_id\":\"\\", Malformed);
    EXPECT("{\"user_id\":\"\\u", Malformed);
    EXPECT("{\"user_id\":\"\\ud83d\\", Malformed);
}


void
test_raw_bytes(void **)
{
    Session s;

    /* raw control characters are not JSON, escaped or not */
    EXPECT("{\"user_id\":\"u\r\n\"}", Malformed);
    EXPECT("{\"user_id\":\"u\t\"}", Malformed);
    EXPECT(valid_with("\"x\":\"a\nb\""), Malformed);
    EXPECT(std::string("{\"user_id\":\"u\0\"}", 16), Malformed);
    EXPECT(std::string("{\"user_id\":\"u\"}\0", 16), Malformed);
    EXPECT(std::string("{\"user_id\":\"u\",\0\"x\":1}", 22), Malformed);
    EXPECT(std::string("\0{\"user_id\":\"u\"}", 16), Malformed);

    /* DEL is legal in JSON but not in a user id */
    EXPECT("{\"user_id\":\"u\x7f\"}", Malformed);
    EXPECT(valid_with("\"x\":\"\x7f\""), Valid);

    /* valid UTF-8, 2, 3 and 4 bytes */
    assert_int_equal(decode("{\"user_id\":\"J\xc3\xbcrgen \xe2\x82\xac "
                            "\xf0\x9f\x98\x80\"}", &s), Decoded::Valid);
    assert_string_equal(s.user_id.c_str(),
                        "J\xc3\xbcrgen \xe2\x82\xac \xf0\x9f\x98\x80");

    /* invalid UTF-8, in user_id and elsewhere */
    static const char *const bad[] = {
        "\x80",                 /* lone continuation */
        "\xbf",
        "\xc0\xaf",             /* overlong '/' */
        "\xc1\xbf",
        "\xe0\x80\xaf",         /* overlong, 3 bytes */
        "\xf0\x80\x80\xaf",     /* overlong, 4 bytes */
        "\xed\xa0\x80",         /* surrogate U+D800 */
        "\xed\xbf\xbf",         /* surrogate U+DFFF */
        "\xf4\x90\x80\x80",     /* past U+10FFFF */
        "\xf5\x80\x80\x80",
        "\xfe",
        "\xff",
        "\xc3",                 /* truncated */
        "\xe2\x82",
        "\xf0\x9f\x98",
        "\xc3(",                /* bad continuation */
        "\xe2(\xac",
        "\xf0\x9f(\x80",
    };

    for (const char *b : bad) {
        expect("{\"user_id\":\"u" + std::string(b) + "\"}",
               Decoded::Malformed, __LINE__);
        expect(valid_with("\"x\":\"" + std::string(b) + "\""),
               Decoded::Malformed, __LINE__);
        expect(valid_with("\"" + std::string(b) + "\":1"),
               Decoded::Malformed, __LINE__);
    }

    /* the edges that are valid */
    EXPECT("{\"user_id\":\"\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf"
           "\xee\x80\x80\xf0\x90\x80\x80\xf4\x8f\xbf\xbf\"}", Valid);
}


/* ---- hostile input ---- */

void
test_every_prefix(void **)
{
    static const char *const values[] = {
        "{\"user_id\":\"u\\u00e9\\ud83d\\ude00\\\"\",\"expires_at\":"
        "1900000000,\"x\":[1.5e3,true,false,null,{\"a\":\"b\"}]}",
        "{ \"x\" : { \"y\" : [ -0.25 ] } , \"user_id\" : \"\xc3\xa9\" }",
        "{\"user_id\":\"42\"}",
    };

    for (const char *full : values) {
        std::string v(full);

        assert_int_equal(decode(v), Decoded::Valid);

        for (std::size_t n = 0; n < v.size(); n++) {
            Decoded d = decode(v.substr(0, n));

            if (d == Decoded::Valid || d == Decoded::Negative) {
                fail_msg("prefix of %zu bytes decoded as %s", n, name(d));
            }
        }
    }

    std::string neg(negative_marker());

    for (std::size_t n = 0; n < neg.size(); n++) {
        assert_int_equal(decode(neg.substr(0, n)), Decoded::Malformed);
    }
}


void
test_nesting(void **)
{
    /* the object is depth 1, so 15 more levels are the most allowed */
    EXPECT(valid_with("\"x\":" + std::string(15, '[') + std::string(15, ']')),
           Valid);
    EXPECT(valid_with("\"x\":" + std::string(16, '[') + std::string(16, ']')),
           Malformed);

    std::string objs, close;
    for (int i = 0; i < 15; i++) {
        objs += "{\"k\":";
        close += "}";
    }
    EXPECT(valid_with("\"x\":" + objs + "1" + close), Valid);
    EXPECT(valid_with("\"x\":" + objs + "{}" + close), Malformed);

    /* deep enough to smash a naive recursive reader's stack */
    EXPECT(valid_with("\"x\":" + std::string(10000, '[')
                      + std::string(10000, ']')), Malformed);
    EXPECT(valid_with("\"x\":" + std::string(10000, '[')), Malformed);
    EXPECT(std::string(10000, '['), Malformed);
    EXPECT(std::string(10000, '{'), Malformed);

    std::string deep;
    for (int i = 0; i < 10000; i++) {
        deep += "{\"a\":";
    }
    EXPECT(valid_with("\"x\":" + deep), Malformed);
}


void
test_huge_values(void **)
{
    /* a long unknown string is fine, a long user_id is not */
    EXPECT(valid_with("\"x\":\"" + std::string(1000000, 'a') + "\""), Valid);
    EXPECT("{\"user_id\":\"" + std::string(1000000, 'a') + "\"}", Malformed);

    std::string many = "{";
    for (int i = 0; i < 10000; i++) {
        many += "\"k" + std::to_string(i) + "\":" + std::to_string(i) + ",";
    }
    many += "\"user_id\":\"u\"}";
    EXPECT(many, Valid);
}


/* Random mutations of valid values: never Valid for garbage we can prove
 * is garbage, and never a crash or an ASan report for any of it. */
void
test_mutations(void **)
{
    std::uint32_t seed = 12345;
    auto rnd = [&seed]() {
        seed = seed * 1103515245u + 12345u;
        return (seed >> 16) & 0x7fff;
    };

    const std::string base =
        "{\"user_id\":\"u\\u00e9\\ud83d\\ude00\",\"expires_at\":1900000000,"
        "\"x\":[1.5e3,true,{\"a\":\"b\"}]}";
    static const char alphabet[] = "{}[]\":,\\u0123456789.eE+-tfnrl \x80\xff";

    for (int i = 0; i < 20000; i++) {
        std::string v = base;
        int edits = 1 + rnd() % 4;

        for (int e = 0; e < edits; e++) {
            std::size_t pos = rnd() % (v.size() + 1);
            char c = alphabet[rnd() % (sizeof(alphabet) - 1)];

            switch (rnd() % 3) {
            case 0:
                v.insert(pos, 1, c);
                break;
            case 1:
                if (pos < v.size()) {
                    v.erase(pos, 1);
                }
                break;
            default:
                if (pos < v.size()) {
                    v[pos] = c;
                }
                break;
            }
        }

        Session s;
        Decoded d = decode(v, &s);

        if (d == Decoded::Valid) {
            /* whatever got through must still be a usable session */
            assert_true(user_id_acceptable(s.user_id));
        }
    }
}


/* ---- encoding ---- */

void
test_encode(void **)
{
    Session s;
    std::string v;

    s.user_id = "42";
    s.has_expiry = true;
    s.expires_at = 1900000000;
    assert_true(encode_session(s, &v));
    assert_string_equal(v.c_str(),
                        "{\"user_id\":\"42\",\"expires_at\":1900000000}");

    s.has_expiry = false;
    assert_true(encode_session(s, &v));
    assert_string_equal(v.c_str(), "{\"user_id\":\"42\"}");

    s.user_id = "a\"b\\c/d\x01\x1f\x7f";
    assert_true(encode_session(s, &v));
    assert_string_equal(v.c_str(),
                        "{\"user_id\":\"a\\\"b\\\\c/d\\u0001\\u001f"
                        "\\u007f\"}");

    s.user_id = "x";
    s.has_expiry = true;
    s.expires_at = std::numeric_limits<std::int64_t>::min();
    assert_true(encode_session(s, &v));
    assert_string_equal(v.c_str(),
                        "{\"user_id\":\"x\",\"expires_at\":"
                        "-9223372036854775808}");

    /* the output replaces, it does not append */
    v = "garbage";
    s.has_expiry = false;
    assert_true(encode_session(s, &v));
    assert_string_equal(v.c_str(), "{\"user_id\":\"x\"}");
}


void
test_round_trip(void **)
{
    static const char *const ids[] = {
        "1", "42", "alice@example.com", "a\"b", "back\\slash", "sl/ash",
        "J\xc3\xbcrgen", "\xe2\x82\xac\xf0\x9f\x98\x80", "'OR'1'='1",
        "{\"user_id\":\"admin\"}", "u\\u0041", " spaced out ",
    };
    static const std::int64_t expiries[] = {
        kNow + 1, 1900000000, std::numeric_limits<std::int64_t>::max(),
    };

    for (const char *id : ids) {
        for (int with = 0; with < 2; with++) {
            for (std::int64_t exp : expiries) {
                Session in, back;
                std::string v;

                in.user_id = id;
                in.has_expiry = with != 0;
                in.expires_at = with ? exp : 0;

                assert_true(encode_session(in, &v));
                assert_int_equal(decode(v, &back), Decoded::Valid);
                assert_string_equal(back.user_id.c_str(), id);
                assert_int_equal(back.has_expiry, in.has_expiry);
                assert_true(back.expires_at == in.expires_at);
                assert_false(v == negative_marker());
            }
        }
    }

    std::string longest(256, 'z');
    Session in, back;
    std::string v;
    in.user_id = longest;
    assert_true(encode_session(in, &v));
    assert_int_equal(decode(v, &back), Decoded::Valid);
    assert_true(back.user_id == longest);

    /* an expired session encodes and decodes as Expired */
    in.has_expiry = true;
    in.expires_at = kNow - 1;
    assert_true(encode_session(in, &v));
    assert_int_equal(decode(v, &back), Decoded::Expired);
}


/* ---- user ids and cache lifetime ---- */

void
test_user_id_acceptable(void **)
{
    assert_false(user_id_acceptable(""));
    assert_true(user_id_acceptable("a"));
    assert_true(user_id_acceptable(std::string(256, 'a')));
    assert_false(user_id_acceptable(std::string(257, 'a')));
    assert_true(user_id_acceptable("\xc3\xa9\xff"));
    assert_true(user_id_acceptable("with space"));
    assert_false(user_id_acceptable(std::string("a\0b", 3)));
    assert_false(user_id_acceptable("a\rb"));
    assert_false(user_id_acceptable("a\nb"));
    assert_false(user_id_acceptable("a\tb"));
    assert_false(user_id_acceptable("a\x1f"));
    assert_false(user_id_acceptable("a\x7f"));
}


void
test_cache_seconds(void **)
{
    Session s;
    const std::int64_t max = std::numeric_limits<std::int64_t>::max();
    const std::int64_t min = std::numeric_limits<std::int64_t>::min();

    s.has_expiry = false;
    assert_int_equal(cache_seconds(300, s, kNow), 300);
    assert_int_equal(cache_seconds(0, s, kNow), 0);

    s.has_expiry = true;
    s.expires_at = kNow + 1000;
    assert_int_equal(cache_seconds(300, s, kNow), 300);
    s.expires_at = kNow + 300;
    assert_int_equal(cache_seconds(300, s, kNow), 300);
    s.expires_at = kNow + 299;
    assert_int_equal(cache_seconds(300, s, kNow), 299);
    s.expires_at = kNow + 1;
    assert_int_equal(cache_seconds(300, s, kNow), 1);
    s.expires_at = kNow;
    assert_true(cache_seconds(300, s, kNow) <= 0);
    s.expires_at = kNow - 100;
    assert_true(cache_seconds(300, s, kNow) <= 0);

    /* no overflow at the edges */
    s.expires_at = max;
    assert_int_equal(cache_seconds(300, s, kNow), 300);
    assert_int_equal(cache_seconds(300, s, -kNow), 300);
    assert_int_equal(cache_seconds(300, s, min), 300);
    s.expires_at = min;
    assert_true(cache_seconds(300, s, kNow) <= 0);
    assert_true(cache_seconds(300, s, max) <= 0);
}


/* ---- attributes (SPEC §12) ---- */

void
test_attrs(void **)
{
    Session s;

    assert_int_equal(decode(valid_with("\"attrs\":{\"role\":\"admin\","
                                       "\"tenant_id\":\"42\"}"), &s),
                     Decoded::Valid);
    assert_int_equal(s.attrs.size(), 2);
    assert_string_equal(s.attrs[0].name.c_str(), "role");
    assert_string_equal(s.attrs[0].value.c_str(), "admin");
    assert_string_equal(s.attrs[1].name.c_str(), "tenant_id");
    assert_string_equal(s.attrs[1].value.c_str(), "42");

    /* none, an empty object, null (as if not there), an empty string */
    assert_int_equal(decode("{\"user_id\":\"u1\",\"expires_at\":1900000000}",
                            &s),
                     Decoded::Valid);
    assert_int_equal(s.attrs.size(), 0);
    assert_int_equal(decode(valid_with("\"attrs\":{}"), &s), Decoded::Valid);
    assert_int_equal(s.attrs.size(), 0);
    assert_int_equal(decode(valid_with("\"attrs\":{\"a\":null,\"b\":\"\"}"),
                            &s),
                     Decoded::Valid);
    assert_int_equal(s.attrs.size(), 1);
    assert_string_equal(s.attrs[0].name.c_str(), "b");
    assert_string_equal(s.attrs[0].value.c_str(), "");

    /* escapes are unescaped; whitespace is fine */
    assert_int_equal(
        decode(valid_with("\"attrs\" : { \"e\" : \"a\\u00e9\\\"\" }"), &s),
        Decoded::Valid);
    assert_string_equal(s.attrs[0].value.c_str(), "a\xc3\xa9\"");

    /* hostile or malformed: the whole value is unreadable */
    EXPECT(valid_with("\"attrs\":{\"role\":\"a\\r\\nX-Evil: 1\"}"), Malformed);
    EXPECT(valid_with("\"attrs\":{\"role\":\"a\\nb\"}"), Malformed);
    EXPECT(valid_with("\"attrs\":{\"role\":\"a\\u0000b\"}"), Malformed);
    EXPECT(valid_with("\"attrs\":{\"role\":\"a\\u007fb\"}"), Malformed);
    EXPECT(valid_with("\"attrs\":{\"role\":\"a\rb\"}"), Malformed);
    EXPECT(valid_with("\"attrs\":{\"role\":\"" + std::string(256, 'x')
                      + "\"}"),
           Valid);
    EXPECT(valid_with("\"attrs\":{\"role\":\"" + std::string(257, 'x')
                      + "\"}"),
           Malformed);
    EXPECT(valid_with("\"attrs\":{\"role\":\"" + std::string(1 << 20, 'x')
                      + "\"}"),
           Malformed);
    EXPECT(valid_with("\"attrs\":{\"Role\":\"x\"}"), Malformed);
    EXPECT(valid_with("\"attrs\":{\"1a\":\"x\"}"), Malformed);
    /* a name is written plainly: a plain identifier needs no escape */
    EXPECT(valid_with("\"attrs\":{\"\\u0072ole\":\"x\"}"), Malformed);
    EXPECT(valid_with("\"attrs\":{\"a-b\":\"x\"}"), Malformed);
    EXPECT(valid_with("\"attrs\":{\"\":\"x\"}"), Malformed);
    EXPECT(valid_with("\"attrs\":{\"user_id\":\"x\"}"), Malformed);
    EXPECT(valid_with("\"attrs\":{\"" + std::string(64, 'a') + "\":\"x\"}"),
           Malformed);
    EXPECT(valid_with("\"attrs\":{\"" + std::string(63, 'a') + "\":\"x\"}"),
           Valid);
    EXPECT(valid_with("\"attrs\":{\"a\":\"x\",\"a\":\"y\"}"), Malformed);
    EXPECT(valid_with("\"attrs\":{\"a\":42}"), Malformed);
    EXPECT(valid_with("\"attrs\":{\"a\":true}"), Malformed);
    EXPECT(valid_with("\"attrs\":{\"a\":[\"x\"]}"), Malformed);
    EXPECT(valid_with("\"attrs\":{\"a\":{}}"), Malformed);
    EXPECT(valid_with("\"attrs\":[]"), Malformed);
    EXPECT(valid_with("\"attrs\":\"role\""), Malformed);
    EXPECT(valid_with("\"attrs\":null"), Malformed);
    EXPECT(valid_with("\"attrs\":{},\"attrs\":{}"), Malformed);
    EXPECT(valid_with("\"attrs\":{\"a\":\"x\""), Malformed);
    EXPECT(valid_with("\"attrs\":{\"a\":\"x\",}"), Malformed);

    /* at most 16 kept; a 17th member is refused unless it is null */
    std::string many;
    for (std::size_t i = 0; i < kMaxAttrs; i++) {
        many += (i ? ",\"a" : "\"a") + std::to_string(i) + "\":\"v\"";
    }
    EXPECT(valid_with("\"attrs\":{" + many + "}"), Valid);
    EXPECT(valid_with("\"attrs\":{" + many + ",\"z\":\"v\"}"), Malformed);
}

/* The hit path's decoder: names and values in the caller's buffer; 16 of
 * the longest fit. */
void
test_attrs_in_place(void **)
{
    std::string obj;
    for (std::size_t i = 0; i < kMaxAttrs; i++) {
        std::string name(63, 'a');
        name[62] = static_cast<char>('a' + i);
        obj += (i ? "," : "") + ("\"" + name + "\":\"")
               + std::string(256, static_cast<char>('A' + i)) + "\"";
    }
    std::string v = valid_with("\"attrs\":{" + obj + "}");

    char        id[kMaxUserIdLength];
    char        attrs[kAttrBufferSize];
    SessionView view;

    assert_int_equal(decode_session(v, kNow, &view, id, attrs), Decoded::Valid);
    assert_int_equal(view.nattrs, kMaxAttrs);
    for (std::size_t i = 0; i < kMaxAttrs; i++) {
        assert_int_equal(view.attrs[i].name.size(), 63);
        assert_int_equal(view.attrs[i].name[62], 'a' + i);
        assert_true(view.attrs[i].value
                    == std::string(256, static_cast<char>('A' + i)));
    }
}

void
test_attrs_round_trip(void **)
{
    Session in, back;
    std::string v;

    in.user_id = "u1";
    in.attrs = {Attr{"role", "admin"}, Attr{"email", "a\"b\\c@x"},
                Attr{"empty", ""}};

    assert_true(encode_session(in, &v));
    assert_string_equal(v.c_str(),
                        "{\"user_id\":\"u1\",\"attrs\":{\"role\":\"admin\","
                        "\"email\":\"a\\\"b\\\\c@x\",\"empty\":\"\"}}");
    assert_int_equal(decode(v, &back), Decoded::Valid);
    assert_int_equal(back.attrs.size(), 3);
    for (std::size_t i = 0; i < 3; i++) {
        assert_true(back.attrs[i].name == in.attrs[i].name);
        assert_true(back.attrs[i].value == in.attrs[i].value);
    }

    /* none: no "attrs" member, the value of version 1 */
    in.attrs.clear();
    assert_true(encode_session(in, &v));
    assert_string_equal(v.c_str(), "{\"user_id\":\"u1\"}");
}

void
test_attr_acceptable(void **)
{
    assert_true(attr_name_acceptable("role"));
    assert_true(attr_name_acceptable("_x9"));
    assert_true(attr_name_acceptable("tenant_id"));
    assert_false(attr_name_acceptable(""));
    assert_false(attr_name_acceptable("9a"));
    assert_false(attr_name_acceptable("Role"));
    assert_false(attr_name_acceptable("a b"));
    assert_false(attr_name_acceptable("a-b"));
    assert_false(attr_name_acceptable("user_id"));
    assert_false(attr_name_acceptable(std::string(64, 'a')));

    assert_true(attr_value_acceptable(""));
    assert_true(attr_value_acceptable("admin"));
    assert_true(attr_value_acceptable(std::string(256, 'x')));
    assert_false(attr_value_acceptable(std::string(257, 'x')));
    assert_false(attr_value_acceptable("a\r\nb"));
    assert_false(attr_value_acceptable(std::string("a\0b", 3)));
    assert_false(attr_value_acceptable("a\x7f"));
}

}  // namespace

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_negative_marker),
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_expiry),
        cmocka_unit_test(test_structure),
        cmocka_unit_test(test_duplicates_and_types),
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_raw_bytes),
        cmocka_unit_test(test_every_prefix),
        cmocka_unit_test(test_nesting),
        cmocka_unit_test(test_huge_values),
        cmocka_unit_test(test_mutations),
        cmocka_unit_test(test_encode),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_user_id_acceptable),
        cmocka_unit_test(test_cache_seconds),
        cmocka_unit_test(test_attrs),
        cmocka_unit_test(test_attrs_in_place),
        cmocka_unit_test(test_attrs_round_trip),
        cmocka_unit_test(test_attr_acceptable),
    };

    return cmocka_run_group_tests_name("session_value", tests, nullptr,
                                       nullptr) ? 1 : 0;
}
