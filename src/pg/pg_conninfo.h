/*
 * Postgres connection string parsing and masking (SPEC §2, §7). Pure logic
 * on top of libpq's PQconninfoParse, which does no I/O.
 */
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace session_cache {

struct PgConninfo {
    /* Every option the string set explicitly (non-empty value), in libpq's
     * canonical keyword names, e.g. {"host","db.example"},{"port","5432"}.
     * A postgresql:// URI is normalised into the same keywords. */
    std::vector<std::string> keywords;
    std::vector<std::string> values;

    /* A postgresql:// URI whose authority holds an '@' or a ':': a
     * mistyped password may then sit where the host or port is read
     * (postgresql://u:pw/x@h reads host "u", port "pw"), so messages name
     * those fields and never quote their values. */
    bool secret_authority = false;

    /* Value of keyword, or nullptr when not set. */
    const std::string *get(std::string_view keyword) const noexcept;
    /* Set or replace keyword. Returns false only on allocation failure
     * (nothing thrown: see STYLE, no exception crosses into nginx). */
    bool set(std::string_view keyword, std::string_view value) noexcept;
};

/*
 * Parse a libpq conninfo string ("host=... dbname=...") or a
 * postgresql:// / postgres:// URI. Returns "" on success, else a
 * description of the problem that never contains the password: libpq's
 * message with every double-quoted fragment replaced by "***".
 */
std::string parse_pg_conninfo(std::string_view conninfo, PgConninfo *out);

/*
 * What the module repeats of a message from libpq (PQerrorMessage,
 * PQresultErrorMessage, a notice): the peer's words, filtered once where
 * they enter, for the error log and the health document alike.
 *
 * - The first line only, control characters replaced by '?'.
 * - A double-quoted fragment is kept when it is a name the configuration
 *   itself holds (one of c's hosts, host addresses, port, user, dbname, a
 *   socket path under a host directory) or a piece of query (the session
 *   query: "relation \"x\" does not exist"); any other is "***". So libpq
 *   quoting an option's value, or a server quoting what it was sent,
 *   shows nothing new.
 * - What follows libpq's own "connection to server ... failed: " and the
 *   severity ("FATAL:  ") is the server's (or the system's) text: when it
 *   still holds the password (a server that was sent it in clear text and
 *   repeats it), that text is replaced by "(message withheld)".
 *
 * The password is never searched for in text that libpq writes from the
 * configuration, so a password such as "1" or "0" changes nothing in
 * "port 5432 failed: Connection refused".
 */
std::string pg_message(std::string_view msg, const PgConninfo &c,
                       std::string_view query);

/*
 * A display form for logs and the health document (an empty string only on
 * allocation failure):
 * "host=db.example port=5432 dbname=app user=nginx password=***", listing
 * only host, hostaddr, port, dbname, user (those set), then password=***
 * when a password is set. Never the password itself, nor other options
 * (they may carry secrets such as sslpassword).
 */
std::string mask_pg_conninfo(const PgConninfo &c);

/*
 * Split a comma-separated libpq host list ("a,b,/tmp") into its parts.
 * Empty parts are kept as "" (libpq treats them as the default host), so
 * the result is never empty except on allocation failure.
 */
std::vector<std::string> split_hosts(std::string_view hosts);

/* The parts again as one libpq list, comma-separated: split_hosts's
 * inverse. */
std::string join_hosts(const std::vector<std::string> &parts);

/*
 * The options the module reads itself (SPEC §11): target_session_attrs
 * (any, read-write, read-only, primary, standby, prefer-standby) and
 * sslmode (disable, allow, prefer, require, verify-ca, verify-full), which
 * libpq would only check when a worker connects. "" when they are
 * acceptable, else the problem; a value is quoted only when it is a short
 * lower-case word (never a piece of a mistyped password).
 */
std::string check_pg_options(const PgConninfo &c);

/* How many entries the host list has (1 without one). */
std::size_t host_count(const PgConninfo &c);

/*
 * Reorder the host list by a random permutation (Fisher-Yates; below(n)
 * gives a number in [0, n)), keeping host, hostaddr and a port list of
 * the same length aligned: entry i of each still names the same server.
 * false only on allocation failure, c then unchanged.
 */
bool shuffle_hosts(PgConninfo                                    *c,
                   const std::function<std::size_t(std::size_t)> &below);

/*
 * Keep only the entries from index from on of the host list (host,
 * hostaddr, a port list of the same length), for a new attempt that
 * skips hosts already tried. false when nothing would be left or on
 * allocation failure, c then unchanged.
 */
bool drop_hosts_before(PgConninfo *c, std::size_t from);

} // namespace session_cache
