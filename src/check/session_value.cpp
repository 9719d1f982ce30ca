/*
 * The cached session value codec (SPEC §3). The reader is hand-written and
 * strict on purpose: the value comes from a Redis that other programs can
 * write to, so anything but a well-formed session object is Malformed and
 * the caller falls back to Postgres.
 */
#include "check/session_value.h"

#include "integer.h"

#include <charconv>
#include <cstring>
#include <new>

namespace session_cache {

namespace {

constexpr char kNegativeMarker[] = "{\"invalid\":true}";

/* The session object itself is depth 1; anything nested deeper than this
 * is refused, which also bounds the reader's recursion. */
constexpr int kMaxDepth = 16;

static_assert(kMaxUserIdLength == 256, "SPEC: user ids of 1..256 bytes");

/* The bytes a JSON string holds as they are: printable ASCII but " and \.
 * One load per byte in the reader's inner loop. */
struct PlainTable {
    bool plain[256];

    constexpr PlainTable() : plain()
    {
        for (int c = 0x20; c < 0x7f; c++) {
            plain[c] = c != '"' && c != '\\';
        }
    }

    constexpr bool operator[](unsigned char c) const { return plain[c]; }
};

constexpr PlainTable kPlain;

/* [a-z0-9_]: one load per byte of an attribute name */
struct NameTable {
    bool ok[256];

    constexpr NameTable() : ok()
    {
        for (int c = 'a'; c <= 'z'; c++) {
            ok[c] = true;
        }
        for (int c = '0'; c <= '9'; c++) {
            ok[c] = true;
        }
        ok['_'] = true;
    }
};

constexpr NameTable kName;


/*
 * Where a string is unescaped to: a buffer of fixed size, so that decoding
 * allocates nothing. Past its size it only notes that it overflowed: the
 * string is longer than any its caller wants (a user id of more than
 * kMaxUserIdLength bytes is refused anyway; an unknown key is skipped).
 */
class Sink {
public:
    Sink(char *buf, std::size_t size) : buf_(buf), size_(size) {}

    void push_back(char c)
    {
        auto u = static_cast<unsigned char>(c);

        if (u < 0x20 || u == 0x7f) {
            control_ = true;
        }

        if (len_ < size_) {
            buf_[len_++] = c;
        } else {
            full_ = true;
        }
    }

    void append(const char *p, std::size_t n)
    {
        if (n > size_ - len_) {
            n = size_ - len_;
            full_ = true;
        }
        std::memcpy(buf_ + len_, p, n);
        len_ += n;
    }

    void clear()
    {
        len_ = 0;
        full_ = false;
        control_ = false;
    }

    bool full() const { return full_; }

    /* A control character was unescaped into it (a raw one never gets
     * this far: see Reader::string and kPlain), so that the acceptable
     * checks need not look at every byte again. */
    bool             control() const { return control_; }
    std::string_view view() const { return std::string_view(buf_, len_); }

private:
    char       *buf_;
    std::size_t size_;
    std::size_t len_ = 0;
    bool        full_ = false;
    bool        control_ = false;
};


class Reader {
public:
    explicit Reader(std::string_view s)
        : p_(reinterpret_cast<const unsigned char *>(s.data())),
          end_(p_ + s.size())
    {}

    bool at_end() const { return p_ == end_; }

    int peek() const { return p_ < end_ ? *p_ : -1; }

    void skip_ws()
    {
        while (p_ < end_
               && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) {
            p_++;
        }
    }

    bool eat(unsigned char c)
    {
        if (p_ < end_ && *p_ == c) {
            p_++;
            return true;
        }
        return false;
    }

    /* A JSON string, unescaped into *out (appended) unless out is null. */
    bool string(Sink *out);

    /* An attribute name: a JSON string of [a-z0-9_] written without
     * escapes (a plain identifier never needs one); *out points into the
     * value read. */
    bool name(std::string_view *out);

    /* An attribute value, acceptable (attr_value_acceptable()): in place
     * when it holds no escape, the usual case, else unescaped into
     * *sink; *out points to one or the other. */
    bool attr_value(Sink *sink, std::string_view *out);

