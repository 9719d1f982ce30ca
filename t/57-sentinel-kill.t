# Redis Sentinel (SPEC §10): the master killed (SIGKILL) under load. A
# master, a replica and three sentinels (down-after-milliseconds 1000);
# a steady load of valid sessions cached in Redis, an invalid token and an
# unprotected page. Then the master dies; the sentinels find it down and
# promote the replica:
#   - no valid session refused, no 503 (Postgres is up): every answer is
#     the one it should be;
#   - BYPASS only during the switch: the window from the first to the last
#     BYPASS is measured and printed (`prove -v`; target 2 s; the
#     sentinels alone take down-after-milliseconds, 1 s, to call the
#     master down), and bounded;
#   - then HIT again, from the new master (its GETs count up);
#   - the health document names the new master, one switch, its time;
#     Prometheus counts it;
#   - a second nginx with L1 (tracking=on): L1 dropped (topology) and its
#     listener armed again on the new master.

use v5.36;
use Test::More;
use SessionCache::Test;

my $f = sentinel_failover_setup();
my @bypass = sentinel_failover_followed($f,
    trigger => sub {
        $f->{master}->kill;
        ok(!$f->{master}->running, 'the master killed');
    },
    name_timeout => 20, what => 'master killed',
    # the bound protects "BYPASS only during the switch": a window many
    # times the sentinels' own detection and failover (down-after 1 s, then
    # the election and the promotion) would mean requests kept failing
    # after it
    window_ms => 8000);
ok(@bypass > 0, 'requests went to Postgres while no master answered');

done_testing();
