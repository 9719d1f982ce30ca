#include "redis/resp.h"

#include <cstring>

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

static std::size_t digits(std::size_t n)
{
    std::size_t d = 1;

    while (n >= 10) {
        n /= 10;
        d++;
    }

    return d;
}

std::size_t resp_length(std::initializer_list<std::string_view> args)
{
    std::size_t len = 1 + digits(args.size()) + 2;

    for (std::string_view a : args) {
        len += 1 + digits(a.size()) + 2 + a.size() + 2;
    }

    return len;
}

static char *write_number(char *p, char mark, std::size_t n)
{
    std::size_t d = digits(n);

    *p++ = mark;
    for (char *q = p + d; q > p; n /= 10) {
        *--q = static_cast<char>('0' + n % 10);
    }
    p += d;
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

char *resp_write(char *p, std::initializer_list<std::string_view> args)
{
    p = write_number(p, '*', args.size());

    for (std::string_view a : args) {
        p = write_number(p, '$', a.size());
        std::memcpy(p, a.data(), a.size());
        p += a.size();
        *p++ = '\r';
        *p++ = '\n';
    }

    return p;
}

}  // namespace session_cache
