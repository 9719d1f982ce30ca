/*
 * check_session_query(): the placeholders of the session query as Postgres
 * reads them (issue 10 item 6: "$10" and "$2 OR $1" used to pass).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
extern "C" {
#include <cmocka.h>
}

#include <string>

#include "pg/sql_params.h"

using session_cache::check_session_query;
using session_cache::SqlParamsCheck;
using session_cache::SqlParamsVerdict;

namespace {

/* a heap copy of the exact length, so ASan sees any overread */
SqlParamsCheck
check(const std::string &sql, std::string *where = nullptr)
{
    char *buf = new char[sql.size() ? sql.size() : 1];
    sql.copy(buf, sql.size());
    SqlParamsCheck c = check_session_query(std::string_view(buf, sql.size()));
    if (where) {
        where->assign(c.where.data(), c.where.size());
    }
    delete[] buf;
    return c;
}

void
expect(const std::string &sql, SqlParamsVerdict v, const char *where = "")
{
    std::string w;
    SqlParamsCheck c = check(sql, &w);

    if (c.verdict != v || w != where) {
        print_error("%s: verdict %d where \"%s\", expected %d \"%s\"\n",
                    sql.c_str(), static_cast<int>(c.verdict), w.c_str(),
                    static_cast<int>(v), where);
    }
    assert_int_equal(static_cast<int>(c.verdict), static_cast<int>(v));
    assert_string_equal(w.c_str(), where);
}


void
test_accepted(void **)
{
    auto ok = SqlParamsVerdict::Ok;

    expect("SELECT user_id, extract(epoch FROM expires_at)::bigint\n"
           "  FROM platform.user_sessions\n"
           " WHERE token = $1 AND revoked_at IS NULL AND expires_at > now()",
           ok);
    expect("SELECT u FROM s WHERE token = $1 OR alt = $1", ok);
    expect("SELECT u FROM s WHERE token=$1", ok);
    expect("SELECT u FROM s WHERE token = ($1)::text", ok);
    expect("SELECT u FROM s WHERE token = $1;", ok);
    expect("$1", ok);
    /* a placeholder-like text that is not one, beside the real $1 */
    expect("SELECT u FROM s WHERE note <> '$2' AND token = $1", ok);
    expect("SELECT u FROM s WHERE \"col$2\" = $1", ok);
    expect("SELECT u FROM s WHERE token = $1 -- or $2\n", ok);
    expect("SELECT u FROM s /* $2 /* nested $3 */ still $4 */ WHERE t = $1",
           ok);
    expect("SELECT $$ $2 $$ || u FROM s WHERE t = $1", ok);
    expect("SELECT $q$ $2 $ $$ $q $q$ || u FROM s WHERE t = $1", ok);
    expect("SELECT E'\\' $2' || u FROM s WHERE t = $1", ok);
    expect("SELECT 'it''s $2' || u FROM s WHERE t = $1", ok);
    expect("SELECT \"a\"\"$2\" FROM s WHERE t = $1", ok);
    /* a name may hold $: a$2 is a name */
    expect("SELECT a$2 FROM s WHERE t = $1", ok);
    expect("SELECT u FROM s WHERE t = $1 AND x = 10$", ok);
}


void
test_no_token(void **)
{
    auto none = SqlParamsVerdict::NoToken;

    expect("", none);
    expect("SELECT 1", none);
    expect("SELECT u FROM s WHERE token = '$1'", none);
    expect("SELECT u FROM s WHERE token = \"$1\"", none);
    expect("SELECT u FROM s -- WHERE token = $1", none);
    expect("SELECT u FROM s /* WHERE token = $1 */", none);
    expect("SELECT u FROM s WHERE token = $$$1$$", none);
    expect("SELECT u FROM s WHERE token = $x$ $1 $x$", none);
    expect("SELECT u FROM s WHERE token = E'\\'$1'", none);
    expect("SELECT u FROM s WHERE token = a$1", none);
    expect("SELECT u FROM s WHERE token = $", none);
}


void
test_other_placeholders(void **)
{
    auto other = SqlParamsVerdict::OtherParam;

    /* the cases of issue 10 */
    expect("SELECT u FROM s WHERE token = $10", other, "$10");
    expect("SELECT u FROM s WHERE token = $2 OR token = $1", other, "$2");
    expect("SELECT u FROM s WHERE token = $1 OR token = $2", other, "$2");

    expect("SELECT u FROM s WHERE token = $0", other, "$0");
    expect("SELECT u FROM s WHERE token = $01", other, "$01");
    expect("SELECT u FROM s WHERE token = $1 AND n = $1$2", other, "$2");
    /* E only opens an escaped string on its own: not inside a name */
    expect("SELECT u FROM s WHERE x = abcE'\\' AND t = $2 --'", other, "$2");
    /* '' ends a standard string and starts another: no backslash escape */
    expect("SELECT u FROM s WHERE x = '\\' AND t = $3", other, "$3");
    /* a string ends where it ends */
    expect("SELECT 'a' || $2 || 'b' FROM s WHERE t = $1", other, "$2");
    /* a comment ends at the line's end */
    expect("SELECT u FROM s -- comment\nWHERE t = $2", other, "$2");
    /* the dollar quote ends with its own tag only */
    expect("SELECT $a$ $b$ $a$ || $2 FROM s WHERE t = $1", other, "$2");
}


void
test_junk_and_unterminated(void **)
{
    expect("SELECT u FROM s WHERE token = $1abc", SqlParamsVerdict::Junk,
           "$1abc");
    expect("SELECT u FROM s WHERE token = $1_0", SqlParamsVerdict::Junk,
           "$1_0");

    auto open = SqlParamsVerdict::Unterminated;
    expect("SELECT u FROM s WHERE token = $1 AND x = 'abc", open, "'");
    expect("SELECT u FROM s WHERE token = $1 AND x = E'abc\\'", open, "E'");
    expect("SELECT u FROM s WHERE token = $1 AND \"x = 1", open, "\"");
    expect("SELECT u FROM s WHERE token = $1 /* /* */", open, "/*");
    expect("SELECT u FROM s WHERE token = $1 AND x = $tag$ abc $tag",
           open, "$tag$");
    expect("SELECT u FROM s WHERE token = $1 AND x = $$", open, "$$");
}


/* Every prefix of tricky texts: no read past the end (ASan), no hang. */
void
test_prefixes(void **)
{
    const std::string texts[] = {
        "SELECT E'\\\\' || $q$ a $ $q $q$ /* /* */ */ -- x\n\"a\"\"b\" $1",
        "$$", "$1a", "E'", "'", "/*", "-", "$", "$a", "$a$", "\\",
    };

    for (const std::string &t : texts) {
        for (std::size_t n = 0; n <= t.size(); n++) {
            (void) check(t.substr(0, n));
        }
    }
}

}  // namespace

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepted),
        cmocka_unit_test(test_no_token),
        cmocka_unit_test(test_other_placeholders),
        cmocka_unit_test(test_junk_and_unterminated),
        cmocka_unit_test(test_prefixes),
    };

    return cmocka_run_group_tests_name("sql_params", tests, nullptr, nullptr)
           ? 1 : 0;
}
