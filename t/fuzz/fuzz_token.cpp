/*
 * libFuzzer target: token_plausible() (SPEC §4.1) against a plain
 * reference: 1..512 bytes, each 0x21..0x7e except ';'.
 */
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "check/token.h"

extern "C" int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bool expect = size >= 1 && size <= session_cache::kMaxTokenLength;

    for (size_t i = 0; expect && i < size; i++) {
        expect = data[i] >= 0x21 && data[i] <= 0x7e && data[i] != ';';
    }

    if (session_cache::token_plausible(data, size) != expect) {
        abort();
    }

    return 0;
}