    /* Any JSON value found inside a container at depth `depth`. */
    bool value(int depth);

    /* A JSON number that is an integer and fits in int64. */
    bool integer(std::int64_t *out);

private:
    bool literal(const char *word);
    bool number(bool *integral);
    bool hex4(unsigned *cp);
    bool utf8(Sink *out);
    bool container(int depth, unsigned char close);

    const unsigned char *p_;
    const unsigned char *end_;
};


void put_utf8(unsigned cp, Sink *out)
{
    if (out == nullptr) {
        return;
    }

    if (cp < 0x80) {
        out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out->push_back(static_cast<char>(0xc0 | (cp >> 6)));
        out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    } else if (cp < 0x10000) {
        out->push_back(static_cast<char>(0xe0 | (cp >> 12)));
        out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
        out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    } else {
        out->push_back(static_cast<char>(0xf0 | (cp >> 18)));
        out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3f)));
        out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3f)));
        out->push_back(static_cast<char>(0x80 | (cp & 0x3f)));
    }
}


bool Reader::literal(const char *word)
{
    for (; *word; word++) {
        if (!eat(static_cast<unsigned char>(*word))) {
            return false;
        }
    }
    return true;
}


bool Reader::hex4(unsigned *cp)
{
    unsigned v = 0;

    for (int i = 0; i < 4; i++) {
        if (p_ == end_) {
            return false;
        }

        unsigned char c = *p_++;
        v <<= 4;

        if (c >= '0' && c <= '9') {
            v |= c - '0';
        } else if (c >= 'a' && c <= 'f') {
            v |= c - 'a' + 10;
        } else if (c >= 'A' && c <= 'F') {
            v |= c - 'A' + 10;
        } else {
            return false;
        }
    }

    *cp = v;
    return true;
}


/*
 * One raw multi-byte UTF-8 sequence starting at p_ (a byte >= 0x80).
 * Overlong forms, surrogates and code points past U+10FFFF are refused.
 */
bool Reader::utf8(Sink *out)
{
    const unsigned char *start = p_;
    unsigned char        c = *p_;
    unsigned char        lo = 0x80, hi = 0xbf;
    int                  n;

    if (c >= 0xc2 && c <= 0xdf) {
        n = 1;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 2;
        if (c == 0xe0) {
            lo = 0xa0;
        } else if (c == 0xed) {
            hi = 0x9f;
        }
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 3;
        if (c == 0xf0) {
            lo = 0x90;
        } else if (c == 0xf4) {
            hi = 0x8f;
        }
    } else {
        return false;
    }

    if (end_ - p_ <= n) {
        return false;
    }

    p_++;

    for (int i = 0; i < n; i++, p_++) {
        unsigned char b = *p_;

        if (i == 0 ? (b < lo || b > hi) : (b < 0x80 || b > 0xbf)) {
            return false;
        }
    }

    if (out) {
        out->append(reinterpret_cast<const char *>(start), n + 1);
    }

    return true;
}


bool Reader::string(Sink *out)
{
    if (!eat('"')) {
        return false;
    }

    for (;;) {
        /* a run of plain ASCII, the usual case: appended in one go */
        const unsigned char *run = p_;
        const unsigned char *p = p_;

        while (p < end_ && kPlain[*p]) {
            p++;
        }

        p_ = p;

        if (out && p_ > run) {
            out->append(reinterpret_cast<const char *>(run), p_ - run);
        }

        if (p_ == end_) {
            return false;
        }

        unsigned char c = *p_;

        if (c == '"') {
            p_++;
            return true;
        }

        if (c < 0x20) {
            /* JSON requires control characters to be escaped */
            return false;
        }

        if (c >= 0x80) {
            if (!utf8(out)) {
                return false;
            }
            continue;
        }

        p_++;

        if (c != '\\') {
            if (out) {
                out->push_back(static_cast<char>(c));
            }
            continue;
        }

        if (p_ == end_) {
            return false;
        }

        unsigned cp;

        switch (*p_++) {
        case '"':
            cp = '"';
            break;
        case '\\':
            cp = '\\';
            break;
        case '/':
            cp = '/';
            break;
        case 'b':
            cp = '\b';
            break;
        case 'f':
            cp = '\f';
            break;
        case 'n':
            cp = '\n';
            break;
        case 'r':
            cp = '\r';
            break;
        case 't':
            cp = '\t';
            break;

        case 'u':
            if (!hex4(&cp)) {
                return false;
            }

            if (cp >= 0xdc00 && cp <= 0xdfff) {
                return false; /* lone low surrogate */
            }

            if (cp >= 0xd800 && cp <= 0xdbff) {
                unsigned low;

                if (!eat('\\') || !eat('u') || !hex4(&low) || low < 0xdc00
                    || low > 0xdfff) {
                    return false; /* high surrogate without its pair */
                }

                cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
            }

            /* A NUL inside a string only ever means mischief here: it
             * would cut the id short in C code downstream. */
            if (cp == 0) {
                return false;
            }
            break;

        default:
            return false;
        }

        put_utf8(cp, out);
    }
}


