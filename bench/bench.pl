#!/usr/bin/env perl
# ngx_session_cache benchmark: Redis, Postgres and nginx (one worker) on
# 127.0.0.1, 10,000 sessions, and wrk against, side by side in one run:
#   (a) ceiling  a small static file, no check
#   (b) hot      the module, every session cached in Redis
#   (c) cold     the module, Redis flushed: first touch goes to Postgres
#       unknown  the module, a fresh unknown token on every request
#   (d) alt      auth_request to a Node.js validate service doing the same
#                Redis-then-Postgres lookup (bench/validate/server.js)
#   (e) l1       the module with L1 (session_cache_l1, tracking=on), every
#                session in L1: a second nginx (one worker), the same
#                configuration plus the L1 zone (its context is http{})
# It prints a table, the ratios and whether each target of issues 6 and 12
# is met, with the CPU per request of (a), (b) and (e): the whole
# machine's (/proc/stat) and that of the bench's own processes (the nginx
# worker, Redis, wrk).
# It reports; it does not fail on a missed target.
#
#   make bench                       # installs wrk, node and the service's
#                                    # npm packages (bench/setup.sh)
#   BENCH_DURATION=5 BENCH_CONNECTIONS=32 BENCH_ROUNDS=2 perl bench/bench.pl
#
# Environment: BENCH_SESSIONS (10000), BENCH_DURATION (seconds per wrk run,
# 5), BENCH_CONNECTIONS (32), BENCH_THREADS (2), BENCH_ROUNDS (2: a, b and
# d alternate this many times; the best run of each counts),
# BENCH_ONLY (comma list of a,b,d,l1,cold,unknown), BENCH_L1_TTL (300s:
# longer than the whole run, so that the runs measure L1's hit path; the
# cost of expiry, sessions/ttl GETs per second, is bench/fleet.pl's),
# BENCH_CPU=1 (perf stat:
# the worker's CPU time per request), BENCH_PERF=<a|b|d>
# (perf record the worker during that run), plus the harness's
# (SESSION_CACHE_MODULE, NGINX_BIN, TEST_KEEP).

use v5.36;
use FindBin ();
use lib "$FindBin::Bin/../t/lib";
use SessionCache::Test;
use POSIX ();
use Time::HiRes qw(time sleep);

