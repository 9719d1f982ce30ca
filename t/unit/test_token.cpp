/*
 * token_plausible(): the 401-before-any-I/O rule (SPEC §4.1).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

#include <string>

#include "check/token.h"

using session_cache::kMaxTokenLength;
using session_cache::token_plausible;

namespace {

bool
plausible(const std::string &s)
{
    /* a heap copy of the exact length, so ASan sees any overread */
    auto *buf = new unsigned char[s.size() + 1];
    s.copy(reinterpret_cast<char *>(buf), s.size());
    bool ok = token_plausible(buf, s.size());
    delete[] buf;
    return ok;
}


void
test_length_limits(void **)
{
    assert_false(plausible(""));
    assert_false(token_plausible(nullptr, 0));
    assert_false(token_plausible(nullptr, 5));
    assert_true(plausible("a"));
    assert_true(plausible(std::string(kMaxTokenLength, 'x')));
    assert_true(plausible(std::string(512, 'x')));
    assert_false(plausible(std::string(513, 'x')));
    assert_false(plausible(std::string(100000, 'x')));
}


void
test_every_byte(void **)
{
    for (int c = 0; c < 256; c++) {
        std::string s = "ab";
        s.push_back(static_cast<char>(c));
        s += "cd";

        bool expected = c >= 0x21 && c <= 0x7e && c != ';';
        if (plausible(s) != expected) {
            fail_msg("byte 0x%02x: expected %s", c,
                     expected ? "plausible" : "refused");
        }

        /* the same byte alone, first and last */
        std::string one(1, static_cast<char>(c));
        assert_int_equal(plausible(one), expected);
        assert_int_equal(plausible(one + "abc"), expected);
        assert_int_equal(plausible("abc" + one), expected);
    }
}


void
test_named_cases(void **)
{
    assert_false(plausible("abc def"));              /* 0x20 */
    assert_false(plausible("abc;def"));              /* cookie separator */
    assert_false(plausible(";"));
    assert_false(plausible("abc\x7f"));              /* DEL */
    assert_false(plausible(std::string("ab\0cd", 5)));  /* NUL inside */
    assert_false(plausible("abc\x80"));
    assert_false(plausible("\xc3\xa9t\xc3\xa9"));    /* UTF-8 */
    assert_false(plausible("\xff"));
    assert_false(plausible("abc\r\nSET x y"));       /* RESP framing */
    assert_false(plausible("abc\n"));
    assert_false(plausible("\tabc"));

    /* Printable but hostile: plausible, and harmless because the token
     * only ever travels as a bound parameter and a RESP bulk string. */
    assert_true(plausible("'OR'1'='1"));
    assert_true(plausible("*3$3SET"));
    assert_true(plausible("abc\"def"));
    assert_true(plausible("a=b,c"));
    assert_true(plausible("!~"));
    assert_true(plausible("eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HA"));
}

}  // namespace

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_length_limits),
        cmocka_unit_test(test_every_byte),
        cmocka_unit_test(test_named_cases),
    };

    return cmocka_run_group_tests_name("token", tests, nullptr, nullptr)
           ? 1 : 0;
}