bool Reader::name(std::string_view *out)
{
    if (!eat('"')) {
        return false;
    }

    const unsigned char *start = p_;
    const unsigned char *p = p_;

    while (p < end_ && kName.ok[*p]) {
        p++;
    }

    if (p == end_ || *p != '"') {
        return false;
    }

    *out = std::string_view(reinterpret_cast<const char *>(start), p - start);
    p_ = p + 1;
    return true;
}


bool Reader::attr_value(Sink *sink, std::string_view *out)
{
    const unsigned char *open = p_;

    if (!eat('"')) {
        return false;
    }

    const unsigned char *p = p_;

    while (p < end_ && kPlain[*p]) {
        p++;
    }

    if (p < end_ && *p == '"') {
        /* no escape, no control character (kPlain has none) */
        if (static_cast<std::size_t>(p - p_) > kMaxAttrValueLength) {
            return false;
        }
        *out = std::string_view(reinterpret_cast<const char *>(p_), p - p_);
        p_ = p + 1;
        return true;
    }

    p_ = open;

    if (!string(sink) || sink->full() || sink->control()) {
        return false;
    }

    *out = sink->view();
    return true;
}


/* The JSON number grammar; *integral tells whether it had neither a
 * fraction nor an exponent. Digits are not converted: any length is fine. */
bool Reader::number(bool *integral)
{
    *integral = true;

    eat('-');

    if (eat('0')) {
        /* no leading zeros: "01" is not JSON */
    } else if (p_ < end_ && *p_ >= '1' && *p_ <= '9') {
        while (p_ < end_ && *p_ >= '0' && *p_ <= '9') {
            p_++;
        }
    } else {
        return false;
    }

    if (eat('.')) {
        *integral = false;

        if (p_ == end_ || *p_ < '0' || *p_ > '9') {
            return false;
        }
        while (p_ < end_ && *p_ >= '0' && *p_ <= '9') {
            p_++;
        }
    }

    if (eat('e') || eat('E')) {
        *integral = false;

        if (!eat('+')) {
            eat('-');
        }
        if (p_ == end_ || *p_ < '0' || *p_ > '9') {
            return false;
        }
        while (p_ < end_ && *p_ >= '0' && *p_ <= '9') {
            p_++;
        }
    }

    return true;
}


bool Reader::integer(std::int64_t *out)
{
    const unsigned char *start = p_;
    bool                 integral;

    if (!number(&integral) || !integral) {
        return false;
    }

    /* a JSON integer: an optional '-' and digits, as parse_integer reads */
    return parse_integer(
        std::string_view(reinterpret_cast<const char *>(start), p_ - start),
        out);
}


/* The rest of an array or object after its opening bracket. */
bool Reader::container(int depth, unsigned char close)
{
    skip_ws();

    if (eat(close)) {
        return true;
    }

    for (;;) {
        if (close == '}') {
            if (!string(nullptr)) {
                return false;
            }
            skip_ws();
            if (!eat(':')) {
                return false;
            }
            skip_ws();
        }

        if (!value(depth)) {
            return false;
        }

        skip_ws();

        if (eat(close)) {
            return true;
        }

        if (!eat(',')) {
            return false;
        }

        skip_ws();
    }
}


