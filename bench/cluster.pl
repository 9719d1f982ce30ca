#!/usr/bin/env perl
# Redis Cluster's hit path (SPEC §10, issue 14): the module against a
# three-master cluster (redis-cli --cluster create, no replicas) next to
# the module against one Redis, in one run, without L1 and then with L1
# (session_cache_l1 tracking=on: one invalidation listener per master for
# the cluster): four nginx, one worker each, the same sessions cached in
# both stores, wrk on each in turn (BENCH_ROUNDS rounds, the best run of
# each counts). Prints the table, the ratios cluster / single and whether
# the target (>= 0.9) is met. It reports; it does not fail on a missed
# target.
#
#   perl bench/cluster.pl
#   BENCH_DURATION=5 BENCH_CONNECTIONS=32 BENCH_ROUNDS=3 perl bench/cluster.pl
#   BENCH_SYSCALLS=1 perl bench/cluster.pl   # also the worker's system
#                                            # calls per request (perf)
#
# Environment: BENCH_SESSIONS (10000), BENCH_DURATION (5), BENCH_CONNECTIONS
# (32), BENCH_THREADS (2), BENCH_ROUNDS (3), plus the harness's
# (SESSION_CACHE_MODULE, NGINX_BIN, TEST_KEEP). Needs wrk (bench/setup.sh).

use v5.36;
use FindBin ();
use lib "$FindBin::Bin/../t/lib";
use SessionCache::Test;
use POSIX ();
use Time::HiRes qw(time);

$| = 1;
my $N        = $ENV{BENCH_SESSIONS}    // 10_000;
my $DURATION = $ENV{BENCH_DURATION}    // 5;
my $CONNS    = $ENV{BENCH_CONNECTIONS} // 32;
my $THREADS  = $ENV{BENCH_THREADS}     // 2;
my $ROUNDS   = $ENV{BENCH_ROUNDS}      // 3;
my $POOL     = 10;
my $dir      = $FindBin::Bin;

my $wrk = SessionCache::Test::_which('wrk') or die "wrk not found: run bench/setup.sh\n";

say "ngx_session_cache cluster bench: $N sessions, wrk -t$THREADS -c$CONNS "
  . "-d${DURATION}s, nginx 1 worker each, redis pool=$POOL (per node)";

my $redis   = start_redis();
my $cluster = SessionCache::Test::start_redis_cluster(masters => 3);
my $pg      = start_postgres();
my @nodes   = $cluster->nodes;

# CRC16-XMODEM, as the module and Redis compute a key's slot.
sub slot ($key) {
    my $crc = 0;
    for my $c (unpack 'C*', $key) {
        $crc ^= $c << 8;
        for (1 .. 8) {
            $crc = $crc & 0x8000 ? (($crc << 1) ^ 0x1021) & 0xffff : ($crc << 1) & 0xffff;
        }
    }
    return $crc & 16383;
}

