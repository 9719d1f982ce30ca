#include "resp.h"

namespace session_cache {

static void append_number(std::string *out, char mark, std::size_t n)
{
    char buf[24];
    char *p = buf + sizeof(buf);

    do {
        *--p = static_cast<char>('0' + n % 10);
        n /= 10;
    } while (n);

    out->push_back(mark);
    out->append(p, buf + sizeof(buf) - p);
    out->append("\r\n", 2);
}

void resp_append(std::string *out, std::initializer_list<std::string_view> args)
{
    append_number(out, '*', args.size());

    for (std::string_view a : args) {
        append_number(out, '$', a.size());
        out->append(a.data(), a.size());
        out->append("\r\n", 2);
    }
}

}  // namespace session_cache
