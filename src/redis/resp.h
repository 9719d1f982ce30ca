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

/* The same command written to p, which has room for resp_length(args)
 * bytes; returns the end. */
std::size_t resp_length(std::initializer_list<std::string_view> args);
char *resp_write(char *p, std::initializer_list<std::string_view> args);

}  // namespace session_cache
