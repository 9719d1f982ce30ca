# Hostile input at the edge: tokens that carry SQL, RESP framing, NUL
# bytes and percent-encoding, oversized and repeated cookies, and malformed
# headers. Each gets a defined answer (401, or 400 from nginx's own HTTP
# parser), and none alters Redis or Postgres:
#   - Redis: DBSIZE and a sentinel key unchanged, and INFO commandstats
#     shows nothing but GET (negative entries are off here, so a lookup
#     never writes; the last block turns them on and checks the one write);
#   - Postgres: the table is unchanged, and every statement the nginx role
#     ran (log_statement=all) is the session query itself, the token only
#     ever a bound parameter.
# Malformed HTTP goes through raw sockets (IO::Socket::INET).

use v5.36;
use Test::More;
use IO::Socket::INET;
use IO::Select;
use Time::HiRes qw(time);
use SessionCache::Test;

my $redis = start_redis();
my $pg    = start_postgres();

my $QUERY = 'SELECT user_id, extract(epoch FROM expires_at)::bigint '
          . 'FROM platform.user_sessions WHERE token = $1 '
          . 'AND revoked_at IS NULL AND expires_at > now()';
my $H = session_headers();

# A second server with header buffers large enough for a 64 KiB cookie, so
# the module (not nginx's parser) sees it.
my $big_port = free_port();

my $nginx = start_nginx(http => protected_site(
    redis    => $redis->url . ' pool=2 connect_timeout=300ms timeout=500ms',
    postgres => '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=2s',
    http     => <<~"NGX"));
        session_cache_negative_ttl 0;
        server {
            listen 127.0.0.1:$big_port;
            large_client_header_buffers 4 128k;
            location / {
                root %%HTML%%;
                auth_session \$cookie_session;
                $H
            }
        }
        NGX

# A valid session and a sentinel key: both must survive everything below.
$pg->add_session('tok-valid-7c1e', 'user-valid', 3600);
$pg->add_session('tok-other-7c1e', 'user-other', 3600);
is(get('/', cookie => 'session=tok-valid-7c1e')->{status}, 200,
   'a valid session first: 200');
ok(defined $redis->wait_for_key('session:tok-valid-7c1e', 2),
   'and it is cached');
$redis->cli('SET', 'sentinel', 'still-here');

