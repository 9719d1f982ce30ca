# Failover under load (SPEC §11, issue 15): the pool wants a primary
# (target_session_attrs=read-write) among two hosts; the primary is
# stopped, the standby promoted (pg_ctl promote), nginx is not touched.
#   - sessions cached in Redis: 200 throughout, never slow (no worker
#     waits for Postgres);
#   - tokens remembered as invalid: 401 throughout;
#   - fresh tokens (each one new, so each one needs Postgres): 401 while a
#     primary answers, 503 only between the stop and the promotion, and
#     401 again soon after the promotion. The window is measured and
#     printed.
# Twice: with the breaker off, the window is the pools' alone: within
# connect_timeout (1 s). With the default breaker (cooldown 30 s), the
# stopped primary opens it; a recovery probe (one a second from each
# worker while calls are refused) finds the new primary and ends the
# cooldown, so the window stays within a probe interval plus
# connect_timeout (2 s), not the 30 s cooldown.

use v5.36;
use Test::More;
use Time::HiRes qw(time);
use List::Util qw(max min);
use SessionCache::Test;
use SessionCache::Load;

my $redis = start_redis();

my $round = 0;

sub failover ($name, $breaker, $bound) {
    $round++;
    note "--- failover, $name ---";
    my $primary = start_postgres();
    my $standby = $primary->start_standby;
    my $PW = $primary->password;

    my @warm    = map { "tok-fo$round-warm-$_" } 1 .. 8;
    my @invalid = map { "tok-fo$round-unknown-$_" } 1 .. 8;
    $primary->add_session($_, "user-$_", 3600) for @warm;
    $standby->wait_replayed($primary);

    my $dsn = $primary->hosts_dsn([$primary, $standby],
                                  target_session_attrs => 'read-write');

    my $nginx = start_nginx(workers => 2, http => protected_site(
        redis    => $redis->url . ' pool=2 timeout=500ms',
        postgres => qq{"$dsn" pool=2 connect_timeout=1s timeout=1s},
        http     => "$breaker\nsession_cache_negative_ttl 300s;",
        server   => 'location = /health { session_cache_health timeout=2s; }'));

    get('/', cookie => "session=$_") for @warm, @invalid;
    ok(!grep({ !defined $redis->wait_for_key("session:$_") } @warm, @invalid),
       'warm-up: the sessions and the invalid tokens are in Redis');

    my $load = start_load(port => $nginx->port, rate => 150,
                          tokens => { valid => \@warm, invalid => \@invalid },
                          fresh => "tok-fo$round-fresh");
    my $fresh_ok = sub ($r) { $r->{kind} eq 'fresh' && $r->{status} == 401 };
    ok($load->wait_for(10, $fresh_ok, '10 fresh tokens answered by Postgres'),
       'before: Postgres answers the fresh tokens');

    my $t_stop = time;
    $primary->stop;
    my $t_stopped = time;
    ok($load->wait_for(1, sub ($r) {
           $r->{kind} eq 'fresh' && $r->{status} == 503 && $r->{t0} >= $t_stop
       }, 'a 503 once no primary is left'),
       'primary stopped: fresh tokens get 503 (no server can answer them)');
    if ($breaker eq '') {
        # the promotion comes once the breaker is open: its cooldown
        # (30 s) is what the recovery probe must cut short
        ok($nginx->wait_for_log(qr/postgres circuit breaker opened:/),
           "$name: the stopped primary opens the breaker");
    }

    my $t_promote = time;
    $standby->promote;
    my $t_promoted = time;
    ok(!$standby->in_recovery, 'the standby is promoted');
    ok($load->wait_for(1, sub ($r) { $fresh_ok->($r) && $r->{t0} >= $t_promoted },
                       'a fresh token answered after the promotion'),
       'promoted: fresh tokens are answered again');
    my $t_after = time;
    ok($load->wait_for(10, sub ($r) { $fresh_ok->($r) && $r->{t0} >= $t_after },
                       '10 more'), '... and keep being answered');
    my @r = $load->stop;

    my @fresh = grep { $_->{kind} eq 'fresh' } @r;
    my @bad = unexpected(\@r, fresh => [503]);
    is(scalar @bad, 0, 'no valid cached session refused, no invalid token let '
                     . 'through, no other status') or diag summarize(\@bad);
    my @refused = grep { $_->{kind} eq 'valid' && $_->{status} != 200 } @r;
    is(scalar @refused, 0, '0 refused valid cached sessions');

    my @f503 = grep { $_->{status} == 503 } @fresh;
    my $first_503 = min(map { $_->{t0} } @f503) // 0;
    my $last_503  = max(map { $_->{t1} } @f503) // 0;
    my $back = first_time(\@fresh, $t_promoted, $fresh_ok);
    my ($first_ok) = sort { $a->{t0} <=> $b->{t0} }
                     grep { $fresh_ok->($_) && $_->{t0} >= $t_promoted } @fresh;
    # a request sent before the stop may still be waiting for its answer
    # when the stop ends the primary's queries (a loaded machine: one sent
    # 0.3 s before, answered 503 40 ms after): no 503 came back before it
    my @early = grep { $_->{t1} < $t_stop } @f503;
    ok(!@early, '503s only once the primary was being stopped')
        or diag join "\n", map { sprintf '503 sent %+.3f s, answered %+.3f s '
            . 'after the stop began', $_->{t0} - $t_stop, $_->{t1} - $t_stop } @early;
    # a request sent before the first answer after the promotion came back
    # may still fail (with the breaker, that answer was its half-open
    # trial, and calls sent meanwhile are refused); none sent after it does
    ok(!grep({ $_->{t0} >= $first_ok->{t1} } @f503),
       'no 503 once lookups were answered again');
    my $window = $back - $t_promoted;
    # the figure protects, breaker off: a new connection finds the new
    # primary at once (a refused host costs nothing), well within
    # connect_timeout (1 s); with the breaker, the recovery probe (one a
    # second) ends its cooldown (30 s)
    ok($window < $bound, sprintf('%s: lookups back %.3f s after the promotion '
                                 . '(bound %.1f s)', $name, $window, $bound));
    if ($breaker eq '') {
        ok($nginx->log_count(qr/postgres circuit breaker half-open: a probe reached postgres before the cooldown ended/) >= 1,
           "$name: a recovery probe reached the new primary before the cooldown ended");
        ok($nginx->log_count(qr/postgres circuit breaker closed: the trial call succeeded/) >= 1,
           "$name: the trial closed the breaker");
    }
    diag sprintf("$name: " . 'failover: primary stopped in %.3f s, promotion took %.3f s; '
               . 'fresh lookups failing (503) for %.3f s (%d of %d), back '
               . '%.3f s after pg_ctl promote returned',
                 $t_stopped - $t_stop, $t_promoted - $t_promote,
                 $last_503 - $first_503, scalar @f503, scalar @fresh, $window);
    my $slowest = max(map { $_->{ms} } grep { $_->{kind} eq 'valid' } @r);
    # the figure protects: no worker waited for a dead primary while cached
    # sessions were asked for (a blocked worker would show connect_timeout,
    # 1 s)
    ok($slowest < 1000, sprintf('cached sessions never waited (slowest %.0f ms)',
                               $slowest));
    note summarize(\@r);

    my ($h, $doc) = $nginx->health;
    my ($on) = grep { $_->{pool} eq 'main' } @{ $doc->{postgres}{hosts} // [] };
    is($on->{port} // '', $standby->port, 'health: the pool is on the new primary');
    is($on->{role} // '', 'primary', '... which is a primary');

    unlike($nginx->error_log, qr/\Q$PW\E/, 'no password in the error log');
    no_alerts($nginx);
}

failover('breaker off', 'session_cache_breaker off;', 1.0);
# the default breaker: errors=50% window=10s buckets=10 cooldown=30s
# min_requests=5
failover('default breaker', '', 2.0);

done_testing;
