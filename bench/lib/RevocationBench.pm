package RevocationBench;

# What bench/revocation.pl (a DEL in Redis) and bench/revocation-pg.pl (an
# UPDATE in Postgres) share: Redis seeded with the load's sessions and
# the trials', nginx (one worker, L1 with tracking=on) on 127.0.0.1, wrk's
# load, the trials, and the report. A script gives what differs:
#
#   RevocationBench::run(
#       budget   => 60,                  # BENCH_BUDGET's default
#       title    => 'Revocation lag',    # the report's first words
#       target   => 0.050,               # p99's target, in seconds
#       setup    => sub ($redis, $trials, $expires) { ... }, # before nginx:
#                   # returns {postgres => LINE, revocation => LINE}
#       ready    => sub ($health_doc) { ... },   # the listeners are up
#       not_ready => 'the L1 listener did not arm',
#       send     => sub ($tok) { ... },  # revokes $tok: returns a handle
#       done     => sub ($t, $handle) { ... },   # its answer, after the 401
#       finish   => sub () { ... },      # after the trials (optional)
#       counts   => sub ($d0, $d1) { ... },  # (format, values) to put
#                   # before the L1 counts (optional)
#   );
#
# Environment: see the scripts.

use v5.36;
use FindBin ();
use lib "$FindBin::Bin/../t/lib";
use SessionCache::Test;
use IO::Socket::INET;
use Socket qw(IPPROTO_TCP TCP_NODELAY);
use POSIX ();
use Time::HiRes qw(time);