# The owner of every slot, from CLUSTER SLOTS (redis-cli's flat output is
# not easy to read: ask each node which slots it serves, CLUSTER NODES).
my %owner_port;
for my $line (split /\n/, $nodes[0]->cli('CLUSTER', 'NODES')) {
    my @f = split ' ', $line;
    my ($port) = $f[1] =~ /:(\d+)/;
    for my $r (@f[8 .. $#f]) {
        next if $r =~ /^\[/;
        my ($a, $b) = split /-/, $r;
        $owner_port{$_} = $port for $a .. ($b // $a);
    }
}

my $expires = int(time) + 86400;
my %files;
for my $i (1 .. $N) {
    my $key = sprintf 'session:bench%027d', $i;
    my $val = sprintf '{"user_id":"user%d","expires_at":%d}', $i, $expires;
    my @a = ('SET', $key, $val, 'EX', 3600);
    my $resp = '*' . @a . "\r\n" . join '', map { '$' . length($_) . "\r\n$_\r\n" } @a;
    $files{ $redis->port } .= $resp;
    $files{ $owner_port{ slot($key) } } .= $resp;
}
for my $port (keys %files) {
    my $file = "$redis->{dir}/seed-$port.resp";
    open my $fh, '>', $file or die "$file: $!";
    print {$fh} $files{$port};
    close $fh;
    my $out = `redis-cli -h 127.0.0.1 -p $port --pipe < $file 2>&1`;
    die "seeding $port failed: $out" unless $out =~ /errors: 0/;
}

sub site ($url, $l1) {
    my $l1_line = $l1 ? 'session_cache_l1 size=64m ttl=30s;' : '';
    return <<~"NGX";
        $l1_line
        session_cache_redis    $url pool=$POOL connect_timeout=1s timeout=200ms;
        session_cache_postgres "${\ $pg->dsn }" pool=4 connect_timeout=2s timeout=1s;
        server {
            listen 127.0.0.1:%%PORT%% backlog=4096;
            access_log off;
            root %%HTML%%;
            location /app/ {
                auth_session \$cookie_session;
                add_header X-Session-Status \$session_cache_status always;
            }
            location = /health { session_cache_health; }
        }
        NGX
}

my @SCENARIOS = qw(single cluster single_l1 cluster_l1);
my %nginx;
for (['single', $redis->url, 0], ['cluster', $cluster->url, 0],
     ['single_l1', $redis->url, 1], ['cluster_l1', $cluster->url, 1]) {
    my ($name, $url, $l1) = @$_;
    my $n = new_nginx(workers => 1);
    $n->write_html('app/index.html', "ok\n");
    $n->start(workers => 1, http => site($url, $l1));
    $nginx{$name} = $n;
}
for my $name (qw(cluster cluster_l1)) {
    $nginx{$name}->wait_for_log(qr/redis cluster: slot map loaded: 3 masters/)
        or die "$name: the cluster's slot map did not load\n" . $nginx{$name}->error_log;
}
for my $name (qw(single_l1 cluster_l1)) {
    wait_until(sub { my (undef, $d) = $nginx{$name}->health; $d && $d->{l1}{armed} }, 20)
        or die "$name: L1 not armed\n" . $nginx{$name}->error_log;
}

for my $name (sort keys %nginx) {
    for my $i (1, 2, $N) {
        my $r = $nginx{$name}->get('/app/index.html',
                                   cookie => sprintf('session=bench%027d', $i));
        die "$name: token $i: $r->{status} "
          . ($r->{headers}{'x-session-status'} // '') . "\n"
            unless $r->{status} == 200
                && ($r->{headers}{'x-session-status'} // '') eq 'HIT';
    }
}

# The nginx worker's CPU time (utime + stime), in clock ticks: its cost
# per request, moved less than requests/s by the other processes on the
# machine (wrk, three Redis servers, other jobs).
my $TCK = POSIX::sysconf(POSIX::_SC_CLK_TCK());
sub worker_cpu ($pid) {
    my $st = SessionCache::Test::_slurp("/proc/$pid/stat") or return 0;
    $st =~ s/^.*\)\s+//s;
    my @p = split ' ', $st;
    return $p[11] + $p[12];
}

sub wrk_run ($n, %o) {
    my @cmd = ($wrk, '-t', $THREADS, '-c', $CONNS,
               '-d', ($o{duration} // $DURATION) . 's', '--timeout', '5s',
               '-s', "$dir/tokens.lua",
               'http://127.0.0.1:' . $n->port . '/app/index.html');
    local $ENV{BENCH_MODE} = 'rotate';
    local $ENV{BENCH_PATH} = '/app/index.html';
    local $ENV{BENCH_TOKENS} = $N;
    my ($worker) = $n->worker_pids;
    # BENCH_SYSCALLS: perf counts the worker's system calls while wrk
    # runs (perf stat -p PID -- wrk ...: for exactly wrk's lifetime)
    my $perf_out;
    if ($ENV{BENCH_SYSCALLS}) {
        $perf_out = "$dir/../build/perf-syscalls.$worker";
        unshift @cmd, 'perf', 'stat', '-x', ',', '-e', 'raw_syscalls:sys_enter',
            '-o', $perf_out, '-p', $worker, '--';
    }
    my $cpu0 = worker_cpu($worker);
    my ($rc, $out) = SessionCache::Test::_run(cmd => \@cmd, timeout => 120);
    my $cpu1 = worker_cpu($worker);
    my $syscalls;
    if ($perf_out) {
        my $text = SessionCache::Test::_slurp($perf_out) // '';
        ($syscalls) = $text =~ /^(\d+),[^\n]*raw_syscalls:sys_enter/m;
        unlink $perf_out;
    }
    my ($line) = $out =~ /^(BENCH .*)$/m or die "wrk failed ($rc):\n$out";
    my %r = $line =~ /(\w+)=(\d+)/g;
    $r{rps} = $r{requests} / ($r{duration_us} / 1e6);
    $r{cpu_us} = ($cpu1 - $cpu0) / $TCK * 1e6 / ($r{requests} || 1);
    $r{syscalls} = defined $syscalls ? $syscalls / ($r{requests} || 1) : undef;
    $r{errors} = $r{connect} + $r{read} + $r{write} + $r{timeout};
    return \%r;
}

say 'warm-up (1s each)...';
wrk_run($nginx{$_}, duration => 1) for @SCENARIOS;

my (%best, %cpu, %sys);
for my $round (1 .. $ROUNDS) {
    say "round $round:";
    for my $name (@SCENARIOS) {
        my $r = wrk_run($nginx{$name});
        printf "  %-8s %9.0f req/s  p50 %6.3f ms  p99 %6.3f ms  non-2xx %d  errors %d  "
             . "worker cpu %.2f us/req%s\n",
            $name, $r->{rps}, $r->{p50_us} / 1000, $r->{p99_us} / 1000,
            $r->{status}, $r->{errors}, $r->{cpu_us},
            defined $r->{syscalls}
                ? sprintf('  syscalls %.2f/req', $r->{syscalls}) : '';
        push @{ $sys{$name} }, $r->{syscalls} if defined $r->{syscalls};
        $best{$name} = $r if !$best{$name} || $r->{rps} > $best{$name}{rps};
        $cpu{$name} = $r->{cpu_us} if !$cpu{$name} || $r->{cpu_us} < $cpu{$name};
    }
}

my (undef, $doc) = $nginx{cluster}->health;
my $cl = $doc->{redis}{cluster} // {};
my %l1;
for my $name (qw(single_l1 cluster_l1)) {
    my (undef, $d) = $nginx{$name}->health;
    $l1{$name} = $d->{l1} // {};
}
my @alerts;
for my $n (values %nginx) {
    push @alerts, grep { /\[(alert|emerg|crit)\]/ } split /\n/, $n->error_log;
    $n->stop;
}

say '';
say "Results (nginx 1 worker, wrk -t$THREADS -c$CONNS, ${DURATION}s runs, best of $ROUNDS):";
say '';
say '| scenario | req/s | p50 ms | p99 ms | non-2xx | worker CPU us/req |';
say '|---|---:|---:|---:|---:|---:|';
printf "| %s | %.0f | %.3f | %.3f | %d | %.2f |\n", $_->[1], $best{ $_->[0] }{rps},
    $best{ $_->[0] }{p50_us} / 1000, $best{ $_->[0] }{p99_us} / 1000,
    $best{ $_->[0] }{status}, $cpu{ $_->[0] }
    for ['single', '(b) one Redis, all sessions cached'],
        ['cluster', '(f) Redis Cluster, 3 masters, all sessions cached'],
        ['single_l1', '(e) one Redis, L1 (tracking=on)'],
        ['cluster_l1', '(g) Redis Cluster, 3 masters, L1 (tracking=on)'];
say '';
for (['', 'cluster', 'single'], [' with L1', 'cluster_l1', 'single_l1']) {
    my ($what, $c, $s) = @$_;
    my $ratio = $best{$c}{rps} / $best{$s}{rps};
    printf "cluster / single%s: %.3f (target >= 0.9: %s)\n", $what, $ratio,
        $ratio >= 0.9 ? 'met' : 'MISSED';
    printf "worker CPU per request, cluster / single%s: %.3f (lowest of each)\n",
        $what, $cpu{$c} / ($cpu{$s} || 1);
}
if (%sys) {
    my $mean = sub ($n) { my @x = @{ $sys{$n} }; my $s = 0; $s += $_ for @x; $s / @x };
    printf "worker system calls per request (mean of %d rounds): %s\n", $ROUNDS,
        join(', ', map { sprintf '%s %.2f', $_, $mean->($_) } @SCENARIOS);
}
printf "cluster: %d MOVED, %d ASK, %d of 16384 slots\n", $cl->{moved} // -1,
    $cl->{ask} // -1, $cl->{slotsCovered} // -1;
for my $name (qw(single_l1 cluster_l1)) {
    my $l = $l1{$name};
    my $f = $l->{flushes} // {};
    printf "%s: L1 armed %s, %d hits, %d entries, flushes: %s\n", $name,
        $l->{armed} ? 'yes' : 'no', $l->{hits} // -1, $l->{entries} // -1,
        join(', ', map { "$_ $f->{$_}" } grep { $f->{$_} } sort keys %$f) || 'none';
}
say 'alerts: ' . (@alerts ? join("\n", @alerts) : 'none');