$| = 1;
my $N        = $ENV{BENCH_SESSIONS}    // 10_000;
my $DURATION = $ENV{BENCH_DURATION}    // 5;
my $CONNS    = $ENV{BENCH_CONNECTIONS} // 32;
my $THREADS  = $ENV{BENCH_THREADS}     // 2;
my $ROUNDS   = $ENV{BENCH_ROUNDS}      // 2;
my %ONLY = map { $_ => 1 } split /,/, ($ENV{BENCH_ONLY} // 'a,b,d,l1,cold,unknown');
my $L1_TTL = $ENV{BENCH_L1_TTL} // '300s';
my $REDIS_POOL = 10;
my $PG_POOL    = 4;
my $dir = $FindBin::Bin;

my $wrk = SessionCache::Test::_which('wrk') or die "wrk not found: run bench/setup.sh\n";
my $node = SessionCache::Test::_which('node') or die "node not found: run bench/setup.sh\n";
-d "$dir/validate/node_modules" or die "bench/validate/node_modules missing: run bench/setup.sh\n";

# ------------------------------------------------------------ the servers

say "ngx_session_cache bench: $N sessions, wrk -t$THREADS -c$CONNS -d${DURATION}s, "
  . "nginx 1 worker, redis pool=$REDIS_POOL, postgres pool=$PG_POOL";
my $redis = start_redis();
my $pg = start_postgres();

my $expires = int(time) + 86400;
$pg->psql(<<~"SQL");
    INSERT INTO platform.user_sessions (token, user_id, expires_at)
    SELECT 'bench' || lpad(i::text, 27, '0'), 'user' || i, to_timestamp($expires)
      FROM generate_series(1, $N) AS i;
    ANALYZE platform.user_sessions;
    SQL

sub seed_redis () {
    my $file = "$redis->{dir}/seed.resp";
    open my $fh, '>', $file or die "$file: $!";
    for my $i (1 .. $N) {
        my $key = sprintf 'session:bench%027d', $i;
        my $val = sprintf '{"user_id":"user%d","expires_at":%d}', $i, $expires;
        my @a = ('SET', $key, $val, 'EX', 3600);
        print {$fh} '*' . @a . "\r\n", map { '$' . length($_) . "\r\n$_\r\n" } @a;
    }
    close $fh;
    my $out = `redis-cli -h 127.0.0.1 -p $redis->{port} --pipe < $file 2>&1`;
    die "seeding redis failed: $out" unless $out =~ /errors: 0, replies: $N/;
}
seed_redis();

# The validate service: started and stopped here, by its pid.
my $node_port = free_port();
my $node_log = "$redis->{dir}/validate.log";
my $pg_url = "postgresql://nginx:${\ $pg->password }\@127.0.0.1:${\ $pg->port }/sessions";
my $node_pid = SessionCache::Test::_spawn(
    cmd => [$node, "$dir/validate/server.js"],
    env => { PORT => $node_port, REDIS_URL => $redis->url, PG_URL => $pg_url,
             PG_POOL => $PG_POOL },
    stdout => $node_log, stderr => $node_log);
END {
    local $?;    # reaping node must not become bench.pl's exit status
    if ($node_pid) {
        kill 'TERM', $node_pid;
        waitpid $node_pid, 0;
    }
}
wait_until(sub { SessionCache::Test::_port_accepts($node_port) }, 10)
    or die "validate service did not start:\n" . SessionCache::Test::_slurp($node_log);

my $HTTP = <<~"NGX";
    session_cache_redis    ${\ $redis->url } pool=$REDIS_POOL connect_timeout=1s timeout=200ms;
    session_cache_postgres "${\ $pg->dsn }" pool=$PG_POOL connect_timeout=2s timeout=1s;
    session_cache_ttl      300s;
    session_cache_negative_ttl 10s;

    upstream validate {
        server 127.0.0.1:$node_port;
        keepalive 32;
    }

    server {
        listen 127.0.0.1:%%PORT%% backlog=4096;
        access_log off;
        root %%HTML%%;

        location /static/ { }                          # (a) no check

        location /app/ {                               # (b), (c)
            auth_session \$cookie_session;
        }

        location /alt/ {                               # (d)
            auth_request /_validate;
        }

        location = /_validate {
            internal;
            proxy_pass http://validate;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }

        location /probe/ {                             # where answers come from
            auth_session \$cookie_session;
            add_header X-Session-Layer \$session_cache_layer always;
            alias %%HTML%%/app/;
        }

        location = /health { session_cache_health; }
    }
    NGX

my $nginx = new_nginx(workers => 1);
$nginx->write_html("$_/index.html", "ok\n") for qw(static app alt);
$nginx->start(workers => 1, http => $HTTP);

# (e): the same server with L1, on its own port
my $nginx_l1 = new_nginx(workers => 1);
$nginx_l1->write_html("$_/index.html", "ok\n") for qw(static app alt);
$nginx_l1->start(workers => 1,
                 http => "session_cache_l1 size=32m ttl=$L1_TTL;\n$HTTP");

# Every location answers as it should before anything is measured.
my $tok = sprintf 'bench%027d', 1;
for my $n ($nginx, $nginx_l1) {
    for my $p (qw(/static/ /app/ /alt/)) {
        my $r = $n->get("${p}index.html", cookie => "session=$tok");
        die "GET ${p}index.html: $r->{status} $r->{error}\n" . $n->error_log
            unless $r->{status} == 200;
    }
    die "the module does not refuse an unknown token\n"
        unless $n->get('/app/index.html', cookie => 'session=nope')->{status} == 401;
}
wait_until(sub { (($nginx_l1->health)[1]{l1} // {})->{armed} }, 10, 0.05)
    or die "(e): the L1 listener did not arm\n" . $nginx_l1->error_log;

# ---------------------------------------------------------------- helpers

sub wrk_run ($path, $mode, %o) {
    my $port = ($o{nginx} // $nginx)->port;
    my @cmd = ($wrk, '-t', $THREADS, '-c', $o{conns} // $CONNS,
               '-d', ($o{duration} // $DURATION) . 's', '--timeout', '5s',
               '-s', "$dir/tokens.lua",
               "http://127.0.0.1:$port$path");
    local $ENV{BENCH_MODE} = $mode;
    local $ENV{BENCH_PATH} = $path;
    local $ENV{BENCH_TOKENS} = $N;
    my ($rc, $out) = SessionCache::Test::_run(cmd => \@cmd, timeout => 120);
    my ($line) = $out =~ /^(BENCH .*)$/m or die "wrk failed ($rc):\n$out";
    my %r = $line =~ /(\w+)=(\d+)/g;
    $r{rps} = $r{requests} / ($r{duration_us} / 1e6);
    $r{errors} = $r{connect} + $r{read} + $r{write} + $r{timeout};
    return \%r;
}

# Every command Redis ran but the bench's own INFO (the L1 listener's
# PINGs count).
sub redis_calls () {
    my %s;
    for (split /\n/, $redis->cli('INFO', 'commandstats')) {
        $s{$1} = $2 if /^cmdstat_([^:]+):calls=(\d+)/ && $1 ne 'info';
    }
    my $total = 0;
    $total += $_ for values %s;
    return ($total, \%s);
}

# CPU time in clock ticks: the whole machine's (busy: all but idle and
# iowait, from /proc/stat) and the bench's own (the nginx worker and Redis
# from /proc/PID/stat, wrk as a reaped child of this process).
my $TCK = POSIX::sysconf(POSIX::_SC_CLK_TCK());
sub cpu_now ($n) {
    my (undef, @f) = split ' ', (split /\n/, SessionCache::Test::_slurp('/proc/stat'))[0];
    my $busy = 0;
    $busy += $f[$_] // 0 for 0 .. 7;
    $busy -= $f[3] + $f[4];
    my $own = 0;
    for my $pid ($n->worker_pids, $redis->pid) {
        my $st = SessionCache::Test::_slurp("/proc/$pid/stat") or next;
        $st =~ s/^.*\)\s+//s;
        my @p = split ' ', $st;
        $own += $p[11] + $p[12];    # utime, stime
    }
    my @t = times;
    $own += ($t[2] + $t[3]) * $TCK;  # reaped children: wrk
    return { busy => $busy, own => $own };
}

sub pg_log_size () { -s "$pg->{dir}/postgres.log" // 0 }

# Statements the nginx role ran since byte $from of the Postgres log:
# {queries, prepared (by name), unprepared, backends (distinct pids)}.
sub pg_queries_since ($from) {
    open my $fh, '<', "$pg->{dir}/postgres.log" or die "postgres log: $!";
    seek $fh, $from, 0;
    my %r = (queries => 0, prepared => 0, unprepared => 0, prepares => 0);
    my %pids;
    while (my $l = <$fh>) {
        next unless $l =~ /\[(\d+)\] nginx\@\S* LOG:\s+(execute ([^:]*)|statement): (.*)/;
        my ($pid, $kind, $name, $sql) = ($1, $2, $3, $4);
        if ($sql =~ /^\s*PREPARE/i) { $r{prepares}++; next }
        next unless $sql =~ /user_sessions/;
        $r{queries}++;
        $pids{$pid} = 1;
        if (defined $name && $name ne '<unnamed>') { $r{prepared}++ }
        else                                       { $r{unprepared}++ }
    }
    $r{backends} = keys %pids;
    return \%r;
}

# ------------------------------------------------------------ scenarios

my %best;     # scenario => best wrk result (by requests/s)
my %redis_per_req;

sub measure ($name, $path, $n = $nginx) {
    my ($before) = redis_calls();
    # BENCH_PERF=b: perf record the nginx worker while (b) runs
    my $perf;
    if (($ENV{BENCH_PERF} // '') eq $name) {
        my ($worker) = $n->worker_pids;
        $perf = "$dir/../build/perf-$name.data";
        SessionCache::Test::_spawn(
            cmd => ['perf', 'record', '-F', '2000', '-g', '-o', $perf,
                    '-p', $worker, '--', 'sleep', $DURATION - 1],
            stdout => "$perf.log", stderr => "$perf.log");
    }
    # CPU time the worker spent per request (perf stat task-clock): moved
    # less by other load on the machine than requests/s are. (Hardware
    # counters, e.g. instructions, are not there on a virtual machine.)
    my ($stat_pid, $stat_file);
    if ($ENV{BENCH_CPU}) {
        my ($worker) = $n->worker_pids;
        $stat_file = "$n->{dir}/perf-stat-$name.txt";
        $stat_pid = SessionCache::Test::_spawn(
            cmd => ['perf', 'stat', '-x', ',', '-e', 'task-clock',
                    '-p', $worker, '-o', $stat_file]);
    }
    my $c0 = cpu_now($n);
    my $r = wrk_run($path, 'rotate', nginx => $n);
    my $c1 = cpu_now($n);
    my $reqs = $r->{requests} || 1;
    $r->{machine_cpu_us} = ($c1->{busy} - $c0->{busy}) / $TCK * 1e6 / $reqs;
    $r->{own_cpu_us} = ($c1->{own} - $c0->{own}) / $TCK * 1e6 / $reqs;
    $r->{other_cpu} = (($c1->{busy} - $c0->{busy}) - ($c1->{own} - $c0->{own}))
                    / $TCK / ($r->{duration_us} / 1e6);    # cores
    if ($stat_pid) {
        kill 'INT', $stat_pid;
        waitpid $stat_pid, 0;
        my ($ms) = SessionCache::Test::_slurp($stat_file)
            =~ /^([\d.]+),[^,]*,task-clock/m;
        $r->{cpu_us} = ($ms // 0) * 1000 / ($r->{requests} || 1);
        printf "  %-8s worker CPU per request: %.2f us\n", $name, $r->{cpu_us};
    }
    if ($perf) {
        sleep 1;
        system("perf report -i $perf --no-children --percent-limit 0.7 "
             . "--stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^\$' "
             . "> $dir/../build/perf-$name.txt");
        say "  perf profile of the worker: build/perf-$name.txt";
    }
    my ($after) = redis_calls();
    $r->{redis_per_req} = ($after - $before) / ($r->{requests} || 1);
    printf "  %-8s %9.0f req/s  p50 %6.3f ms  p99 %6.3f ms  non-2xx %d  errors %d  "
         . "redis %.4f/req  cpu %.2f us/req (bench's own %.2f; others %.2f cores)\n",
        $name, $r->{rps}, $r->{p50_us} / 1000, $r->{p99_us} / 1000,
        $r->{status}, $r->{errors}, $r->{redis_per_req}, $r->{machine_cpu_us},
        $r->{own_cpu_us}, $r->{other_cpu};
    $best{$name} = $r if !$best{$name} || $r->{rps} > $best{$name}{rps};
}

say 'warm-up (1s each)...';
wrk_run("/$_/index.html", 'rotate', duration => 1) for qw(static app alt);
if ($ONLY{l1}) {
    # fills L1 with every session (each one is asked for several times)
    wrk_run('/app/index.html', 'rotate', duration => 1, nginx => $nginx_l1);
    my $r = $nginx_l1->get('/probe/index.html',
                           cookie => 'session=' . sprintf('bench%027d', 2));
    die "(e): L1 does not answer after the warm-up: "
      . ($r->{headers}{'x-session-layer'} // '') . "\n"
        unless ($r->{headers}{'x-session-layer'} // '') eq 'l1';
}

for my $round (1 .. $ROUNDS) {
    say "round $round:";
    measure('a', '/static/index.html') if $ONLY{a};
    measure('b', '/app/index.html')    if $ONLY{b};
    measure('d', '/alt/index.html')    if $ONLY{d};
    measure('l1', '/app/index.html', $nginx_l1) if $ONLY{l1};
}
my $l1_health = ($nginx_l1->health)[1]{l1} // {};

my ($cold, $cold_pg, $unknown, $unknown_pg, $cold_redis, $unknown_redis);
if ($ONLY{cold}) {
    say 'cold cache: FLUSHALL, then each wrk thread walks the tokens once...';
    $redis->cli('FLUSHALL');
    my $from = pg_log_size();
    my ($before) = redis_calls();
    $cold = wrk_run('/app/index.html', 'once', duration => 15);
    my ($after, $stats) = redis_calls();
    sleep 1;    # let Postgres write its log
    $cold_pg = pg_queries_since($from);
    $cold_redis = ($after - $before) / ($cold->{requests} || 1);
    printf "  cold     %9.0f req/s  p50 %6.3f ms  p99 %6.3f ms  %d requests, "
         . "%d postgres queries for %d tokens\n",
        $cold->{rps}, $cold->{p50_us} / 1000, $cold->{p99_us} / 1000,
        $cold->{requests}, $cold_pg->{queries}, $N;
    seed_redis();    # back to all-cached, as the earlier runs had it
}
if ($ONLY{unknown}) {
    say 'unknown tokens: a fresh random token on every request...';
    my $from = pg_log_size();
    my ($before) = redis_calls();
    $unknown = wrk_run('/app/index.html', 'random');
    my ($after) = redis_calls();
    sleep 1;
    $unknown_pg = pg_queries_since($from);
    $unknown_redis = ($after - $before) / ($unknown->{requests} || 1);
    printf "  unknown  %9.0f req/s  p50 %6.3f ms  p99 %6.3f ms  %d postgres "
         . "queries for %d requests on %d connections\n",
        $unknown->{rps}, $unknown->{p50_us} / 1000, $unknown->{p99_us} / 1000,
        $unknown_pg->{queries}, $unknown->{requests}, $unknown_pg->{backends};
}

my @alerts = grep { /\[(alert|emerg|crit)\]/ } split /\n/, $nginx->error_log;
push @alerts, grep { /\[(alert|emerg|crit)\]/ } split /\n/, $nginx_l1->error_log;
my $stop_ok = $nginx->stop;
$stop_ok = $nginx_l1->stop && $stop_ok;

# ----------------------------------------------------------------- report

say '';
say "Results (nginx 1 worker, wrk -t$THREADS -c$CONNS, ${DURATION}s runs, "
  . "best of $ROUNDS for a, b, d):";
say '';
say '| scenario | req/s | p50 ms | p99 ms | Redis cmds/req | Postgres queries |';
say '|---|---:|---:|---:|---:|---:|';
my %label = (
    a => '(a) static file, no check (ceiling)',
    b => '(b) module, all sessions cached',
    d => '(d) auth_request to Node.js validate service',
    l1 => '(e) module with L1 (tracking=on), all sessions in L1',
);
for my $k (qw(a b d l1)) {
    my $r = $best{$k} or next;
    printf "| %s | %.0f | %.3f | %.3f | %s | - |\n", $label{$k}, $r->{rps},
        $r->{p50_us} / 1000, $r->{p99_us} / 1000,
        $k eq 'l1' ? sprintf('%.4f', $r->{redis_per_req})
                   : sprintf('%.2f', $r->{redis_per_req});
}
if ($cold) {
    printf "| (c) module, cold cache (%d requests, %d tokens) | %.0f | %.3f | %.3f | %.2f | %.3f per token |\n",
        $cold->{requests}, $N, $cold->{rps}, $cold->{p50_us} / 1000,
        $cold->{p99_us} / 1000, $cold_redis, $cold_pg->{queries} / $N;
}
if ($unknown) {
    printf "| (c) module, unknown tokens | %.0f | %.3f | %.3f | %.2f | %.3f per request |\n",
        $unknown->{rps}, $unknown->{p50_us} / 1000, $unknown->{p99_us} / 1000,
        $unknown_redis, $unknown_pg->{queries} / ($unknown->{requests} || 1);
}
say '';
if (grep { $best{$_} } qw(a b l1)) {
    say 'CPU per request in the runs above (whole machine: /proc/stat, all but '
      . 'idle; the bench\'s own: nginx worker + Redis + wrk; other load: the '
      . 'rest of the machine, in cores):';
    say '';
    say '| scenario | whole machine us/req | bench\'s own us/req | other load (cores) |';
    say '|---|---:|---:|---:|';
    for my $k (qw(a b l1)) {
        my $r = $best{$k} or next;
        printf "| %s | %.2f | %.2f | %.2f |\n", $label{$k}, $r->{machine_cpu_us},
            $r->{own_cpu_us}, $r->{other_cpu};
    }
    say '';
}

my @targets;
sub target ($ok, $text) {
    push @targets, $ok;
    printf "  [%s] %s\n", $ok ? 'met' : 'MISSED', $text;
}
say 'Targets:';
my ($A, $B, $D) = @best{qw(a b d)};
if ($A && $B) {
    my $ratio = $B->{rps} / $A->{rps};
    target($ratio >= 0.55, sprintf '(b)/(a) = %.2f (>= 0.55)', $ratio);
    target($B->{p99_us} <= 1000,
           sprintf '(b) p99 = %.3f ms at %d connections (<= 1 ms)',
           $B->{p99_us} / 1000, $CONNS);
    target($B->{status} == 0 && $B->{errors} == 0,
           "(b) every request answered 200 ($B->{status} non-2xx, $B->{errors} socket errors)");
}
if ($B && $D) {
    my $ratio = $B->{rps} / $D->{rps};
    # no check at all would do (a)/(d): the most (b)/(d) can be here
    target($ratio >= 5, sprintf '(b)/(d) = %.2f (>= 5; the ceiling (a)/(d) is %.2f)',
           $ratio, $A ? $A->{rps} / $D->{rps} : 0);
}
if ($B) {
    target(abs($B->{redis_per_req} - 1) < 0.01,
           sprintf '(b) Redis commands per cached request = %.3f (exactly 1)',
           $B->{redis_per_req});
}
my $E = $best{l1};
if ($A && $E) {
    my $ratio = $E->{rps} / $A->{rps};
    target($ratio >= 0.95, sprintf '(e)/(a) = %.2f (>= 0.95)', $ratio);
    target($E->{redis_per_req} <= 0.01,
           sprintf '(e) Redis commands per checked request = %.4f (<= 0.01; '
                 . 'L1 hits %d, flushes %d)', $E->{redis_per_req},
           $l1_health->{hits} // 0,
           eval { my $s = 0; $s += $_ for values %{ $l1_health->{flushes} // {} }; $s } // 0);
    my $cpu = $E->{machine_cpu_us} / ($A->{machine_cpu_us} || 1);
    target($cpu <= 1.10,
           sprintf '(e) whole-machine CPU per request = %.2f us, %.2f x (a)\'s '
                 . '%.2f us (<= 1.10; the bench\'s own processes: %.2f x)',
           $E->{machine_cpu_us}, $cpu, $A->{machine_cpu_us},
           $E->{own_cpu_us} / ($A->{own_cpu_us} || 1));
    printf "  (L1 held %d entries in %d bytes: %.0f bytes an entry, node, token and value)\n",
        $l1_health->{entries} // 0, $l1_health->{usedBytes} // 0,
        ($l1_health->{usedBytes} // 0) / ($l1_health->{entries} || 1);
    target($E->{status} == 0 && $E->{errors} == 0,
           "(e) every request answered 200 ($E->{status} non-2xx, $E->{errors} socket errors)");
}
if ($cold) {
    my $per = $cold_pg->{queries} / $N;
    target($per <= 1, sprintf 'cold cache: %.3f Postgres queries per distinct token '
                            . '(%d for %d tokens, %d requests; <= 1 per worker)',
           $per, $cold_pg->{queries}, $N, $cold->{requests});
}
if ($unknown) {
    my $u = $unknown_pg;
    target($u->{unprepared} == 0 && $u->{prepares} == 0 && $u->{backends} <= $PG_POOL,
           sprintf 'unknown tokens: %d queries, %d through the prepared statement, '
                 . '%d unprepared, on %d Postgres connections (pool=%d)',
           $u->{queries}, $u->{prepared}, $u->{unprepared}, $u->{backends}, $PG_POOL);
}
target(!@alerts && $stop_ok, 'no alerts in the nginx error log, clean stop'
       . (@alerts ? ": @alerts[0 .. ($#alerts < 4 ? $#alerts : 4)]" : ''));
printf "%d of %d targets met.\n", scalar(grep { $_ } @targets), scalar @targets;
exit 0;
