# The Redis breaker under load (SPEC §5, issue 3). A background load of
# valid tokens, invalid tokens and an unprotected page runs through each
# fault; every answer is checked afterwards.
#   - Redis killed mid-load, then restarted: no valid session refused; the
#     breaker opens once, then closes at the first trial after the restart.
#   - Redis SIGSTOPped: once the breaker is open, only its trials wait for
#     Redis, and the unprotected page never slows down.
#   - Redis slow (answers after the timeout): timeouts count as failures
#     and open the breaker.
#
# Each step waits for what it needs to have happened (a breaker line in
# the error log, answers of the load), never for a length of time. Where
# the hung and the slow Redis are timed, the Redis timeout is 1 s, so that
# a request that waited for Redis (1 s or more) and one that did not (a few
# ms, tens on a loaded machine) are far apart.

use v5.36;
use Test::More;
use Time::HiRes qw(time);
use List::Util qw(sum max);
use SessionCache::Test;
use SessionCache::Load;
use SessionCache::SlowProxy;

my $redis = start_redis();
my $pg    = start_postgres();

my $BREAKER = 'session_cache_breaker errors=50% window=2s buckets=4 '
            . 'cooldown=1s min_requests=5;';

my @valid   = map { "tok-brk-$_" } 1 .. 16;
my @invalid = map { "tok-brk-unknown-$_" } 1 .. 8;
$pg->add_session($_, "user-$_", 3600) for @valid;

sub site ($redis_url, $timeout = '200ms') {
    return start_nginx(workers => 2, http => protected_site(
        redis    => "$redis_url pool=2 connect_timeout=300ms timeout=$timeout",
        postgres => '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=1s',
        http     => $BREAKER));
}

sub count ($nginx, $re) { $nginx->log_count($re) }

sub through_redis ($x) { $x->{sstatus} =~ /^(HIT|MISS|NEGATIVE)$/ }
sub protected ($x) { $x->{kind} ne 'public' }