bool Reader::value(int depth)
{
    bool integral;

    switch (peek()) {
    case '{':
    case '[':
        if (depth + 1 > kMaxDepth) {
            return false;
        }
        return container(depth + 1, *p_++ == '{' ? '}' : ']');

    case '"':
        return string(nullptr);

    case 't':
        return literal("true");

    case 'f':
        return literal("false");

    case 'n':
        return literal("null");

    default:
        return number(&integral);
    }
}


/*
 * The members of "attrs" after its '{'. Names, and values without
 * escapes, stay where they are in the value read; a value with escapes is
 * unescaped into its slot of kMaxAttrValueLength bytes in buf.
 */
bool read_attrs(Reader &r, SessionView *s, char *buf)
{
    r.skip_ws();

    if (r.eat('}')) {
        return true;
    }

    for (;;) {
        std::size_t i = s->nattrs;

        if (i == kMaxAttrs) {
            return false;
        }

        std::string_view name;

        /* attr_name_acceptable(), the scan having done the rest */
        if (!r.name(&name) || name.empty() || name.size() > kMaxAttrNameLength
            || (name[0] >= '0' && name[0] <= '9') || name == "user_id")
        {
            return false;
        }

        for (std::size_t j = 0; j < i; j++) {
            if (s->attrs[j].name == name) {
                return false; /* a duplicate */
            }
        }

        r.skip_ws();
        if (!r.eat(':')) {
            return false;
        }
        r.skip_ws();

        if (r.peek() == 'n') {
            /* null: as if it were not there */
            if (!r.value(2)) {
                return false;
            }

        } else {
            Sink sink(buf + i * kMaxAttrValueLength, kMaxAttrValueLength);
            std::string_view value;

            if (!r.attr_value(&sink, &value)) {
                return false;
            }

            s->attrs[i].name = name;
            s->attrs[i].value = value;
            s->nattrs++;
        }

        r.skip_ws();

        if (r.eat('}')) {
            return true;
        }

        if (!r.eat(',')) {
            return false;
        }

        r.skip_ws();
    }
}


Decoded decode(std::string_view value, std::int64_t now, SessionView *out,
               char *user_id, char *attrs)
{
    if (value == std::string_view(kNegativeMarker)) {
        return Decoded::Negative;
    }

    Reader      r(value);
    SessionView s;
    bool        have_user_id = false;
    bool        have_attrs = false;
    char        key_buf[16];
    Sink        key(key_buf, sizeof(key_buf));
    Sink        id(user_id, kMaxUserIdLength);

    r.skip_ws();

    if (!r.eat('{')) {
        return Decoded::Malformed;
    }

    r.skip_ws();

    if (!r.eat('}')) {
        for (;;) {
            key.clear();

            if (!r.string(&key)) {
                return Decoded::Malformed;
            }

            r.skip_ws();
            if (!r.eat(':')) {
                return Decoded::Malformed;
            }
            r.skip_ws();

            if (!key.full() && key.view() == "user_id") {
                if (have_user_id || !r.string(&id) || id.full()) {
                    return Decoded::Malformed;
                }
                have_user_id = true;

            } else if (!key.full() && key.view() == "expires_at") {
                if (s.has_expiry || !r.integer(&s.expires_at)) {
                    return Decoded::Malformed;
                }
                s.has_expiry = true;

            } else if (!key.full() && key.view() == "attrs") {
                if (have_attrs || !r.eat('{') || !read_attrs(r, &s, attrs)) {
                    return Decoded::Malformed;
                }
                have_attrs = true;

            } else if (!r.value(1)) {
                return Decoded::Malformed;
            }

            r.skip_ws();

            if (r.eat('}')) {
                break;
            }

            if (!r.eat(',')) {
                return Decoded::Malformed;
            }

            r.skip_ws();
        }
    }

    r.skip_ws();

    if (!r.at_end()) {
        return Decoded::Malformed; /* trailing garbage */
    }

    s.user_id = id.view();

    /* user_id_acceptable(), without reading the id again */
    if (!have_user_id || s.user_id.empty() || id.control()) {
        return Decoded::Malformed;
    }

    Decoded result = (s.has_expiry && s.expires_at <= now) ? Decoded::Expired
                                                           : Decoded::Valid;

    if (out) {
        /* the attributes in use only: the hit path copies no more */
        out->user_id = s.user_id;
        out->has_expiry = s.has_expiry;
        out->expires_at = s.expires_at;
        out->nattrs = s.nattrs;
        for (std::size_t i = 0; i < s.nattrs; i++) {
            out->attrs[i] = s.attrs[i];
        }
    }

    return result;
}

} // namespace


