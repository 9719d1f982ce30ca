# Debug tracing: with debug_connection, one request can be followed in the
# error log from its token to its outcome (a MISS with its cache fill, a
# HIT, a REJECTED token, an unknown one, a BYPASS past an open breaker),
# every line under the request's
# connection number, and the module never writes the token: nginx's own
# debug lines quote the Cookie header, the module's lines give the token's
# length only.

use v5.36;
use Test::More;
use SessionCache::Test;

my $bin = $ENV{NGINX_BIN} // '/usr/sbin/nginx';
plan skip_all => "$bin is not built --with-debug"
    unless `$bin -V 2>&1` =~ /--with-debug/;

# debug_connection belongs in events{}, which the harness writes itself.
{
    no warnings 'redefine';
    my $config = \&SessionCache::Test::Nginx::_config;
    *SessionCache::Test::Nginx::_config = sub {
        my $c = $config->(@_);
        $c =~ s/events \{/events { debug_connection 127.0.0.1;/
            or die "no events block in the harness's config\n";
        return $c;
    };
}

my $redis = start_redis();
my $pg    = start_postgres();
my $nginx = start_nginx(workers => 1, http => protected_site(
    redis    => $redis->url . ' pool=2 timeout=1s',
    postgres => '"' . $pg->dsn . '" pool=2 connect_timeout=2s timeout=2s',
    # the first Redis failure opens Redis's breaker, for the last case
    http     => 'session_cache_breaker errors=0% min_requests=1 '
              . 'cooldown=60s;'));

my $session  = 'tok-trace-5f3a9c1e77';
my $unknown  = 'tok-trace-unknown-0b42d9';
my $rejected = 'tok-trace-rejected-' . ('r' x 600);   # over 512 bytes
$pg->add_session($session, 'user-trace', 3600);

# The module's trace of the first request after log offset $from: the
# session_cache debug lines under that request's connection number.
sub trace_after ($from) {
    my $log = substr($nginx->error_log, $from);
    my ($conn) = $log =~ /\*(\d+) session_cache: token of/ or return ();
    return map { /\[debug\] .*\*$conn session_cache: (.*)$/ ? $1 : () }
        split /\n/, $log;
}

sub follows ($name, $trace, @want) {
    my $ok = is(scalar @$trace, scalar @want, "$name: " . @want . ' lines')
        || diag(join "\n", @$trace);
    for my $i (0 .. $#want) {
        like($trace->[$i] // '', $want[$i], "$name, line " . ($i + 1));
    }
}

# A MISS: Redis misses, Postgres answers, the answer goes into the cache,
# and the cache fill's acknowledgement comes under the same connection
# after the request has been answered.
my $from = length $nginx->error_log;
my $r = get('/', cookie => "session=$session");
is($r->{status}, 200, 'uncached session: 200');
ok(wait_until(sub { grep { /acknowledged/ } trace_after($from) }, 5),
   'the cache fill is acknowledged');
follows('MISS', [trace_after($from)],
    qr/^token of 20 bytes, plausible$/,
    qr/^redis GET #\d+ sent/,
    qr/^redis answer: nil \(a miss\)$/,
    qr/^postgres asked$/,
    qr/^postgres answer: a row$/,
    qr/^cache fill: SET sent, expires in \d+s$/,
    qr/^outcome MISS: access allowed$/,
    qr/^cache fill acknowledged: stored$/);

# A HIT: Redis alone.
$from = length $nginx->error_log;
$r = get('/', cookie => "session=$session");
is($r->{headers}{'x-session-status'}, 'HIT', 'cached session: HIT');
follows('HIT', [trace_after($from)],
    qr/^token of 20 bytes, plausible$/,
    qr/^redis GET #\d+ sent/,
    qr/^redis answer: session$/,
    qr/^outcome HIT: access allowed$/);

# REJECTED: no backend is asked.
$from = length $nginx->error_log;
$r = get('/', cookie => "session=$rejected");
is($r->{status}, 401, 'implausible token: 401');
follows('REJECTED', [trace_after($from)],
    qr/^token of ${\ length $rejected} bytes, not plausible$/,
    qr/^outcome REJECTED: status 401$/);

# An unknown token: Postgres has no row, a negative entry is written.
$from = length $nginx->error_log;
$r = get('/', cookie => "session=$unknown");
is($r->{status}, 401, 'unknown token: 401');
ok(wait_until(sub { grep { /acknowledged/ } trace_after($from) }, 5),
   'the negative entry is acknowledged');
follows('unknown', [trace_after($from)],
    qr/^token of 24 bytes, plausible$/,
    qr/^redis GET #\d+ sent/,
    qr/^redis answer: nil \(a miss\)$/,
    qr/^postgres asked$/,
    qr/^postgres answer: no row$/,
    qr/^cache fill: SET sent, expires in \d+s$/,
    qr/^outcome MISS: status 401$/,
    qr/^cache fill acknowledged: stored$/);

# The breaker's decision: Redis gone, its breaker opens at the first
# failure, and the next request's GET is not sent at all.
$redis->stop;
is(get('/', cookie => "session=$session")->{status}, 200,
   'Redis gone: 200 from Postgres');
ok(wait_until(sub { $nginx->error_log =~ /redis circuit breaker opened/ }, 5),
   "Redis's breaker opens");
$from = length $nginx->error_log;
$r = get('/', cookie => "session=$session");
is($r->{headers}{'x-session-status'}, 'BYPASS', 'breaker open: BYPASS');
follows('BYPASS', [trace_after($from)],
    qr/^token of 20 bytes, plausible$/,
    qr/^redis GET not sent: circuit breaker open$/,
    qr/^postgres asked$/,
    qr/^postgres answer: a row$/,
    qr/^outcome BYPASS: access allowed$/);

# No line of the module holds a token; the only lines that do are
# nginx's own quotes of the request header and the cookie variable.
my @lines = split /\n/, $nginx->error_log;
for my $tok ($session, $unknown, $rejected) {
    my @holding = grep { index($_, $tok) >= 0 } @lines;
    ok(@holding, 'nginx itself quotes the cookie at debug level')
        if $tok eq $session;
    is_deeply([grep { /session_cache/ } @holding], [],
              'no session_cache line holds the token');
    is_deeply([grep { !/\*\d+ (?:http header|parse header|http script var): /
                    } @holding], [],
              'nor any line but nginx\'s header and variable quotes');
}

no_alerts($nginx);
done_testing;
