#include "redis/resp.h"

#include <cstdio>
#include <cstring>

namespace session_cache {

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

/* The one encoder is resp_write, the hot path's: this sizes out for it. */
void resp_append(std::string *out, std::initializer_list<std::string_view> args)
{
    std::size_t at = out->size();

    out->resize(at + resp_length(args));
    resp_write(&(*out)[at], args);
}

} // namespace session_cache

namespace session_cache {

static bool same_name(std::string_view a, const char *b) noexcept
{
    std::size_t n = std::strlen(b);

    if (a.size() != n) {
        return false;
    }

    for (std::size_t i = 0; i < n; i++) {
        char c = a[i];
        if (c >= 'a' && c <= 'z') {
            c = static_cast<char>(c - 'a' + 'A');
        }
        if (c != b[i]) {
            return false;
        }
    }

    return true;
}

static const char *const kNames[] = {
    "GET",    "SET",      "PING", "INFO",      "DBSIZE",  "AUTH",
    "SELECT", "SENTINEL", "ROLE", "SUBSCRIBE", "CLUSTER", "ASKING",
};

static_assert(sizeof(kNames) / sizeof(kNames[0])
                  == static_cast<std::size_t>(RedisCmd::Other),
              "a name for each kind before Other");

RedisCmd resp_command_kind(std::string_view name) noexcept
{
    for (std::size_t i = 0; i < sizeof(kNames) / sizeof(kNames[0]); i++) {
        if (same_name(name, kNames[i])) {
            return static_cast<RedisCmd>(i);
        }
    }

    return RedisCmd::Other;
}

const char *resp_command_name(RedisCmd kind) noexcept
{
    auto i = static_cast<std::size_t>(kind);

    return i < sizeof(kNames) / sizeof(kNames[0]) ? kNames[i] : "command";
}

/* "<mark><digits>\r\n" at s[*pos]; false when it is not there whole. */
static bool read_number(std::string_view s, std::size_t *pos, char mark,
                        std::size_t *n) noexcept
{
    std::size_t i = *pos;

    if (i >= s.size() || s[i] != mark) {
        return false;
    }

    std::size_t v = 0, start = ++i;

    while (i < s.size() && s[i] >= '0' && s[i] <= '9' && i - start < 18) {
        v = v * 10 + static_cast<std::size_t>(s[i] - '0');
        i++;
    }

    if (i == start || i + 1 >= s.size() || s[i] != '\r' || s[i + 1] != '\n') {
        return false;
    }

    *pos = i + 2;
    *n = v;
    return true;
}

RedisCmd resp_first_command(std::string_view resp, std::size_t *size) noexcept
{
    std::size_t pos = 0, args, len;
    RedisCmd    kind = RedisCmd::Other;

    *size = 0;

    if (!read_number(resp, &pos, '*', &args) || args == 0) {
        return kind;
    }

    for (std::size_t i = 0; i < args; i++) {
        if (!read_number(resp, &pos, '$', &len) || resp.size() - pos < len + 2)
        {
            return RedisCmd::Other;
        }
        if (i == 0) {
            kind = resp_command_kind(resp.substr(pos, len));
        }
        pos += len + 2;
    }

    *size = pos;
    return kind;
}

std::string_view redis_error_code(std::string_view t) noexcept
{
    /* plain words after ERR: enough to say what went wrong, and Redis
     * puts anything it quotes in quotes ('...' or `...`) */
    static constexpr std::size_t kMaxWords = 8;
    static constexpr std::size_t kMaxLength = 64;

    std::size_t i = 0;

    while (i < t.size()
           && ((t[i] >= 'A' && t[i] <= 'Z')
               || (i > 0 && ((t[i] >= '0' && t[i] <= '9') || t[i] == '_'))))
    {
        i++;
    }

    if (i == 0 || i > 32 || (i < t.size() && t[i] != ' ')) {
        return "error";
    }

    /* Redis Cluster's redirections: "MOVED 3999 127.0.0.1:6381", a slot
     * and an address, nothing the client sent */
    if ((t.substr(0, i) == "MOVED" || t.substr(0, i) == "ASK")
        && t.size() <= 64) {
        std::size_t j = i;

        while (j < t.size()
               && ((t[j] >= '0' && t[j] <= '9') || (t[j] >= 'a' && t[j] <= 'z')
                   || (t[j] >= 'A' && t[j] <= 'Z') || t[j] == ' ' || t[j] == '.'
                   || t[j] == ':' || t[j] == '-' || t[j] == '_' || t[j] == '['
                   || t[j] == ']'))
        {
            j++;
        }

        return t.substr(0, j == t.size() ? j : i);
    }

    if (t.substr(0, i) != "ERR") {
        return t.substr(0, i);
    }

    std::size_t end = i;

    for (std::size_t words = 0; words < kMaxWords; words++) {
        if (end >= t.size() || t[end] != ' ') {
            break;
        }

        std::size_t j = end + 1;

        while (
            j < t.size()
            && ((t[j] >= 'a' && t[j] <= 'z') || (t[j] >= 'A' && t[j] <= 'Z')))
        {
            j++;
        }

        if (j == end + 1 || (j < t.size() && t[j] != ' ') || j > kMaxLength) {
            break;
        }

        end = j;
    }

    return t.substr(0, end);
}

/*
 * The reader whose redisReaderGetReply() is running: hiredis's object
 * functions get no pointer to it in every version. A worker is one
 * thread, and the call does not nest.
 */
static ReplyReader *reading;

redisReplyObjectFunctions ReplyReader::functions_ = {
    ReplyReader::create_string,  ReplyReader::create_array,
    ReplyReader::create_integer, ReplyReader::create_nil,
    ReplyReader::free_object,
};

static const char *type_name(int type)
{
    switch (type) {
    case REDIS_REPLY_STRING:
        return "a bulk string";
    case REDIS_REPLY_ARRAY:
        return "an array";
    case REDIS_REPLY_INTEGER:
        return "an integer";
    case REDIS_REPLY_NIL:
        return "nil";
    case REDIS_REPLY_STATUS:
        return "a status";
    default:
        return "an error";
    }
}

static int type_of(char c)
{
    switch (c) {
    case '$':
        return REDIS_REPLY_STRING;
    case '*':
        return REDIS_REPLY_ARRAY;
    case ':':
        return REDIS_REPLY_INTEGER;
    case '+':
        return REDIS_REPLY_STATUS;
    case '-':
        return REDIS_REPLY_ERROR;
    default:
        return -1;
    }
}

/* The bytes of a bulk string reply of n bytes: "$<n>\r\n<n bytes>\r\n". */
static constexpr std::size_t bulk_size(std::size_t n)
{
    std::size_t digits = 1;

    for (std::size_t v = n; v >= 10; v /= 10) {
        digits++;
    }

    return 1 + digits + 2 + n + 2;
}

/* The bytes one reply to kind may take: a bulk string of at most
 * kMaxValue (GET) or kMaxInfo bytes, or a line of kMaxLine. */
static std::size_t max_bytes(RedisCmd kind)
{
    switch (kind) {
    case RedisCmd::Get:
    case RedisCmd::Role: /* a master lists its replicas */
        return bulk_size(ReplyReader::kMaxValue);
    case RedisCmd::Info:
    case RedisCmd::Other:
        return bulk_size(ReplyReader::kMaxInfo);
    case RedisCmd::ClusterSlots:
        return ReplyReader::kMaxSlotsBytes;
    default:
        return ReplyReader::kMaxLine;
    }
}

ReplyReader::~ReplyReader()
{
    if (reader_ != nullptr) {
        redisReaderFree(reader_);
    }
}

bool ReplyReader::init() noexcept
{
    try {
        /* a session value fits without growing it */
        value_.reserve(256);
    } catch (...) {
        return false;
    }

    reader_ = redisReaderCreateWithFunctions(&functions_);
    return reader_ != nullptr;
}

bool ReplyReader::feed(const char *data, std::size_t len) noexcept
{
    return refused_ == nullptr
           && redisReaderFeed(reader_, data, len) == REDIS_OK;
}

std::size_t ReplyReader::buffered() const noexcept
{
    return reader_->len - reader_->pos;
}

/* Is a reply (top: the reply itself, else an element) of this type what
 * the command in progress expects? */
bool ReplyReader::accept(int type, bool top)
{
    if (!top || type == REDIS_REPLY_ERROR) {
        return true;
    }

    switch (kind_) {
    case RedisCmd::Get:
        return type == REDIS_REPLY_STRING || type == REDIS_REPLY_NIL;
    case RedisCmd::Info:
        return type == REDIS_REPLY_STRING;
    case RedisCmd::DbSize:
        return type == REDIS_REPLY_INTEGER;
    case RedisCmd::Set:
    case RedisCmd::Ping:
    case RedisCmd::Auth:
    case RedisCmd::Select:
    case RedisCmd::Asking:
        return type == REDIS_REPLY_STATUS;
    case RedisCmd::Sentinel:
        return type == REDIS_REPLY_ARRAY || type == REDIS_REPLY_NIL;
    case RedisCmd::ClusterSlots:
    case RedisCmd::Role:
    case RedisCmd::Subscribe:
        return type == REDIS_REPLY_ARRAY;
    case RedisCmd::Other:
        return true;
    }

    return false;
}

ReplyReader::Next ReplyReader::refuse(const char *what, const char **error)
{
    std::snprintf(error_, sizeof(error_), "%s %s", what,
                  resp_command_name(kind_));
    refused_ = error_;
    *error = refused_;
    return Next::Refused;
}

/*
 * A bulk string in progress (the reply's first byte was '$'): is the
 * length it announces more than kind may take? hiredis leaves the length
 * line in its buffer until the whole string is there.
 */
bool ReplyReader::bulk_too_large() const
{
    const char *p = reader_->buf + reader_->pos + (in_reply_ == 0 ? 1 : 0);
    const char *end = reader_->buf + reader_->len;
    std::size_t len = 0, digits = 0;

    if (p < end && *p == '-') {
        return false; /* nil */
    }

    for (; p < end && *p >= '0' && *p <= '9' && digits < 19; p++, digits++) {
        len = len * 10 + static_cast<std::size_t>(*p - '0');
    }

    if (p == end || *p != '\r' || digits == 0) {
        return false; /* not all there yet, or hiredis will refuse it */
    }

    return 1 + digits + 2 + len + 2 > max_bytes(kind_);
}

ReplyReader::Next ReplyReader::next(RedisCmd kind, RedisReply *reply,
                                    const char **error) noexcept
{
    if (refused_ != nullptr) {
        *error = refused_;
        return Next::Refused;
    }

    kind_ = kind;

    if (boundary_) {
        if (buffered() == 0) {
            return Next::More;
        }

        /* a large copy (INFO) is not kept for the next reply */
        if (value_.capacity() > 16 * 1024) {
            std::string().swap(value_);
        }

        /* the first byte of a reply: its type */
        first_ = reader_->buf[reader_->pos];
        int type = type_of(first_);

        if (type < 0) {
            return refuse("protocol error: not a reply to", error);
        }

        if (!accept(type, true)) {
            std::snprintf(error_, sizeof(error_), "unexpected reply: %s to %s",
                          type_name(type), resp_command_name(kind));
            refused_ = error_;
            *error = refused_;
            return Next::Refused;
        }

        boundary_ = false;
        in_reply_ = 0;
        elements_ = 0;
        reply_ = RedisReply{};
        reply_.type = -1;
        ranges_.clear();
        value_.clear();
        for (std::size_t i = 0; i < RedisReply::kParts; i++) {
            part_len_[i] = 0;
            part_at_[i] = 0;
        }
    }

    /* a bulk string that would be too long is refused once its length
     * is read, before its bytes are buffered */
    if (first_ == '$' && bulk_too_large()) {
        return refuse("reply too large for", error);
    }

    void       *obj = nullptr;
    std::size_t before = buffered();

    reading = this;
    int rc = redisReaderGetReply(reader_, &obj);
    reading = nullptr;

    if (refused_ != nullptr) {
        *error = refused_;
        return Next::Refused;
    }

    if (rc != REDIS_OK) {
        return refuse("protocol error in the reply to", error);
    }

    /* the reply's size so far: what hiredis took out of its buffer (its
     * sdsrange() moves pos and len together), and what it holds back */
    in_reply_ += before - buffered();

    if (obj == nullptr) {
        if (in_reply_ + buffered() > max_bytes(kind)) {
            return refuse("reply too large for", error);
        }
        return Next::More;
    }

    /* the same bound on a reply that came whole, however it was split */
    if (in_reply_ > max_bytes(kind)) {
        return refuse("reply too large for", error);
    }

    boundary_ = true;

    if (kind == RedisCmd::ClusterSlots && reply_.type == REDIS_REPLY_ARRAY) {
        reply_.ranges = ranges_.data();
        reply_.nranges = ranges_.size();
    }

    *reply = reply_;

    if (reply->type == REDIS_REPLY_ARRAY) {
        for (std::size_t i = 0; i < RedisReply::kParts; i++) {
            reply->part[i] =
                std::string_view(value_.data() + part_at_[i], part_len_[i]);
        }
    }

    return Next::Reply;
}

void *ReplyReader::create_string(const redisReadTask *task, char *str,
                                 std::size_t len)
{
    ReplyReader *self = reading;
    bool         top = task->parent == nullptr;

    if (!self->accept(task->type, top)) {
        std::snprintf(self->error_, sizeof(self->error_),
                      "unexpected reply: %s to %s", type_name(task->type),
                      resp_command_name(self->kind_));
        self->refused_ = self->error_;
        return nullptr;
    }

    if (!top) {
        self->slots_element(task, str, len, 0);
        if (self->refused_) {
            return nullptr;
        }

        /* an element of the reply itself: kept for the kinds that read
         * their replies' parts */
        bool parts = self->kind_ == RedisCmd::Sentinel
                     || self->kind_ == RedisCmd::Role
                     || self->kind_ == RedisCmd::Subscribe;

        if (parts && task->parent->parent == nullptr && task->idx >= 0
            && static_cast<std::size_t>(task->idx) < RedisReply::kParts
            && task->type != REDIS_REPLY_ERROR)
        {
            try {
                self->part_at_[task->idx] = self->value_.size();
                self->part_len_[task->idx] = len;
                self->value_.append(str, len);
            } catch (...) {
                self->refused_ = "out of memory";
                return nullptr;
            }
        }

        return &self->reply_;
    }

    std::string_view text(str, len);

    if (task->type == REDIS_REPLY_ERROR) {
        /* the peer's words stop at the error code: see redis_error_code */
        text = redis_error_code(text);

    } else if (self->kind_ == RedisCmd::Set && text != "OK") {
        std::snprintf(self->error_, sizeof(self->error_),
                      "unexpected reply: a status other than OK to SET");
        self->refused_ = self->error_;
        return nullptr;
    }

    try {
        self->value_.assign(text.data(), text.size());
    } catch (...) {
        self->refused_ = "out of memory";
        return nullptr;
    }

    self->reply_.type = task->type;
    self->reply_.str = self->value_.data();
    self->reply_.len = self->value_.size();
    return &self->reply_;
}

void *ReplyReader::create_array(const redisReadTask *task, int elements)
{
    ReplyReader *self = reading;
    bool         top = task->parent == nullptr;

    if (!self->accept(REDIS_REPLY_ARRAY, top)) {
        std::snprintf(self->error_, sizeof(self->error_),
                      "unexpected reply: an array to %s",
                      resp_command_name(self->kind_));
        self->refused_ = self->error_;
        return nullptr;
    }

    self->elements_ += static_cast<std::size_t>(elements < 0 ? 0 : elements);

    std::size_t max = self->kind_ == RedisCmd::ClusterSlots ? kMaxSlotsElements
                                                            : kMaxElements;

    if (self->elements_ > max) {
        std::snprintf(self->error_, sizeof(self->error_),
                      "reply with too many elements to %s",
                      resp_command_name(self->kind_));
        self->refused_ = self->error_;
        return nullptr;
    }

    if (top) {
        self->reply_.type = REDIS_REPLY_ARRAY;
        self->reply_.elements = static_cast<std::size_t>(elements);

    } else {
        self->slots_element(task, nullptr, 0, 0);
        if (self->refused_) {
            return nullptr;
        }
    }

    return &self->reply_;
}

void *ReplyReader::create_integer(const redisReadTask *task, long long value)
{
    ReplyReader *self = reading;
    bool         top = task->parent == nullptr;

    if (!self->accept(REDIS_REPLY_INTEGER, top)) {
        std::snprintf(self->error_, sizeof(self->error_),
                      "unexpected reply: an integer to %s",
                      resp_command_name(self->kind_));
        self->refused_ = self->error_;
        return nullptr;
    }

    if (top) {
        self->reply_.type = REDIS_REPLY_INTEGER;
        self->reply_.integer = value;

    } else {
        self->slots_element(task, nullptr, 0, value);
        if (self->refused_) {
            return nullptr;
        }
    }

    return &self->reply_;
}

void *ReplyReader::create_nil(const redisReadTask *task)
{
    ReplyReader *self = reading;
    bool         top = task->parent == nullptr;

    if (!self->accept(REDIS_REPLY_NIL, top)) {
        std::snprintf(self->error_, sizeof(self->error_),
                      "unexpected reply: nil to %s",
                      resp_command_name(self->kind_));
        self->refused_ = self->error_;
        return nullptr;
    }

    if (top) {
        self->reply_.type = REDIS_REPLY_NIL;
    }

    return &self->reply_;
}

/*
 * An element inside a CLUSTER SLOTS reply (other kinds keep none):
 *   depth 1  a range: [start, end, master, replica...]
 *   depth 2  start (idx 0), end (idx 1), nodes (idx 2 is the master)
 *   depth 3  in the master: host (idx 0), port (idx 1), id, metadata
 * Deeper elements (a node's metadata) are skipped.
 */
void ReplyReader::slots_element(const redisReadTask *task, const char *str,
                                std::size_t len, long long integer)
{
    if (kind_ != RedisCmd::ClusterSlots) {
        return;
    }

    int depth = 0;
    for (const redisReadTask *t = task->parent; t != nullptr; t = t->parent) {
        depth++;
    }

    try {
        if (depth == 1) {
            if (task->type != REDIS_REPLY_ARRAY || ranges_.size() >= 16384) {
                refused_ = "malformed CLUSTER SLOTS reply";
                return;
            }
            ranges_.emplace_back();
            return;
        }

        if (ranges_.empty()) {
            return;
        }

        ClusterSlotRange &r = ranges_.back();

        if (depth == 2 && task->type == REDIS_REPLY_INTEGER) {
            if (task->idx == 0) {
                r.start = integer;
            } else if (task->idx == 1) {
                r.end = integer;
            }

        } else if (depth == 3 && task->parent->idx == 2) {
            if (task->idx == 0 && task->type == REDIS_REPLY_STRING) {
                r.host.assign(str, len > 255 ? 255 : len);
            } else if (task->idx == 1 && task->type == REDIS_REPLY_INTEGER) {
                r.port = integer;
            }
        }

    } catch (...) {
        refused_ = "out of memory";
    }
}

/* the objects are parts of the ReplyReader itself */
void ReplyReader::free_object(void *)
{}

} // namespace session_cache