sub status_of ($r) { $r->{headers}{'x-session-status'} // '' }

sub table_state () {
    return $pg->psql('SELECT count(*), md5(string_agg(token || user_id || '
                   . 'expires_at::text || coalesce(revoked_at::text, \'\'), '
                   . '\',\' ORDER BY token)) FROM platform.user_sessions');
}

# Statements the nginx role ran, each with its DETAIL lines.
sub nginx_statements () {
    return grep { /^\S+ \S+ \S+ \[\d+\] nginx@\S* LOG:\s+(?:execute|statement)/ }
           $pg->_log_entries;
}

my $redis_keys  = $redis->cli('DBSIZE');
my $redis_stats = $redis->commandstats;
my $table       = table_state();
my $statements  = () = nginx_statements();

# ----------------------------------------------------------- raw HTTP

# Send $bytes as they are; the status of the answer (0 if none came
# within 10 s) and the raw answer.
sub raw ($bytes, $port = $nginx->port) {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => 5)
        or die "connect: $!";
    $s->autoflush(1);
    my $off = 0;
    while ($off < length $bytes) {
        my $n = syswrite $s, $bytes, length($bytes) - $off, $off;
        last unless defined $n;    # nginx may answer and close early
        $off += $n;
    }
    my ($buf, $deadline) = ('', time + 10);
    my $sel = IO::Select->new($s);
    while (time < $deadline && $sel->can_read($deadline - time)) {
        my $n = sysread $s, my $chunk, 65536;
        last unless $n;
        $buf .= $chunk;
    }
    close $s;
    my ($status) = $buf =~ m{^HTTP/1\.[01] (\d{3})};
    my ($session) = $buf =~ m{\r\nX-Session-Status: ([^\r\n]*)}i;
    return ($status // 0, $session // '', $buf);
}

sub req ($cookie_line, %o) {
    return "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
         . $cookie_line . "\r\n";
}

# ------------------------------------------------------------ the inputs

my @tried;    # [input, answer] for the summary at the end

# Through the normal client: cookies HTTP allows.
my @cookies = (
    ["SQL with spaces",            "session=' OR 1=1 --"],
    ["SQL without spaces",         "session='OR'1'='1'--"],
    ["SQL: a quote alone",         "session='"],
    ["SQL: two quotes",            "session=''"],
    ["SQL: a double quote",        'session="'],
    ["SQL: backslash-quote",       "session=\\'"],
    ["SQL: stacked statement",     "session=x';DROP TABLE platform.user_sessions;--"],
    ["SQL: comment and union",     "session=x'/**/UNION/**/SELECT/**/'u',1--"],
    ["SQL: dollar quoting",        'session=$$x$$'],
    ["SQL: a parameter marker",    'session=$1'],
    ["SQL, percent-encoded",       "session=%27%20OR%201%3D1%20--"],
    ["RESP framing, percent-encoded",
        'session=%0D%0A*1%0D%0A%248%0D%0AFLUSHALL%0D%0A'],
    ["RESP framing without CR LF", 'session=*1$8FLUSHALL'],
    ["RESP: an inline command",    'session=x%0D%0AFLUSHALL%0D%0A'],
    ["NUL, percent-encoded",       'session=tok-valid-7c1e%00'],
    ["a valid token, percent-encoded",
        'session=tok%2Dvalid%2D7c1e'],
    ["a valid token, quoted",      'session="tok-valid-7c1e"'],
    ["format directives",          'session=%n%n%s%s%x'],
    ["a glob pattern",             'session=*'],
    ["a key with the prefix",      'session=session:tok-valid-7c1e'],
    ["513 bytes",                  'session=' . ('a' x 513)],
    ["512 bytes",                  'session=' . ('b' x 512)],
    ["UTF-8 bytes",                "session=caf\xc3\xa9"],
    ["tab inside",                 "session=a\tb"],
    ["100 cookies with the same name",
        join('; ', map { "session=dup$_'--" } 1 .. 100)],
);

for my $c (@cookies) {
    my ($name, $cookie) = @$c;
    my $r = get('/', cookie => $cookie);
    is($r->{status}, 401, "$name: 401");
    push @tried, [$name, "$r->{status} " . status_of($r)];
}

# A first valid cookie among 99 hostile ones: the first one counts.
{
    my $cookie = join '; ', 'session=tok-valid-7c1e',
                            map { "session=x$_%0D%0AFLUSHALL" } 1 .. 99;
    my $r = get('/', cookie => $cookie);
    is($r->{status}, 200, '100 cookies, the first valid: 200 (the first counts)');
    is($r->{headers}{'x-session-user'}, 'user-valid', 'and the user is the first cookie\'s');
    push @tried, ['100 cookies, the first one valid', "$r->{status} " . status_of($r)];
}

# 100 Cookie header lines.
{
    my $lines = join '', map { "Cookie: session=line$_'--\r\n" } 1 .. 100;
    my ($st, $ss) = raw(req($lines));
    is($st, 401, '100 Cookie header lines: 401');
    push @tried, ['100 Cookie header lines', "$st $ss"];
}

# Raw bytes HTTP does not allow in a header.
my @malformed = (
    ["a bare CR in the cookie",       "Cookie: session=x\rFLUSHALL\r\n"],
    ["a raw NUL in the cookie",       "Cookie: session=tok-valid-7c1e\0x\r\n"],
    ["obs-fold: the cookie split across lines",
        "Cookie: session=tok-valid-7c1e;\r\n other=1\r\n"],
    ["obs-fold with a tab",
        "Cookie: session=\r\n\ttok-valid-7c1e\r\n"],
);

for my $m (@malformed) {
    my ($name, $line) = @$m;
    my ($st, $ss) = raw(req($line));
    is($st, 400, "$name: 400 from nginx's parser");
    push @tried, [$name, $st];
}

# CR LF (or a bare LF, which nginx also takes as a line end) inside the
# cookie ends the header: the token is "x", and nginx skips "*1", "$8" and
# "FLUSHALL" as header lines it does not accept (ignore_invalid_headers).
for my $eol ("\r\n", "\n") {
    my $name = $eol eq "\n" ? 'RESP framing, raw bare LF in the cookie'
                             : 'RESP framing, raw CR LF in the cookie';
    my ($st, $ss) = raw(req("Cookie: session=x${eol}*1${eol}\$8${eol}FLUSHALL\r\n"));
    is($st, 401, "$name: 401 (the token is what precedes the line end)");
    push @tried, [$name, "$st $ss"];
}

# 64 KiB of cookie: nginx's default header buffers (4 8k) refuse it; with
# large_client_header_buffers 4 128k the module sees it and rejects the
# 64 KiB token.
{
    my $cookie = 'Cookie: session=' . ('A' x 65536) . "\r\n";
    my ($st, $ss) = raw(req($cookie));
    ok($st == 400 || $st == 494, "64 KiB cookie, default buffers: $st (400/494)");
    push @tried, ['64 KiB cookie header, default buffers', $st];

    ($st, $ss) = raw(req($cookie), $big_port);
    is($st, 401, '64 KiB cookie, 128k buffers: 401');
    is($ss, 'REJECTED', '64 KiB cookie, 128k buffers: REJECTED before any I/O');
    push @tried, ['64 KiB cookie header, 128k buffers', "$st $ss"];

    my $many = 'Cookie: ' . join('; ', map { "session=s$_" . ('B' x 600) } 1 .. 100)
             . "\r\n";
    ($st, $ss) = raw(req($many), $big_port);
    is($st, 401, '100 cookies of 600 bytes each (60 KiB): 401');
    push @tried, ['100 cookies of 600 bytes (60 KiB header), 128k buffers', "$st $ss"];
}

# ------------------------------------------------- nothing was altered

is(get('/', cookie => 'session=tok-valid-7c1e')->{status}, 200,
   'the valid session still works afterwards');
is(get('/', cookie => 'session=tok-other-7c1e')->{status}, 200,
   'and so does another (Postgres still answers)');
# its cache fill is sent without waiting for it: count Redis's commands
# once Redis has run that SET (INFO commandstats, which the check below
# reads too; EXISTS or GET from here would be counted as nginx's)
ok(wait_until(sub { ($redis->commandstats->{set} // 0)
                    > ($redis_stats->{set} // 0) }, 5, 0.02,
              'the cache fill of tok-other-7c1e'),
   'that one is cached');

my $after = $redis->commandstats;
my @changed = grep { ($after->{$_} // 0) != ($redis_stats->{$_} // 0) }
              keys %{ { %$after, %$redis_stats } };
# Only lookups; the second valid session above was a MISS, filled with SET.
my @unexpected = grep { $_ ne 'get' && $_ ne 'set' } @changed;
is_deeply(\@unexpected, [], 'Redis ran no command but GET (and the one SET '
        . 'filling the cache for the last valid session)')
    or diag explain { before => $redis_stats, after => $after };
is(($after->{set} // 0) - ($redis_stats->{set} // 0), 1,
   'exactly one SET: the valid session filled after the hostile inputs');
is($redis->cli('DBSIZE'), $redis_keys + 1,
   'DBSIZE: only that one key was added');
is($redis->get_key('sentinel'), 'still-here', 'the sentinel key is intact');
ok($redis->key_exists('session:tok-valid-7c1e'), 'the cached session is intact');

is(table_state(), $table, 'the Postgres table is unchanged');
my @stmts = nginx_statements();
my @new = @stmts[$statements .. $#stmts];
cmp_ok(scalar @new, '>', 0, 'hostile tokens that pass the rules did reach Postgres');
my @foreign = grep {
    my ($sql) = /LOG:\s+(?:execute [^:]*|statement): ([^\n]*)/;
    ($sql // '') ne $QUERY;
} @new;
is_deeply(\@foreign, [], 'every statement nginx ran is the session query, '
        . 'the token only a bound parameter') or diag join "\n", @foreign;

no_alerts($nginx);

# --------------------------------- with negative entries: the one write

{
    my $n2 = start_nginx(http => protected_site(
        redis    => $redis->url . ' pool=2 timeout=500ms',
        postgres => '"' . $pg->dsn . '" pool=2 timeout=2s',
        http     => 'session_cache_negative_ttl 10s;'));
    my $tok = "x'%3BDROP%20TABLE%20t--%0D%0AFLUSHALL";
    my $keys = $redis->cli('DBSIZE');
    my $r = $n2->get('/', cookie => "session=$tok");
    is($r->{status}, 401, 'negative entries on: a hostile token, 401');
    my $v = $redis->wait_for_key("session:$tok", 2);
    is($v, '{"invalid":true}', 'its negative entry is stored under the literal key');
    is($redis->cli('DBSIZE'), $keys + 1, 'and it is the only key added');
    is($n2->get('/', cookie => "session=$tok")->{headers}{'x-session-status'},
       'NEGATIVE', 'and it answers the next request: NEGATIVE');
    is($redis->get_key('sentinel'), 'still-here', 'the sentinel key is intact');
    push @tried, ['SQL + RESP token with negative entries on', "401 then 401 NEGATIVE"];
    no_alerts($n2, 'negative entries on: no alerts');
}

if ($ENV{TEST_VERBOSE_HOSTILE}) {
    diag sprintf("%-58s %s", $_->[0], $_->[1]) for @tried;
}

done_testing;
