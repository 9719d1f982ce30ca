/*
 * Redis commands in RESP, the wire format: an array of bulk strings.
 * Pure logic; replies are parsed by hiredis's redisReader.
 */
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>

namespace session_cache {

/* Append one command, e.g. {"GET", key}, to out. */
void resp_append(std::string *out, std::initializer_list<std::string_view> args);

}  // namespace session_cache
