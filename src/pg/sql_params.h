/*
 * The placeholders of a SQL text as Postgres's lexer reads them ($n outside
 * quoted strings, quoted identifiers, comments and dollar-quoted strings),
 * for the session query check at configuration time. Pure logic: no nginx
 * types, linked alone by its unit test.
 */
#pragma once

#include <string_view>

namespace session_cache {

enum class SqlParamsVerdict {
    Ok,          /* $1, one or more times, and no other placeholder */
    NoToken,     /* no $1 */
    OtherParam,  /* a placeholder other than $1: see `where` */
    Junk,        /* $1x: a placeholder run into a name (Postgres 16
                  * refuses it, earlier ones read two tokens) */
    Unterminated /* a string, identifier or comment left open */
};

struct SqlParamsCheck {
    SqlParamsVerdict verdict;
    std::string_view where; /* the placeholder, or the opening of what
                             * was left open; empty for Ok and NoToken */
};

/*
 * Reads sql as Postgres does with standard_conforming_strings on (the
 * default since 9.1): '...' with '' inside, E'...' with backslash escapes
 * too, "..." with "", -- to the end of the line, nested slash-star
 * comments, $$...$$ and $tag$...$tag$. Names may hold $ (a$1 is a name).
 */
SqlParamsCheck check_session_query(std::string_view sql);

} // namespace session_cache
