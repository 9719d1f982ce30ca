#!/usr/bin/env perl
# Revocation lag with L1 (session_cache_l1 tracking=on), under load: the
# time from the application's DEL of session:<token> in Redis to the first
# 401 for that token at the edge (SPEC §8, issue 12's benchmark).
#
# Redis and nginx (one worker, L1 with tracking=on) on 127.0.0.1; wrk
# loads the edge with 10,000 cached sessions (as bench.pl's (e)) while
# this script runs the trials, each on a token of its own that is first
# seen answered from L1 ($session_cache_layer "l1"); then, on one Redis
# connection, DEL, and at once, on one keep-alive connection, requests for
# the token one after the other until a 401: the lag is from just before
# the DEL is written to the 401 read. Three more requests must be 401 too
# (never served again after a refusal). It prints p50/p99/max and whether
# p99 meets the target (<= 50 ms on loopback); it does not fail on it.
#
#   make bench-revocation        (after ./build.sh and bench/setup.sh)
#
# Environment: BENCH_TRIALS (1000), BENCH_SESSIONS (10000: the load's),
# BENCH_CONNECTIONS (32) and BENCH_THREADS (2): the load's wrk, as fast
# as it goes unless BENCH_RATE (requests/s in all) paces it;
# BENCH_BUDGET (60: seconds the trials may take; fewer trials are reported
# as such), plus the harness's (SESSION_CACHE_MODULE, NGINX_BIN).
#
# What it shares with bench/revocation-pg.pl is bench/lib/RevocationBench.pm.

use v5.36;
use FindBin ();
use lib "$FindBin::Bin/lib", "$FindBin::Bin/../t/lib";
use RevocationBench;
use IO::Socket::INET;
use Socket qw(IPPROTO_TCP TCP_NODELAY);

my ($redis, $rds);

# one Redis connection: the DEL is written, its answer read after the 401
sub redis_del_send ($key) {
    $rds //= IO::Socket::INET->new(PeerAddr => '127.0.0.1',
        PeerPort => $redis->port, Proto => 'tcp', Timeout => 5)
        or die "connect redis: $!";
    setsockopt $rds, IPPROTO_TCP, TCP_NODELAY, 1;
    syswrite $rds, "*2\r\n\$3\r\nDEL\r\n\$" . length($key) . "\r\n$key\r\n"
        or die "write redis: $!";
}

sub redis_reply () {
    my $line = '';
    $line .= do { sysread($rds, my $c, 1) or die "read redis: $!"; $c }
        until $line =~ /\r\n$/;
    return $line;
}

exit RevocationBench::run(
    budget    => 60,
    title     => 'Revocation lag',
    target    => 0.050,
    setup     => sub ($r, $trials, $expires) { $redis = $r; {} },
    ready     => sub ($d) { ($d->{l1} // {})->{armed} },
    not_ready => 'the L1 listener did not arm',
    send      => sub ($tok) { redis_del_send("session:$tok") },
    done      => sub ($t, $) {
        redis_reply() eq ":1\r\n" or die "trial $t: DEL did not delete\n";
    },
);