sub run (%o) {
$| = 1;
my $TRIALS  = $ENV{BENCH_TRIALS}      // 1000;
my $N       = $ENV{BENCH_SESSIONS}    // 10_000;
my $CONNS   = $ENV{BENCH_CONNECTIONS} // 32;
my $THREADS = $ENV{BENCH_THREADS}     // 2;
my $RATE    = $ENV{BENCH_RATE}        // 0;
my $BUDGET  = $ENV{BENCH_BUDGET}      // $o{budget};
my $dir = $FindBin::Bin;
my $wrk = SessionCache::Test::_which('wrk') or die "wrk not found: run bench/setup.sh\n";

my $redis = start_redis();
my $expires = int(time) + 86400;
my $conf = $o{setup} ? $o{setup}->($redis, $TRIALS, $expires) : {};
{
    my $file = "$redis->{dir}/seed.resp";
    open my $fh, '>', $file or die "$file: $!";
    my @keys = ((map { sprintf 'session:bench%027d', $_ } 1 .. $N),
                (map { sprintf 'session:revoke%026d', $_ } 1 .. $TRIALS));
    for my $i (0 .. $#keys) {
        my @a = ('SET', $keys[$i],
                 sprintf('{"user_id":"user%d","expires_at":%d}', $i, $expires),
                 'EX', 3600);
        print {$fh} '*' . @a . "\r\n", map { '$' . length($_) . "\r\n$_\r\n" } @a;
    }
    close $fh;
    my $out = `redis-cli -h 127.0.0.1 -p $redis->{port} --pipe < $file 2>&1`;
    die "seeding redis failed: $out" unless $out =~ /errors: 0, replies: ${\ scalar @keys}/;
}

my $nginx = new_nginx(workers => 1);
$nginx->write_html('app/index.html', "ok\n");
$nginx->start(workers => 1, http => <<~"NGX");
    session_cache_redis ${\ $redis->url } pool=10 connect_timeout=1s timeout=200ms;
    @{[ $conf->{postgres} // '' ]}
    session_cache_l1    size=32m ttl=300s;
    @{[ $conf->{revocation} // '' ]}
    server {
        listen 127.0.0.1:%%PORT%% backlog=4096;
        access_log off;
        keepalive_requests 10000000;
        root %%HTML%%;
        location /app/ { auth_session \$cookie_session; }
        location /probe/ {
            auth_session \$cookie_session;
            add_header X-Session-Layer \$session_cache_layer always;
            alias %%HTML%%/app/;
        }
        location = /health { session_cache_health; }
    }
    NGX
wait_until(sub { $o{ready}->(($nginx->health)[1] // {}) }, 10, 0.05)
    or die "$o{not_ready}\n" . $nginx->error_log;

# --------------------------------------------------------------- the load

my sub wrk_cmd ($duration) {
    return ($wrk, '-t', $THREADS, '-c', $CONNS, '-d', "${duration}s",
            '--timeout', '5s', '-s', "$dir/tokens.lua",
            'http://127.0.0.1:' . $nginx->port . '/app/index.html');
}
$ENV{BENCH_MODE} = 'rotate';
$ENV{BENCH_PATH} = '/app/index.html';    # tokens.lua's path: "/" is not checked
$ENV{BENCH_TOKENS} = $N;
$ENV{BENCH_RATE} = $RATE / $THREADS if $RATE;
SessionCache::Test::_run(cmd => [wrk_cmd(1)], timeout => 30);    # fills L1
my $wrk_out = "$nginx->{dir}/wrk-load.txt";
my $wrk_pid = SessionCache::Test::_spawn(cmd => [wrk_cmd($BUDGET + 10)],
                                         stdout => $wrk_out, stderr => $wrk_out);
# the load is up: L1 has answered a thousand more of its requests
my sub l1_hits () { ((($nginx->health)[1] // {})->{l1}{hits}) // 0 }
my $before = l1_hits();
wait_until(sub { l1_hits() > $before + 1000 }, 10, 0.01)
    or die "the wrk load did not start\n";

# ----------------------------------------------------------------- trials

my $http;
my sub http_conn () {
    $http //= IO::Socket::INET->new(PeerAddr => '127.0.0.1',
        PeerPort => $nginx->port, Proto => 'tcp', Timeout => 5)
        or die "connect nginx: $!";
    setsockopt $http, IPPROTO_TCP, TCP_NODELAY, 1;
    return $http;
}

# One request for $tok on the keep-alive connection: (status, layer).
my sub probe ($tok) {
    my $s = http_conn();
    syswrite $s, "GET /probe/index.html HTTP/1.1\r\nHost: bench\r\n"
               . "Cookie: session=$tok\r\n\r\n" or die "write nginx: $!";
    my $buf = '';
    my $end;
    until (($end = index $buf, "\r\n\r\n") >= 0) {
        sysread($s, $buf, 8192, length $buf) or die "read nginx: $!";
    }
    my $head = substr $buf, 0, $end;
    my ($status) = $head =~ m{^HTTP/1\.\d (\d+)} or die "bad response: $head\n";
    my ($len) = $head =~ /\r\nContent-Length: (\d+)/i;
    my ($layer) = $head =~ /\r\nX-Session-Layer: (\S*)/i;
    my $need = $end + 4 + ($len // 0);
    while (length $buf < $need) {
        sysread($s, $buf, 8192, length $buf) or die "read nginx: $!";
    }
    undef $http if $head =~ /\r\nConnection: close/i;
    return ($status, $layer // '');
}

my (@lag, @rtt, @polls);
my ($not_l1, $stale, $lost) = (0, 0, 0);
my $started = time;
my $d0 = ($nginx->health)[1] // {};
my $h0 = $d0->{l1} // {};
for my $t (1 .. $TRIALS) {
    last if time - $started > $BUDGET;
    my $tok = sprintf 'revoke%026d', $t;
    # cached in L1 first (the first request fills it from Redis)
    my $layer = '';
    for (1 .. 50) {
        my $t0 = time;
        (my $st, $layer) = probe($tok);
        push @rtt, time - $t0;
        die "trial $t: $st before the DEL\n" unless $st == 200;
        last if $layer eq 'l1';
    }
    if ($layer ne 'l1') { $not_l1++; next }

    my $t0 = time;
    my $handle = $o{send}->($tok);
    my ($n, $t1) = (0);
    while (1) {
        my ($st) = probe($tok);
        $n++;
        if ($st == 401) { $t1 = time; last }
        die "trial $t: $st\n" unless $st == 200;
        last if time - $t0 > 5;
    }
    $o{done}->($t, $handle);
    unless ($t1) { $lost++; next }
    push @lag, $t1 - $t0;
    push @polls, $n;
    for (1 .. 3) {
        my ($st) = probe($tok);
        $stale++ if $st != 401;
    }
}
my $elapsed = time - $started;
my $d1 = ($nginx->health)[1] // {};
my $h1 = $d1->{l1} // {};
$o{finish}->() if $o{finish};

kill 'INT', $wrk_pid;    # wrk prints its summary on SIGINT
SessionCache::Test::_reap($wrk_pid, 10) or do { kill 'KILL', $wrk_pid; waitpid $wrk_pid, 0 };
my ($load) = SessionCache::Test::_slurp($wrk_out) =~ /^(BENCH .*)$/m;
my %w = ($load // '') =~ /(\w+)=(\d+)/g;
my @alerts = grep { /\[(alert|emerg|crit)\]/ } split /\n/, $nginx->error_log;
$nginx->stop;

# ----------------------------------------------------------------- report

my sub pct ($p, @s) { @s ? $s[int(($p / 100) * $#s + 0.5)] : 0 }
my @s = sort { $a <=> $b } @lag;
my @r = sort { $a <=> $b } @rtt;
my @p = sort { $a <=> $b } @polls;
my $flushes = 0;
$flushes += $_ for values %{ $h1->{flushes} // {} };
$flushes -= $_ for values %{ $h0->{flushes} // {} };

say '';
printf "$o{title}: %d trials in %.1f s%s, under wrk -t%d -c%d %s "
     . "(%.0f req/s of cached sessions, %d non-2xx, %d errors):\n",
    scalar @s, $elapsed, @s + $not_l1 + $lost < $TRIALS
        ? " (of $TRIALS asked: the budget of ${BUDGET}s ran out)" : '',
    $THREADS, $CONNS, $RATE ? "paced at $RATE req/s" : 'as fast as it goes',
    ($w{requests} // 0) / (($w{duration_us} || 1) / 1e6), $w{status} // 0,
    ($w{connect} // 0) + ($w{read} // 0) + ($w{write} // 0) + ($w{timeout} // 0);
say '';
say '| trials | p50 ms | p99 ms | max ms | requests until the 401 (p50 / max) | one request under this load, p50 / p99 ms |';
say '|---:|---:|---:|---:|---:|---:|';
printf "| %d | %.3f | %.3f | %.3f | %d / %d | %.3f / %.3f |\n", scalar @s,
    1000 * pct(50, @s), 1000 * pct(99, @s), 1000 * ($s[-1] // 0),
    pct(50, @p), $p[-1] // 0, 1000 * pct(50, @r), 1000 * pct(99, @r);
say '';
my ($counts, @values) = $o{counts} ? $o{counts}->($d0, $d1) : ('');
printf "${counts}L1 invalidations seen: %d, flushes: %d, tokens never seen in "
     . "L1: %d, no 401 within 5 s: %d\n", @values,
    ($h1->{invalidations} // 0) - ($h0->{invalidations} // 0), $flushes,
    $not_l1, $lost;
say 'Targets:';
printf "  [%s] p99 of the revocation lag = %.3f ms (<= %.0f ms on loopback)\n",
    @s && pct(99, @s) <= $o{target} && !$lost ? 'met' : 'MISSED',
    1000 * pct(99, @s), 1000 * $o{target};
printf "  [%s] never served after a 401: %d of %d later requests answered 200\n",
    $stale ? 'MISSED' : 'met', $stale, 3 * @s;
printf "  [%s] no alerts in the nginx error log%s\n", @alerts ? 'MISSED' : 'met',
    @alerts ? ": $alerts[0]" : '';
return 0;
}

1;
