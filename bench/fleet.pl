#!/usr/bin/env perl
# Fleet simulation (issue 12's benchmark): 1, 2, 4 and 8 nginx instances
# ("edges", one worker each) against one Redis, all on 127.0.0.1, with the
# same total load of checks split evenly between them (one wrk per edge,
# paced: bench/tokens.lua's BENCH_RATE), every edge seeing every session
# (as behind a round-robin balancer). For each number of edges:
#   off     no L1: every check is a GET
#   on      L1 with tracking=on, no session writes
#   on+w    L1 with tracking=on and a steady rate of session writes: one SET
#           at a time on its own connection, half of them new logins
#           (keys no edge holds), half refills of sessions being checked
#           (every edge holding one drops it and asks Redis again)
# (off runs with the writes too: they are its SETs/s.) Over each run, from
# Redis: commands/s by kind (INFO commandstats), CPU (INFO cpu) and bytes
# sent (INFO stats), the tracking clients (INFO clients); from the edges'
# health documents: the keys invalidated in L1 (one BCAST push per key per
# listener here: the writer's SETs are not pipelined). It prints one table;
# README's Performance section has the model.
#
#   make bench-fleet          (after ./build.sh and bench/setup.sh)
#
# Environment: BENCH_EDGES (1,2,4,8), BENCH_RATE (10000 checks/s in all),
# BENCH_CONNECTIONS (64 in all), BENCH_SESSIONS (1000), BENCH_L1_TTL (5:
# seconds), BENCH_DURATION (seconds per run, = the ttl: each session
# expires once per run at every edge), BENCH_WRITES (100 per second),
# BENCH_REFILLS (0.5: the share of writes that refill a checked session).

use v5.36;
use FindBin ();
use lib "$FindBin::Bin/../t/lib";
use SessionCache::Test;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(time sleep);

