/*
 * The one guard for what nginx calls: no C++ exception may reach nginx.
 */
#pragma once

#include "nginx_cpp.h"

#include <exception>

namespace session_cache {

/* Runs fn; what it throws is logged at alert, "session_cache: <who>:
 * <what>", and goes no further. false: fn threw (the caller fails what
 * it was driving). */
template <class Fn>
bool guarded(ngx_log_t *log, const char *who, Fn &&fn) noexcept
{
    try {
        fn();
        return true;

    } catch (const std::exception &e) {
        ngx_log_error(NGX_LOG_ALERT, log, 0, "session_cache: %s: %s", who,
                      e.what());
    } catch (...) {
        ngx_log_error(NGX_LOG_ALERT, log, 0,
                      "session_cache: %s: unknown exception", who);
    }

    return false;
}

} // namespace session_cache
