/*
 * nginx's headers, for the C++ side. One place includes them, inside
 * extern "C", so every C++ file sees the same declarations.
 */
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>
#include <ngx_http.h>

#include "ngx_session_cache.h"
}

#include <string_view>

namespace session_cache {

inline std::string_view view(const ngx_str_t &s)
{
    return std::string_view(reinterpret_cast<const char *>(s.data), s.len);
}

} // namespace session_cache