$| = 1;
my @EDGES    = split /,/, ($ENV{BENCH_EDGES} // '1,2,4,8');
my $RATE     = $ENV{BENCH_RATE}        // 10_000;
my $CONNS    = $ENV{BENCH_CONNECTIONS} // 64;
my $S        = $ENV{BENCH_SESSIONS}    // 1000;
my $TTL      = $ENV{BENCH_L1_TTL}      // 5;
my $DURATION = $ENV{BENCH_DURATION}    // $TTL;
my $WRITES   = $ENV{BENCH_WRITES}      // 100;
my $REFILLS  = $ENV{BENCH_REFILLS}     // 0.5;
my $dir = $FindBin::Bin;
my $wrk = SessionCache::Test::_which('wrk') or die "wrk not found: run bench/setup.sh\n";

my $redis = start_redis();
my $expires = int(time) + 86400;
sub value ($i) { sprintf '{"user_id":"user%d","expires_at":%d}', $i, $expires }
{
    my $file = "$redis->{dir}/seed.resp";
    open my $fh, '>', $file or die "$file: $!";
    for my $i (1 .. $S) {
        my @a = ('SET', sprintf('session:fleet%027d', $i), value($i), 'EX', 3600);
        print {$fh} '*' . @a . "\r\n", map { '$' . length($_) . "\r\n$_\r\n" } @a;
    }
    close $fh;
    my $out = `redis-cli -h 127.0.0.1 -p $redis->{port} --pipe < $file 2>&1`;
    die "seeding redis failed: $out" unless $out =~ /errors: 0, replies: $S/;
}

sub info ($section) {
    my %i;
    for (split /\r?\n/, $redis->cli('INFO', $section)) {
        $i{$1} = $2 if /^(\w+):(.*)$/;
    }
    return \%i;
}

# Redis's figures at one moment: commands by name (the bench's own INFO
# left out), CPU seconds, bytes sent, tracking clients.
sub redis_now () {
    my %cmd;
    for (split /\n/, $redis->cli('INFO', 'commandstats')) {
        $cmd{$1} = $2 if /^cmdstat_([^:]+):calls=(\d+)/ && $1 ne 'info';
    }
    my $cpu = info('cpu');
    my $stats = info('stats');
    my $clients = info('clients');
    return { cmd => \%cmd, cpu => $cpu->{used_cpu_sys} + $cpu->{used_cpu_user},
             out => $stats->{total_net_output_bytes},
             tracking_clients => $clients->{tracking_clients} // 0,
             prefixes => $stats->{tracking_total_prefixes} // 0 };
}

# The writer: a child process, one SET at a time on a schedule of
# $WRITES a second, until SIGTERM.
sub start_writer ($cell, $rate) {
    return undef unless $rate;
    my $pid = fork // die "fork: $!";
    return $pid if $pid;
    my $ok = eval {
        my $stop = 0;
        local $SIG{TERM} = sub { $stop = 1 };
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
            PeerPort => $redis->port, Proto => 'tcp') or die "connect: $!";
        srand($$);
        my ($k, $t0) = (0, time);
        while (!$stop) {
            my $wait = $t0 + $k / $rate - time;
            sleep $wait if $wait > 0;
            my ($key, $val);
            if (rand() < $REFILLS) {
                my $i = 1 + int rand $S;
                ($key, $val) = (sprintf('session:fleet%027d', $i), value($i));
            } else {
                ($key, $val) = (sprintf('session:login%04d%023d', $cell, $k), value($k));
            }
            my @a = ('SET', $key, $val, 'EX', 3600);
            syswrite $s, join('', '*' . @a . "\r\n",
                              map { '$' . length($_) . "\r\n$_\r\n" } @a);
            my $r = '';
            $r .= do { sysread($s, my $c, 1) or die "read: $!"; $c } until $r =~ /\r\n$/;
            $k++;
        }
        1;
    };
    print STDERR "writer: $@" unless $ok;
    POSIX::_exit(0);
}

sub edge ($l1) {
    my $n = new_nginx(workers => 1);
    $n->start(workers => 1, http => <<~"NGX");
        session_cache_redis ${\ $redis->url } pool=4 connect_timeout=1s timeout=200ms;
        ${\ ($l1 ? "session_cache_l1 size=8m ttl=${TTL}s;" : '') }
        server {
            listen 127.0.0.1:%%PORT%% backlog=4096;
            access_log off;
            root %%HTML%%;
            location / { auth_session \$cookie_session; }
            location = /health { session_cache_health; }
        }
        NGX
    return $n;
}

# Listeners subscribed in Redis (CLIENT LIST): the health document is not
# asked before the end of a run, since its probe SETs a key under the
# prefix, which every listener is sent.
sub listeners () {
    return scalar grep { /\bsub=[1-9]/ } split /\n/, $redis->cli('CLIENT', 'LIST');
}

# One paced wrk per edge, all at once, for $d seconds: their BENCH lines.
sub load ($edges, $d) {
    my @edges = @$edges;
    my $conns = int($CONNS / @edges) || 1;
    my @runs;
    for my $i (0 .. $#edges) {
        my $out = "$edges[$i]{dir}/wrk-" . int(time * 1000) . '.txt';
        my $pid = SessionCache::Test::_spawn(
            cmd => [$wrk, '-t', 1, '-c', $conns, '-d', "${d}s", '--timeout', '5s',
                    '-s', "$dir/tokens.lua",
                    'http://127.0.0.1:' . $edges[$i]->port . '/index.html'],
            env => { BENCH_MODE => 'rotate', BENCH_TOKENS => $S,
                     BENCH_PREFIX => 'fleet', BENCH_RATE => $RATE / @edges },
            stdout => $out, stderr => $out);
        push @runs, [$pid, $out];
    }
    my %sum;
    for (@runs) {
        waitpid $_->[0], 0;
        my ($line) = SessionCache::Test::_slurp($_->[1]) =~ /^(BENCH .*)$/m
            or die "wrk failed:\n" . SessionCache::Test::_slurp($_->[1]);
        my %r = $line =~ /(\w+)=(\d+)/g;
        $sum{$_} += $r{$_} for keys %r;
    }
    return \%sum;
}

# The health probes' keys, deleted once no listener is there: left to
# expire (5 s, found late by Redis's sampling among the sessions' keys),
# they would be sent to the next run's listeners.
sub clear_probes () {
    my @k = grep { /\S/ } split /\n/,
        $redis->cli('--scan', '--pattern', 'session:health-probe:*');
    $redis->cli('DEL', @k) if @k;
}

# Keys invalidated in L1 since the edges started, over all edges: read
# from their health documents at the end of a run, one after the other;
# each health probe SETs a key under the prefix that the edges read after
# it have been sent too: the j-th edge's count is corrected by j - 1 (its
# own probe may or may not be in its count: up to one key per edge too
# many).
sub invalidated (@edges) {
    my $n = 0;
    for my $j (0 .. $#edges) {
        $n += ((($edges[$j]->health)[1]{l1} // {})->{invalidations} // 0) - $j;
    }
    return $n;
}

my @rows;
say "fleet: one Redis, $RATE checks/s in all over $S sessions, ${DURATION}s runs, "
  . "L1 ttl=${TTL}s, $WRITES writes/s (${\ ($REFILLS * 100) }% refills)";
for my $e (@EDGES) {
    for my $cell (['off', 0, $WRITES], ['on', 1, 0], ['on+w', 1, $WRITES]) {
        my ($name, $l1, $w) = @$cell;
        my @edges = map { edge($l1) } 1 .. $e;
        if ($l1) {
            wait_until(sub { listeners() == $e }, 10, 0.05)
                or die "the L1 listeners did not subscribe\n" . $edges[0]->error_log;
        }
        # warm-up: every edge sees every session (no write: no invalidation
        # before the run)
        load(\@edges, 2);
        my ($r0, $t0) = (redis_now(), time);
        my $writer = start_writer(scalar @rows, $w);
        my $w_sum = load(\@edges, $DURATION);
        if ($writer) { kill 'TERM', $writer; waitpid $writer, 0 }
        my ($r1, $t1) = (redis_now(), time);
        my ($i0, $i1) = (0, $l1 ? invalidated(@edges) : 0);
        my @alerts = map { grep { /\[(alert|emerg|crit)\]/ } split /\n/, $_->error_log } @edges;
        my @flushes = map { values %{ (($_->health)[1]{l1} // {})->{flushes} // {} } } @edges;
        $_->stop for @edges;
        clear_probes();
        my $dt = $t1 - $t0;
        my %d;
        $d{$_} = ($r1->{cmd}{$_} // 0) - ($r0->{cmd}{$_} // 0)
            for keys %{ { %{ $r1->{cmd} }, %{ $r0->{cmd} } } };
        my $total = 0;
        $total += $_ for values %d;
        my $checks = $w_sum->{requests};
        my $row = {
            edges => $e, name => $name, checks_s => $checks / $dt,
            get_s => ($d{get} // 0) / $dt, set_s => ($d{set} // 0) / $dt,
            other_s => ($total - ($d{get} // 0) - ($d{set} // 0)) / $dt,
            total_s => $total / $dt, per_1000 => 1000 * $total / ($checks || 1),
            hit => 1 - ($d{get} // 0) / ($checks || 1),
            inval_s => ($i1 - $i0) / $dt,
            cpu_ms_s => 1000 * ($r1->{cpu} - $r0->{cpu}) / $dt,
            cpu_ms_1000 => 1000 * 1000 * ($r1->{cpu} - $r0->{cpu}) / ($checks || 1),
            out_kb_s => ($r1->{out} - $r0->{out}) / $dt / 1024,
            tracking => $r1->{tracking_clients},
            bad => $w_sum->{status} + $w_sum->{connect} + $w_sum->{read}
                 + $w_sum->{write} + $w_sum->{timeout},
            flushes => eval { my $s = 0; $s += $_ for @flushes; $s },
            alerts => scalar @alerts,
        };
        push @rows, $row;
        printf "  %d edge(s) %-5s %7.0f checks/s  redis %7.0f cmd/s (GET %7.0f, SET %4.0f, "
             . "other %3.0f)  %6.1f per 1000 checks  hit %.3f  invalidated %6.0f keys/s  "
             . "redis cpu %4.0f ms/s  %s\n",
            $e, $name, @$row{qw(checks_s total_s get_s set_s other_s per_1000 hit
                                inval_s cpu_ms_s)},
            ($row->{bad} || $row->{flushes} || $row->{alerts})
                ? "non-2xx/errors $row->{bad}, L1 flushes $row->{flushes}, alerts $row->{alerts}"
                : 'clean';
    }
}

say '';
say "Results (one Redis; $RATE checks/s asked in all, split over the edges; "
  . "$S sessions, each edge sees all; L1 ttl=${TTL}s; ${DURATION}s runs; "
  . "writes: $WRITES/s, ${\ ($REFILLS * 100) }% refills, in off and on+w):";
say '';
say '| edges | L1 | checks/s | Redis cmds/s | GET/s | SET/s | other/s | cmds per 1,000 checks | L1 hit ratio | keys invalidated/s (all listeners) | Redis CPU ms/s | Redis out KiB/s | tracking clients |';
say '|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|';
for my $r (@rows) {
    printf "| %d | %s | %.0f | %.0f | %.0f | %.0f | %.1f | %.1f | %s | %s | %.0f | %.0f | %d |\n",
        @$r{qw(edges name checks_s total_s get_s set_s other_s per_1000)},
        $r->{name} eq 'off' ? '-' : sprintf('%.3f', $r->{hit}),
        $r->{name} eq 'off' ? '-' : sprintf('%.0f', $r->{inval_s}),
        @$r{qw(cpu_ms_s out_kb_s tracking)};
}
my @bad = grep { $_->{bad} || $_->{flushes} || $_->{alerts} } @rows;
say '';
say @bad ? 'Not clean: ' . join(', ', map { "$_->{edges} $_->{name}" } @bad)
         : 'Every check answered 200, no L1 flush, no alert in any run.';
exit 0;