std::string_view negative_marker() noexcept
{
    return kNegativeMarker;
}


Decoded decode_session(std::string_view value, std::int64_t now,
                       SessionView *out, char *user_id, char *attrs) noexcept
{
    return decode(value, now, out, user_id, attrs);
}


Decoded decode_session(std::string_view value, std::int64_t now,
                       Session *out) noexcept
{
    char        user_id[kMaxUserIdLength];
    char        attrs[kAttrBufferSize];
    SessionView s;
    Decoded     d = decode(value, now, &s, user_id, attrs);

    if (out && (d == Decoded::Valid || d == Decoded::Expired)) {
        try {
            out->user_id.assign(s.user_id.data(), s.user_id.size());
            out->attrs.resize(s.nattrs);
            for (std::size_t i = 0; i < s.nattrs; i++) {
                out->attrs[i].name.assign(s.attrs[i].name);
                out->attrs[i].value.assign(s.attrs[i].value);
            }
        } catch (...) {
            /* only std::bad_alloc can get here; the caller treats
             * Malformed as a cache miss and asks Postgres, which is the
             * safe outcome */
            return Decoded::Malformed;
        }
        out->has_expiry = s.has_expiry;
        out->expires_at = s.expires_at;
    }

    return d;
}


namespace {

/* A JSON string: ", \\ and control characters escaped. */
void put_string(std::string &v, std::string_view str)
{
    static const char hex[] = "0123456789abcdef";

    v.push_back('"');

    for (char ch : str) {
        auto c = static_cast<unsigned char>(ch);

        if (c == '"' || c == '\\') {
            v.push_back('\\');
            v.push_back(ch);

        } else if (c < 0x20 || c == 0x7f) {
            v += "\\u00";
            v.push_back(hex[c >> 4]);
            v.push_back(hex[c & 0xf]);

        } else {
            v.push_back(ch);
        }
    }

    v.push_back('"');
}

} // namespace


bool encode_session(const Session &s, std::string *out) noexcept
{
    try {
        std::string v;
        std::size_t size = sizeof("{\"user_id\":\"\",\"expires_at\":,"
                                  "\"attrs\":{}}")
                           + 20 + s.user_id.size();

        for (const Attr &a : s.attrs) {
            size += a.name.size() + a.value.size() + 6;
        }

        v.reserve(size);

        v += "{\"user_id\":";
        put_string(v, s.user_id);

        if (s.has_expiry) {
            char buf[24];
            auto res = std::to_chars(buf, buf + sizeof(buf), s.expires_at);

            v += ",\"expires_at\":";
            v.append(buf, res.ptr);
        }

        if (!s.attrs.empty()) {
            v += ",\"attrs\":{";

            for (std::size_t i = 0; i < s.attrs.size(); i++) {
                if (i > 0) {
                    v.push_back(',');
                }
                put_string(v, s.attrs[i].name);
                v.push_back(':');
                put_string(v, s.attrs[i].value);
            }

            v.push_back('}');
        }

        v.push_back('}');

        *out = std::move(v);
        return true;

    } catch (...) {
        return false;
    }
}


std::int64_t cache_seconds(std::int64_t ttl, const Session &s,
                           std::int64_t now) noexcept
{
    if (!s.has_expiry) {
        return ttl;
    }

    std::int64_t left;

    if (__builtin_sub_overflow(s.expires_at, now, &left)) {
        /* only extreme values get here: the sign of the true difference
         * is that of expires_at */
        return s.expires_at > 0 ? ttl : 0;
    }

    return left < ttl ? left : ttl;
}

} // namespace session_cache
