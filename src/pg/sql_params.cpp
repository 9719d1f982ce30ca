/*
 * A scan of the session query for its placeholders, following the rules of
 * Postgres's lexer (src/backend/parser/scan.l) that decide where a $n can
 * be one: quoted text, quoted names, comments and dollar quotes hide it,
 * and a name may hold $ without starting one.
 */
#include "pg/sql_params.h"

namespace session_cache {

namespace {

bool ident_start(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'
           || c >= 0x80;
}

bool digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* after the first character of a name: letters, digits, _ and $ */
bool ident_cont(unsigned char c)
{
    return ident_start(c) || digit(c) || c == '$';
}

/* a dollar quote's tag: like a name, without $ */
bool tag_cont(unsigned char c)
{
    return ident_start(c) || digit(c);
}

class Scanner {
public:
    explicit Scanner(std::string_view sql) : s_(sql) {}

    SqlParamsCheck run();

private:
    unsigned char at(std::size_t i) const
    {
        return i < s_.size() ? static_cast<unsigned char>(s_[i]) : 0;
    }

    bool        quoted(char quote, bool backslash);
    bool        comment();
    std::size_t dollar_tag(std::size_t from) const;

    std::string_view s_;
    std::size_t      i_ = 0;
};

/* At the opening quote: past the closing one; false if there is none.
 * A doubled quote stands for one; with backslash, \ escapes any byte. */
bool Scanner::quoted(char quote, bool backslash)
{
    for (i_++; i_ < s_.size(); i_++) {
        char c = s_[i_];

        if (backslash && c == '\\') {
            i_++;
            continue;
        }

        if (c == quote) {
            if (at(i_ + 1) == static_cast<unsigned char>(quote)) {
                i_++;
                continue;
            }
            i_++;
            return true;
        }
    }

    return false;
}

/* At a slash-star: past its end, comments nest; false if it never ends. */
bool Scanner::comment()
{
    std::size_t depth = 0;

    while (i_ < s_.size()) {
        if (at(i_) == '/' && at(i_ + 1) == '*') {
            depth++;
            i_ += 2;
        } else if (at(i_) == '*' && at(i_ + 1) == '/') {
            i_ += 2;
            if (--depth == 0) {
                return true;
            }
        } else {
            i_++;
        }
    }

    return false;
}

/* The length of a dollar quote's delimiter ($$ or $tag$) at from, or 0. */
std::size_t Scanner::dollar_tag(std::size_t from) const
{
    std::size_t j = from + 1;

    if (at(j) != '$') {
        if (!ident_start(at(j))) {
            return 0;
        }
        while (tag_cont(at(j))) {
            j++;
        }
        if (at(j) != '$') {
            return 0;
        }
    }

    return j + 1 - from;
}

SqlParamsCheck Scanner::run()
{
    bool token = false;

    while (i_ < s_.size()) {
        unsigned char c = at(i_);
        std::size_t   start = i_;

        if (c == '\'') {
            if (!quoted('\'', false)) {
                return {SqlParamsVerdict::Unterminated, s_.substr(start, 1)};
            }

        } else if (c == '"') {
            if (!quoted('"', false)) {
                return {SqlParamsVerdict::Unterminated, s_.substr(start, 1)};
            }

        } else if (c == '-' && at(i_ + 1) == '-') {
            while (i_ < s_.size() && at(i_) != '\n' && at(i_) != '\r') {
                i_++;
            }

        } else if (c == '/' && at(i_ + 1) == '*') {
            if (!comment()) {
                return {SqlParamsVerdict::Unterminated, s_.substr(start, 2)};
            }

        } else if (ident_start(c)) {
            /* a name or key word; E'...' is a string with escapes */
            while (ident_cont(at(i_))) {
                i_++;
            }

            if (i_ - start == 1 && (c == 'e' || c == 'E') && at(i_) == '\'') {
                if (!quoted('\'', true)) {
                    return {SqlParamsVerdict::Unterminated,
                            s_.substr(start, 2)};
                }
            }

        } else if (digit(c)) {
            /* a number: 12, 1.5e3, 0x1F, 1_000 */
            while (tag_cont(at(i_)) || at(i_) == '.') {
                i_++;
            }

        } else if (c == '$' && digit(at(i_ + 1))) {
            for (i_++; digit(at(i_)); i_++) {
                /* the parameter's number */
            }

            std::string_view param = s_.substr(start, i_ - start);

            if (ident_start(at(i_))) {
                while (ident_cont(at(i_))) {
                    i_++;
                }
                return {SqlParamsVerdict::Junk, s_.substr(start, i_ - start)};
            }

            if (param != "$1") {
                return {SqlParamsVerdict::OtherParam, param};
            }

            token = true;

        } else if (c == '$') {
            std::size_t n = dollar_tag(i_);

            if (n == 0) {
                i_++; /* a lone $ */
                continue;
            }

            std::string_view tag = s_.substr(start, n);
            std::size_t      end = s_.find(tag, start + n);

            if (end == std::string_view::npos) {
                return {SqlParamsVerdict::Unterminated, tag};
            }

            i_ = end + n;

        } else {
            i_++;
        }
    }

    if (!token) {
        return {SqlParamsVerdict::NoToken, {}};
    }

    return {SqlParamsVerdict::Ok, {}};
}

} // namespace

SqlParamsCheck check_session_query(std::string_view sql)
{
    return Scanner(sql).run();
}

} // namespace session_cache