sub median (@x) { @x = sort { $a <=> $b } @x; @x ? $x[$#x / 2] : 0 }

sub load () {
    return start_load(tokens => { valid => \@valid, invalid => \@invalid },
                      public => '/public.html');
}

# --- Redis killed mid-load, then restarted ------------------------------------

{
    my $nginx = site($redis->url);
    my $load = load();
    # the breaker's window holds successes before the kill
    ok($load->wait_for(40, \&through_redis, '40 answers through Redis'),
       'before the kill: the load goes through Redis');
    $redis->kill;
    my $t_kill = time;    # Redis is gone: no answer from it after this
    ok($nginx->wait_for_log(qr/redis circuit breaker opened:/),
       'Redis killed: the breaker opens');
    ok($nginx->wait_for_log(qr/redis circuit breaker opened again/, 2),
       'Redis down: trials go, fail and reopen it (twice)');
    my $t_start = time;
    # a recovery probe may close it before start() returns
    my $before = $nginx->log_size;
    $redis->start;
    my $mark = $nginx->log_size;    # Redis answers from here on
    ok($nginx->wait_for_log(qr/redis circuit breaker closed/, 1, $before),
       'Redis restarted: the breaker closes');
    my $t_closed = time;
    ok($load->wait_for(40, sub ($x) { $x->{t0} >= $t_closed && through_redis($x) },
                       '40 answers through Redis after the close'),
       'after the close, the load goes through Redis again');
    my @r = $load->stop;
    my $tail = $nginx->log_since($mark);

    my @bad = unexpected(\@r);
    ok(@r > 100 && !@bad,
       'Redis killed and restarted: no valid session refused, no invalid one let through')
        or diag summarize(\@bad);
    note summarize(\@r);

    my @outage = grep { $_->{t0} >= $t_kill && $_->{t0} < $t_start
                        && $_->{kind} ne 'public' } @r;
    my $reopened = count($nginx, qr/redis circuit breaker opened again/);
    is(count($nginx, qr/redis circuit breaker opened:/), 1,
       'the opening is logged once');

    # Before the opening, failures are logged as they come (the window
    # still holds the successes from before the kill). After it, only the
    # calls already out and the failed trials may log.
    my ($after) = $nginx->error_log =~ /redis circuit breaker opened:[^\n]*\n(.*)/s;
    my $later = () = ($after // '') =~ /session_cache: redis: [^\n]*(refused|reset)/g;
    cmp_ok($later, '<=', $reopened + 4,
           "after the opening, $later Redis errors logged for "
           . scalar(@outage) . " protected requests in the outage "
           . "($reopened failed trials)");
    is(scalar(grep { through_redis($_) } @outage), 0,
       'during the outage, every protected request bypasses Redis ('
       . scalar(@outage) . ')');

    my $back = first_time(\@r, $t_start, \&through_redis);
    ok(defined $back, 'after the restart, Redis answers again (HIT or MISS)');
    my $secs = defined $back ? $back - $t_start : -1;
    # one trial may have been under way when Redis came back; the next one
    # finds it up
    cmp_ok(scalar(() = $tail =~ /redis circuit breaker opened again/g), '<=', 1,
           sprintf('the first trial after the restart closes it (recovered '
                   . 'after %.2f s, cooldown 1 s)', $secs));
    diag sprintf('scenario redis-killed: %d requests, %d failures, '
                 . 'recovered %.2f s after the restart', scalar @r,
                 scalar @bad, $secs) if $ENV{SESSION_CACHE_FIGURES};
    no_alerts($nginx, 'Redis killed: no alerts');
}

# --- Redis SIGSTOPped: a black hole --------------------------------------------

{
    my $nginx = site($redis->url, '1s');
    my $load = load();
    ok($load->wait_for(40, \&through_redis, '40 answers through Redis'),
       'before the pause: the load goes through Redis');
    $redis->pause;
    ok($nginx->wait_for_log(qr/redis circuit breaker opened:/),
       'Redis hung: the breaker opens');
    my $t_open = time;
    my $mark = $nginx->log_size;
    ok($nginx->wait_for_log(qr/redis circuit breaker half-open/, 2, $mark),
       'Redis hung: two trials go through');
    ok($load->wait_for(50, sub ($x) { $x->{t0} >= $t_open && protected($x) },
                       '50 protected answers while open'),
       'Redis hung: the load is answered meanwhile');
    my $t_resume = time;
    $redis->resume;
    ok($nginx->wait_for_log(qr/redis circuit breaker closed/),
       'Redis resumed: the breaker closes');
    my @r = $load->stop;

    my @bad = unexpected(\@r);
    ok(!@bad, 'Redis hung: no valid session refused, no invalid one let through')
        or diag summarize(\@bad);
    note summarize(\@r);

    # Sent once the breaker was open: only the trials (one per cooldown)
    # wait for Redis, and a request that waits for it takes the whole 1 s
    # timeout. The median bound (a quarter of the timeout) and the public
    # one (half of it) tell waiting from not waiting with room to spare
    # on a loaded machine.
    my @open = grep { $_->{t0} >= $t_open && $_->{t1} < $t_resume
                      && protected($_) } @r;
    my $trials = count($nginx, qr/redis circuit breaker half-open/);
    my @slow = grep { $_->{ms} >= 1000 } @open;
    cmp_ok(scalar @open, '>=', 50, scalar(@open) . ' protected requests while open');
    cmp_ok(scalar @slow, '<=', $trials,
           scalar(@slow) . " of them waited for the Redis timeout ($trials trials)");
    cmp_ok(median(map { $_->{ms} } @open), '<', 250,
           sprintf('while open, protected requests do not wait for Redis '
                   . '(median %.1f ms)', median(map { $_->{ms} } @open)));
    is(scalar(grep { $_->{sstatus} ne 'BYPASS' } @open), 0,
       'while open, every protected request is BYPASS');

    my @public = grep { $_->{kind} eq 'public' } @r;
    cmp_ok(max(map { $_->{ms} } @public), '<', 500,
           sprintf('the unprotected page never waits for Redis (%d requests, '
                   . 'max %.1f ms, median %.1f ms)', scalar @public,
                   max(map { $_->{ms} } @public), median(map { $_->{ms} } @public)));
    diag sprintf('scenario redis-hung: %d requests, %d failures, median %.1f ms '
                 . 'while open', scalar @r, scalar @bad,
                 median(map { $_->{ms} } @open)) if $ENV{SESSION_CACHE_FIGURES};
    no_alerts($nginx, 'Redis hung: no alerts');
}

# --- Redis slow: answers, but after the timeout -----------------------------------

{
    my $slow = SessionCache::SlowProxy->start(to => $redis->port, delay => 2);
    my $nginx = site("redis://127.0.0.1:" . $slow->port . "/0", '1s');
    my $load = load();
    ok($nginx->wait_for_log(qr/redis circuit breaker opened:/),
       'Redis slow: the breaker opens');
    my $t_open = time;
    like($nginx->error_log, qr/session_cache: redis: timed out after 1000ms/,
         'the failures that opened it were timeouts');
    ok($load->wait_for(50, sub ($x) { $x->{t0} >= $t_open && protected($x) },
                       '50 protected answers while open'),
       'Redis slow: the load is answered meanwhile');
    my @r = $load->stop;

    my @bad = unexpected(\@r);
    ok(!@bad, 'Redis slow: no valid session refused, no invalid one let through')
        or diag summarize(\@bad);
    note summarize(\@r);
    # a request that waits for the slow Redis takes the 1 s timeout
    my @open = grep { $_->{t0} >= $t_open && protected($_) } @r;
    cmp_ok(median(map { $_->{ms} } @open), '<', 250,
           sprintf('Redis slow, breaker open: requests do not wait for it '
                   . '(median %.1f ms)', median(map { $_->{ms} } @open)));
    diag sprintf('scenario redis-slow: %d requests, %d failures',
                 scalar @r, scalar @bad) if $ENV{SESSION_CACHE_FIGURES};
    no_alerts($nginx, 'Redis slow: no alerts');
    $slow->stop;
}

done_testing;
