# The Redis breaker under load (SPEC §5, issue 3). A background load of
# valid tokens, invalid tokens and an unprotected page runs through each
# fault; every answer is checked afterwards.
#   - Redis killed mid-load, then restarted: no valid session refused; the
#     breaker opens once, then closes after the cooldown.
#   - Redis SIGSTOPped: once the breaker is open, protected requests answer
#     at Postgres speed, and the unprotected page never slows down.
#   - Redis slow (answers after the timeout): timeouts count as failures
#     and open the breaker.

use v5.36;
use Test::More;
use Time::HiRes qw(time sleep);
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

sub site ($redis_url) {
    return start_nginx(workers => 2, http => protected_site(
        redis    => "$redis_url pool=2 connect_timeout=300ms timeout=200ms",
        postgres => '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=1s',
        http     => $BREAKER));
}

sub count ($nginx, $re) { scalar(() = $nginx->error_log =~ /$re/g) }

sub median (@x) { @x = sort { $a <=> $b } @x; @x ? $x[$#x / 2] : 0 }

sub load () {
    return start_load(tokens => { valid => \@valid, invalid => \@invalid },
                      public => '/public.html');
}

# --- Redis killed mid-load, then restarted ------------------------------------

{
    my $nginx = site($redis->url);
    my $load = load();
    sleep 1;
    my $t_kill = time;
    $redis->kill;
    ok(wait_until(sub { count($nginx, qr/redis circuit breaker opened:/) }, 5),
       'Redis killed: the breaker opens');
    sleep 2.5;    # a few cooldowns: trials go, fail, reopen
    my $t_start = time;
    $redis->start;
    ok(wait_until(sub { count($nginx, qr/redis circuit breaker closed/) }, 5),
       'Redis restarted: the breaker closes after the cooldown');
    sleep 1;
    my @r = $load->stop;

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
    ok(!(grep { $_->{sstatus} =~ /^(HIT|MISS)$/ } @outage[10 .. $#outage]),
       'during the outage, requests bypass Redis');

    my $back = first_time(\@r, $t_start,
                          sub ($x) { $x->{sstatus} =~ /^(HIT|MISS)$/ });
    ok(defined $back, 'after the restart, Redis answers again (HIT or MISS)');
    my $secs = defined $back ? $back - $t_start : -1;
    cmp_ok($secs, '<', 3, sprintf('time to recover: %.2f s (cooldown 1 s)', $secs));
    diag sprintf('scenario redis-killed: %d requests, %d failures, '
                 . 'recovered %.2f s after the restart', scalar @r,
                 scalar @bad, $secs) if $ENV{SESSION_CACHE_FIGURES};
    no_alerts($nginx, 'Redis killed: no alerts');
}

# --- Redis SIGSTOPped: a black hole --------------------------------------------

{
    my $nginx = site($redis->url);
    my $load = load();
    sleep 1;
    $redis->pause;
    ok(wait_until(sub { count($nginx, qr/redis circuit breaker opened:/) }, 5),
       'Redis hung: the breaker opens');
    my $t_open = time;
    sleep 3;
    my $t_resume = time;
    $redis->resume;
    ok(wait_until(sub { count($nginx, qr/redis circuit breaker closed/) }, 5),
       'Redis resumed: the breaker closes');
    my @r = $load->stop;

    my @bad = unexpected(\@r);
    ok(!@bad, 'Redis hung: no valid session refused, no invalid one let through')
        or diag summarize(\@bad);
    note summarize(\@r);

    # once open, only the trials (one per cooldown) wait for the timeout
    my @open = grep { $_->{t0} >= $t_open + 0.05 && $_->{t1} < $t_resume
                      && $_->{kind} ne 'public' } @r;
    my $trials = count($nginx, qr/redis circuit breaker half-open/);
    my @slow = grep { $_->{ms} >= 200 } @open;
    cmp_ok(scalar @open, '>', 50, scalar(@open) . ' protected requests while open');
    cmp_ok(scalar @slow, '<=', $trials + 2,
           scalar(@slow) . " of them waited for the Redis timeout ($trials trials)");
    cmp_ok(median(map { $_->{ms} } @open), '<', 50,
           sprintf('while open, protected requests answer at Postgres speed '
                   . '(median %.1f ms)', median(map { $_->{ms} } @open)));
    is(scalar(grep { $_->{sstatus} ne 'BYPASS' } @open), 0,
       'while open, every protected request is BYPASS');

    my @public = grep { $_->{kind} eq 'public' } @r;
    cmp_ok(max(map { $_->{ms} } @public), '<', 200,
           sprintf('the unprotected page never waits (%d requests, max %.1f ms, '
                   . 'median %.1f ms)', scalar @public,
                   max(map { $_->{ms} } @public), median(map { $_->{ms} } @public)));
    diag sprintf('scenario redis-hung: %d requests, %d failures, median %.1f ms '
                 . 'while open', scalar @r, scalar @bad,
                 median(map { $_->{ms} } @open)) if $ENV{SESSION_CACHE_FIGURES};
    no_alerts($nginx, 'Redis hung: no alerts');
}

# --- Redis slow: answers, but after the timeout -----------------------------------

{
    my $slow = SessionCache::SlowProxy->start(to => $redis->port, delay => 0.3);
    my $nginx = site("redis://127.0.0.1:" . $slow->port . "/0");
    my $load = load();
    ok(wait_until(sub { count($nginx, qr/redis circuit breaker opened:/) }, 10),
       'Redis slow: the breaker opens');
    my $t_open = time;
    like($nginx->error_log, qr/session_cache: redis: timed out after 200ms/,
         'the failures that opened it were timeouts');
    sleep 2;
    my @r = $load->stop;

    my @bad = unexpected(\@r);
    ok(!@bad, 'Redis slow: no valid session refused, no invalid one let through')
        or diag summarize(\@bad);
    note summarize(\@r);
    my @open = grep { $_->{t0} >= $t_open + 0.05 && $_->{kind} ne 'public' } @r;
    cmp_ok(median(map { $_->{ms} } @open), '<', 50,
           sprintf('Redis slow, breaker open: median %.1f ms',
                   median(map { $_->{ms} } @open)));
    diag sprintf('scenario redis-slow: %d requests, %d failures',
                 scalar @r, scalar @bad) if $ENV{SESSION_CACHE_FIGURES};
    no_alerts($nginx, 'Redis slow: no alerts');
    $slow->stop;
}

done_testing;
