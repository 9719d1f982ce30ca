/*
 * libFuzzer target: Postgres conninfo parsing (libpq's PQconninfoParse)
 * and masking (SPEC §2, §7).
 *
 * Invariants:
 *  - a parsed conninfo masks to the same text whatever its password (and
 *    every option not shown) is: the masked form cannot carry a secret;
 *  - an error message does not echo the input: rotating the letters G-Z
 *    and the bytes 0x80..0xff of the input (they mean nothing to libpq's
 *    parser: keywords are lowercase, hex digits stop at F) must not change
 *    the message, or else it quoted part of the input (a value, maybe the
 *    password);
 *  - split_hosts() loses no byte of a host list.
 */
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "pg/pg_conninfo.h"

using namespace session_cache;

namespace {

bool
rotate(std::string *s)
{
    bool changed = false;

    for (char &ch : *s) {
        auto c = static_cast<unsigned char>(ch);

        if (c >= 'G' && c <= 'Z') {
            ch = c == 'Z' ? 'G' : static_cast<char>(c + 1);
            changed = true;
        } else if (c >= 0x80) {
            ch = static_cast<char>(c ^ 1);
            changed = true;
        }
    }

    return changed;
}

}  // namespace

extern "C" int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    std::string input(reinterpret_cast<const char *>(data), size);
    PgConninfo c;
    std::string err = parse_pg_conninfo(input, &c);

    if (!err.empty()) {
        std::string rotated = input;

        if (rotate(&rotated)) {
            PgConninfo d;

            if (parse_pg_conninfo(rotated, &d) != err) {
                abort();  /* the message quotes part of the input */
            }
        }
        return 0;
    }

    std::string masked = mask_pg_conninfo(c);

    /* the same shown options, every other value replaced */
    PgConninfo other;
    static const char *const shown[] = {
        "host", "hostaddr", "port", "dbname", "user"
    };

    for (size_t i = 0; i < c.keywords.size(); i++) {
        bool is_shown = false;

        for (const char *k : shown) {
            is_shown = is_shown || c.keywords[i] == k;
        }
        if (!other.set(c.keywords[i], is_shown ? c.values[i] : "x")) {
            return 0;
        }
    }

    if (mask_pg_conninfo(other) != masked) {
        abort();  /* the masked form depends on a hidden value */
    }

    if (c.get("password") != nullptr
        && masked.find("password=***") == std::string::npos)
    {
        abort();
    }

    /* split_hosts never loses a byte: joined back, it is the input */
    if (const std::string *h = c.get("host")) {
        std::string joined;
        auto parts = split_hosts(*h);

        for (size_t i = 0; i < parts.size(); i++) {
            joined += (i ? "," : "") + parts[i];
        }
        if (joined != *h) {
            abort();
        }
    }

    return 0;
}
