/*
 * RESP, the wire format, both ways. Pure logic (no nginx types).
 *
 * Out: commands, an array of bulk strings.
 * In: replies, parsed by hiredis's redisReader behind a gate that knows
 * which command each reply answers (Redis answers in order) and refuses
 * any other shape at its first byte, before hiredis has built anything
 * for it; the reader's objects are not allocated either (see
 * ReplyReader).
 */
#pragma once

#include <cstddef>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include <hiredis/read.h>

namespace session_cache {

/* Append one command, e.g. {"GET", key}, to out. */
void resp_append(std::string                            *out,
                 std::initializer_list<std::string_view> args);

/* The same command written to p, which has room for resp_length(args)
 * bytes; returns the end. */
std::size_t resp_length(std::initializer_list<std::string_view> args);
char       *resp_write(char *p, std::initializer_list<std::string_view> args);

/*
 * The commands the module sends, each with the one reply shape it expects
 * (an error is always possible):
 *   Get     a bulk string or nil
 *   Set     the status OK
 *   Ping    a status (PONG)
 *   Info    a bulk string
 *   DbSize  an integer
 *   Auth, Select (the handshake)  a status
 *   Sentinel  SENTINEL get-master-addr-by-name: an array (ip, port) or nil
 *   Role      ROLE: an array (its first element "master", "slave", ...)
 *   Subscribe SUBSCRIBE and what a subscribed connection receives: arrays
 *   ClusterSlots  CLUSTER SLOTS' array of slot ranges (the only CLUSTER
 *                 command the module sends)
 *   Asking  the status OK
 *   Other   anything, within the element and byte bounds
 * Sentinel, Role and Subscribe replies carry their first elements (see
 * RedisReply::part).
 */
enum class RedisCmd : unsigned char {
    Get,
    Set,
    Ping,
    Info,
    DbSize,
    Auth,
    Select,
    Sentinel,
    Role,
    Subscribe,
    ClusterSlots,
    Asking,
    Other /* the last */
};

/* The kind of a command by its name (any case): "get" -> Get. */
RedisCmd resp_command_kind(std::string_view name) noexcept;

/* The kind of the first command in resp (commands in RESP); *size: its
 * length in bytes, 0 when resp does not start with a whole command. */
RedisCmd resp_first_command(std::string_view resp, std::size_t *size) noexcept;

/* "GET", "SET", ...: for messages. */
const char *resp_command_name(RedisCmd kind) noexcept;

/*
 * The part of a Redis error reply that may be repeated in a log line or
 * the health document: its code ("WRONGPASS", "NOAUTH", ...), and for the
 * generic code ERR the plain words after it ("ERR unknown command"), never
 * what follows them: Redis quotes the command's arguments there ("with
 * args beginning with: 'default' 'the-password'"), and the arguments hold
 * passwords, keys and tokens. Not an error code: "error".
 */
std::string_view redis_error_code(std::string_view text) noexcept;

/* One range of a CLUSTER SLOTS reply: its slots and their master (the
 * first node listed; replicas are not read). */
struct ClusterSlotRange {
    long long   start = -1;
    long long   end = -1;
    std::string host; /* as Redis gives it: an IP, a name, or empty */
    long long   port = -1;
};

/*
 * One reply, as the module sees it; valid during the call it is passed
 * to only. Field names follow hiredis's redisReply.
 */
struct RedisReply {
    int         type;    /* REDIS_REPLY_* */
    long long   integer; /* INTEGER */
    const char *str;     /* STRING, STATUS; ERROR: redis_error_code() */
    std::size_t len;
    std::size_t elements; /* ARRAY (Other only): its length */

    /* ClusterSlots: the ranges read */
    const ClusterSlotRange *ranges;
    std::size_t             nranges;

    /* Sentinel, Role, Subscribe: the first kParts elements of an array
     * reply that are strings (bulk or status), empty otherwise */
    static constexpr std::size_t kParts = 3;
    std::string_view             part[kParts];
};

/*
 * Replies read from one connection. feed() the bytes as they come, then
 * call next() with the kind of the command the next reply answers until
 * it says More. Refused: the connection is unusable (a reply to throw
 * away could not be told from the next one); error names why, in the
 * module's words, never the peer's.
 *
 * Bounds, whatever a server sends: one reply's bytes (GET 64 KiB, INFO
 * 1 MiB, framing aside; a status, error or integer 4 KiB), refused as soon
 * as they are exceeded or announced, and 1024 elements in all per reply
 * (Other; every other kind refuses an array at its first byte; a CLUSTER
 * SLOTS reply: kMaxSlotsBytes, kMaxSlotsElements and 16384 ranges).
 * Whether a
 * reply is refused does not depend on how its bytes were split into
 * reads. Memory:
 * hiredis's input buffer and one reused copy of the current reply's
 * string; nothing is allocated per reply once they have grown.
 */
class ReplyReader {
public:
    enum class Next { Reply, More, Refused };

    ReplyReader() = default;
    ReplyReader(const ReplyReader &) = delete;
    ReplyReader &operator=(const ReplyReader &) = delete;
    ~ReplyReader();

    bool init() noexcept; /* false: out of memory */

    bool feed(const char *data, std::size_t len) noexcept;

    Next next(RedisCmd kind, RedisReply *reply, const char **error) noexcept;

    /* bytes received and not yet taken out as replies */
    std::size_t buffered() const noexcept;

    static constexpr std::size_t kMaxElements = 1024;
    static constexpr std::size_t kMaxValue = 64 * 1024;
    static constexpr std::size_t kMaxInfo = 1024 * 1024;
    static constexpr std::size_t kMaxLine = 4096;
    static constexpr std::size_t kMaxSlotsBytes = 8 * 1024 * 1024;
    static constexpr std::size_t kMaxSlotsElements = 16384 * 16;

private:
    static void *create_string(const redisReadTask *task, char *str,
                               std::size_t len);
    static void *create_array(const redisReadTask *task, int elements);
    static void *create_integer(const redisReadTask *task, long long value);
    static void *create_nil(const redisReadTask *task);
    static void  free_object(void *obj);
    static redisReplyObjectFunctions functions_;

    bool accept(int type, bool top);
    void slots_element(const redisReadTask *task, const char *str,
                       std::size_t len, long long integer);
    bool bulk_too_large() const;
    Next refuse(const char *what, const char **error);

    redisReader *reader_ = nullptr;
    RedisCmd     kind_ = RedisCmd::Other;
    RedisReply   reply_{};
    bool         boundary_ = true; /* the next byte starts a reply */
    char         first_ = 0;       /* the current reply's first byte */
    std::size_t  in_reply_ = 0;    /* its bytes hiredis has taken so far */
    std::size_t  elements_ = 0;    /* announced in the current reply */
    std::string  value_;           /* the current reply's string */
    std::vector<ClusterSlotRange> ranges_;    /* ClusterSlots */
    std::size_t part_at_[RedisReply::kParts]; /* its parts, in value_ */
    std::size_t part_len_[RedisReply::kParts];
    const char *refused_ = nullptr;
    char        error_[96];
};

} // namespace session_cache
