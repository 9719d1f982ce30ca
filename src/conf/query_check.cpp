/*
 * The session_cache_query directive's check at configuration time (nginx
 * -t): the placeholders as Postgres reads them, by the pure scan in
 * pg/sql_params.cpp. A query that passes can still fail to prepare (a
 * missing column): the pool treats that as a configuration error.
 */
#include "nginx_cpp.h"

#include "pg/sql_params.h"

namespace session_cache {

static const char *what_is_open(std::string_view opening)
{
    if (opening == "'" || opening == "E'") {
        return "quoted string";
    }
    if (opening == "\"") {
        return "quoted identifier";
    }
    if (opening == "/*") {
        return "comment";
    }
    return "dollar-quoted string";
}

} // namespace session_cache

extern "C" char *ngx_http_session_cache_check_query(ngx_conf_t *cf,
                                                    ngx_str_t  *sql)
{
    using namespace session_cache;

    SqlParamsCheck c = check_session_query(
        std::string_view(reinterpret_cast<const char *>(sql->data), sql->len));

    /* the text quoted is a piece of the query, never longer than this */
    size_t      n = ngx_min(c.where.size(), (size_t) 32);
    const char *w = c.where.data();

    switch (c.verdict) {
    case SqlParamsVerdict::Ok:
        return NGX_CONF_OK;

    case SqlParamsVerdict::NoToken:
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "session_cache_query: no $1 for the token (a $1 "
                           "inside a string, a quoted name or a comment "
                           "does not count)");
        break;

    case SqlParamsVerdict::OtherParam:
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "session_cache_query: placeholder \"%*s\": the "
                           "query has one parameter, $1 (the token), and "
                           "no other",
                           n, w);
        break;

    case SqlParamsVerdict::Junk:
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "session_cache_query: \"%*s\": a placeholder "
                           "runs into a name; put a space or an operator "
                           "after $1",
                           n, w);
        break;

    case SqlParamsVerdict::Unterminated:
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "session_cache_query: unterminated %s opened "
                           "by \"%*s\"",
                           what_is_open(c.where), n, w);
        break;
    }

    return static_cast<char *>(NGX_CONF_ERROR);
}
