# The Postgres breaker, and both stores at once, under load (SPEC §4.5,
# §5, issue 3). The background load sends warm tokens (valid and cached),
# invalid tokens (remembered as invalid), cold tokens (valid, never cached)
# and an unprotected page.
#   - Postgres stopped with Redis warm: cached sessions keep working,
#     uncached ones get 503; Postgres restarted: full service, no restart.
#   - Postgres hung: once its breaker is open, the 503 comes at once.
#   - Both stopped: 503 at once; both restarted: full service.
#
# Each step waits for what it needs to have happened (a breaker line in
# the error log, answers of the load), never for a length of time. Where
# the hung Postgres is timed, its timeout is 1 s, so that a request that
# waited for it (1 s or more) and one that did not (a few ms, tens on a
# loaded machine) are far apart.

use v5.36;
use Test::More;
use Time::HiRes qw(time);
use List::Util qw(max);
use SessionCache::Test;
use SessionCache::Load;

my $redis = start_redis();
my $pg    = start_postgres();

my $BREAKER = 'session_cache_breaker errors=50% window=2s buckets=4 '
            . "cooldown=1s min_requests=5;\n"
            . "session_cache_negative_ttl 300s;";

my $round = 0;
sub tokens () {
    $round++;
    my @warm    = map { "tok-pgb$round-warm-$_" } 1 .. 8;
    my @cold    = map { "tok-pgb$round-cold-$_" } 1 .. 8;
    my @invalid = map { "tok-pgb$round-unknown-$_" } 1 .. 8;
    $pg->add_session($_, "user-$_", 3600) for @warm, @cold;
    return (\@warm, \@cold, \@invalid);
}

sub site ($pg_timeout = '500ms') {
    return start_nginx(workers => 2, http => protected_site(
        redis    => $redis->url . ' pool=2 connect_timeout=300ms timeout=200ms',
        postgres => '"' . $pg->dsn . qq{" pool=2 connect_timeout=$pg_timeout }
                    . "timeout=$pg_timeout",
        http     => $BREAKER));
}

# Warm tokens cached, invalid ones remembered as invalid.
sub warm_up ($warm, $invalid) {
    get('/', cookie => "session=$_") for @$warm, @$invalid;
    ok(!grep({ !defined $redis->wait_for_key("session:$_") } @$warm, @$invalid),
       'warm-up: the warm and the invalid tokens are in Redis');
}

sub count ($nginx, $re) { $nginx->log_count($re) }
sub protected ($x) { $x->{kind} ne 'public' }
sub median (@x) { @x = sort { $a <=> $b } @x; @x ? $x[$#x / 2] : 0 }

sub figures ($name, $r, $bad, $secs) {
    diag sprintf('scenario %s: %d requests, %d failures, recovered %.2f s '
                 . 'after the restart', $name, scalar @$r, scalar @$bad, $secs)
        if $ENV{SESSION_CACHE_FIGURES};
}

# --- Postgres stopped with Redis warm, then restarted ------------------------------

{
    my $nginx = site();
    my ($warm, $cold, $invalid) = tokens();
    warm_up($warm, $invalid);

    $pg->stop;
    my $load = start_load(tokens => { valid => $warm, invalid => $invalid,
                                      cold => $cold },
                          public => '/public.html');
    ok($nginx->wait_for_log(qr/postgres circuit breaker opened:/),
       'Postgres stopped: its breaker opens');
    my $r = get('/', cookie => "session=$cold->[0]");
    is($r->{status}, 503, 'Postgres stopped: an uncached session, 503');
    cmp_ok($r->{headers}{'retry-after'} // 0, '>=', 1, 'with Retry-After >= 1');
    cmp_ok($r->{headers}{'retry-after'} // 99, '<=', 1,
           'Retry-After is the time to the next trial (cooldown 1s)');
    ok($nginx->wait_for_log(qr/postgres circuit breaker opened again/),
       'Postgres down: a trial goes, fails and reopens it');

    my $t_start = time;
    # a recovery probe may close it before start() returns
    my $before = $nginx->log_size;
    $pg->start;
    my $mark = $nginx->log_size;    # Postgres answers from here on
    ok($nginx->wait_for_log(qr/postgres circuit breaker closed/, 1, $before),
       'Postgres restarted: its breaker closes');
    my $t_closed = time;
    ok($load->wait_for(30, sub ($x) { $x->{t0} >= $t_closed && protected($x) },
                       '30 protected answers after the close'),
       'Postgres restarted: the load is answered');
    my @r = $load->stop;
    note summarize(\@r);

    my @down = grep { $_->{t0} < $t_start } @r;
    my @bad = unexpected(\@down, cold => [503]);
    ok(!@bad, 'Postgres down: warm sessions 200, invalid ones 401, cold ones 503')
        or diag summarize(\@bad);
    is(scalar(grep { $_->{kind} eq 'valid' && $_->{sstatus} ne 'HIT' } @down), 0,
       'Postgres down: every warm session is a HIT');

    my $back = first_time(\@r, $t_start,
                          sub ($x) { $x->{kind} eq 'cold' && $x->{status} == 200 });
    ok(defined $back, 'Postgres restarted: uncached sessions are let through again');
    my $secs = defined $back ? $back - $t_start : -1;
    # one trial may have been under way when Postgres came back; the next
    # one finds it up
    cmp_ok($nginx->log_count(qr/postgres circuit breaker opened again/, $mark), '<=', 1,
           sprintf('the first trial after the restart closes it (recovered '
                   . 'after %.2f s, cooldown 1 s)', $secs));
    my @after = grep { $_->{t0} >= $t_closed } @r;
    my @bad_after = unexpected(\@after, cold => [200]);
    ok(@after >= 30 && !@bad_after, 'once closed, full service: '
       . scalar(@after) . ' requests') or diag summarize(\@bad_after);
    figures('postgres-stopped', \@r, \@bad, $secs);
    no_alerts($nginx, 'Postgres stopped: no alerts');
}

# --- Postgres hung: the 503 comes at once once the breaker is open ----------------
# Here unknown tokens are new for every request ("fresh"), so each one
# needs Postgres: 401 while it answers, 503 while it hangs.

{
    my $nginx = site('1s');
    my ($warm, undef, $invalid) = tokens();
    warm_up($warm, $invalid);

    my $load = start_load(tokens => { valid => $warm, invalid => $invalid },
                          fresh => "tok-pgb$round-fresh",
                          public => '/public.html');
    ok($load->wait_for(20, sub ($x) { $x->{kind} eq 'fresh' && $x->{status} == 401 },
                       '20 fresh tokens answered by Postgres'),
       'before the pause: Postgres answers the load');
    $pg->pause;
    ok($nginx->wait_for_log(qr/postgres circuit breaker opened:/),
       'Postgres hung: its breaker opens');
    my $t_open = time;
    my $mark = $nginx->log_size;
    ok($nginx->wait_for_log(qr/postgres circuit breaker half-open/, 2, $mark),
       'Postgres hung: two trials go through');
    ok($load->wait_for(50, sub ($x) { $x->{t0} >= $t_open && $x->{kind} eq 'fresh' },
                       '50 fresh tokens answered while open'),
       'Postgres hung: the load is answered meanwhile');
    my $t_resume = time;
    $pg->resume;
    ok($nginx->wait_for_log(qr/postgres circuit breaker closed/),
       'Postgres resumed: its breaker closes');
    my $t_closed = time;
    ok($load->wait_for(1, sub ($x) { $x->{t0} >= $t_closed && $x->{kind} eq 'fresh' }),
       'Postgres resumed: the load is answered');
    my @r = $load->stop;
    note summarize(\@r);

    my @bad = unexpected(\@r, fresh => [503]);
    ok(!@bad, 'Postgres hung: warm 200, invalid 401, fresh 401 or 503')
        or diag summarize(\@bad);
    # Sent once the breaker was open: only the trials (one per cooldown)
    # wait for Postgres, and a request that waits for it takes the whole
    # 1 s timeout. The median bound (a quarter of the timeout) and the
    # public one (half of it) tell waiting from not waiting with room to
    # spare on a loaded machine.
    my @open = grep { $_->{kind} eq 'fresh' && $_->{t0} >= $t_open
                      && $_->{t1} < $t_resume } @r;
    my $trials = count($nginx, qr/postgres circuit breaker half-open/);
    my @slow = grep { $_->{ms} >= 1000 } @open;
    cmp_ok(scalar @slow, '<=', $trials,
           scalar(@slow) . ' of ' . scalar(@open)
           . " requests for Postgres waited for its timeout ($trials trials)");
    is(scalar(grep { $_->{status} != 503 } @open), 0,
       'while open, every request that needs Postgres gets 503');
    cmp_ok(median(map { $_->{ms} } @open), '<', 250,
           sprintf('while open, the 503 comes at once (median %.1f ms)',
                   median(map { $_->{ms} } @open)));
    my @public = grep { $_->{kind} eq 'public' } @r;
    cmp_ok(max(map { $_->{ms} } @public), '<', 500,
           sprintf('the unprotected page never waits for Postgres (max %.1f ms)',
                   max(map { $_->{ms} } @public)));
    my $back = first_time(\@r, $t_resume,
                          sub ($x) { $x->{kind} eq 'fresh' && $x->{status} == 401 });
    my $secs = defined $back ? $back - $t_resume : -1;
    ok(defined $back, sprintf('Postgres resumed: unknown tokens answered 401 '
                              . 'again after %.2f s', $secs));
    figures('postgres-hung', \@r, \@bad, $secs);
    no_alerts($nginx, 'Postgres hung: no alerts');
}

# --- Both stopped, then both restarted -------------------------------------------

{
    my $nginx = site();
    my ($warm, $cold, $invalid) = tokens();
    warm_up($warm, $invalid);

    my $load = start_load(tokens => { valid => $warm, invalid => $invalid,
                                      cold => $cold },
                          public => '/public.html');
    ok($load->wait_for(40, sub ($x) { protected($x) }, '40 protected answers'),
       'before the stop: the load is answered');
    my $t_stop = time;
    $redis->stop;
    $pg->stop;
    ok(wait_until(sub { count($nginx, qr/redis circuit breaker opened:/)
                        && count($nginx, qr/postgres circuit breaker opened:/) },
                  10, 0.02, 'both breakers to open'),
       'both stopped: both breakers open');
    my $t_open = time;
    my $mark = $nginx->log_size;
    ok(wait_until(sub {
            $nginx->log_count(qr/redis circuit breaker opened again/, $mark)
            && $nginx->log_count(qr/postgres circuit breaker opened again/, $mark)
        }, 10, 0.02, 'a failed trial on each'),
       'both down: a trial on each fails and reopens it');
    ok($load->wait_for(50, sub ($x) { $x->{t0} >= $t_open && protected($x) },
                       '50 protected answers while both are open'),
       'both down: the load is answered meanwhile');
    my $t_start = time;
    # a recovery probe may close a breaker before start() returns
    $mark = $nginx->log_size;
    $redis->start;
    $pg->start;
    ok(wait_until(sub {
            $nginx->log_count(qr/redis circuit breaker closed/, $mark)
            && $nginx->log_count(qr/postgres circuit breaker closed/, $mark)
        }, 10, 0.02, 'both breakers to close'),
       'both restarted: both breakers close');
    my $t_closed = time;
    ok($load->wait_for(30, sub ($x) { $x->{t0} >= $t_closed && protected($x) },
                       '30 protected answers after both closed'),
       'both restarted: the load is answered');
    my @r = $load->stop;
    note summarize(\@r);

    my @down = grep { $_->{t0} >= $t_open && $_->{t1} < $t_start } @r;
    my @prot = grep { protected($_) } @down;
    is(scalar(grep { $_->{status} != 503 } @prot), 0,
       'both down: every protected request, 503 (' . scalar(@prot) . ')');
    # below the Redis timeout (200 ms): no request waits for a backend
    cmp_ok(median(map { $_->{ms} } @prot), '<', 150,
           sprintf('both down: the 503 comes at once (median %.1f ms)',
                   median(map { $_->{ms} } @prot)));
    my @bad = unexpected(\@r, valid => [503], invalid => [503], cold => [200, 503]);
    ok(!@bad, 'both down: no other answer, the unprotected page always 200')
        or diag summarize(\@bad);

    my $back = first_time(\@r, $t_start,
                          sub ($x) { $x->{kind} eq 'cold' && $x->{status} == 200 });
    my $secs = defined $back ? $back - $t_start : -1;
    ok(defined $back, sprintf('both restarted: time to recover %.2f s', $secs));
    my @after = grep { $_->{t0} >= $t_closed } @r;
    my @bad_after = unexpected(\@after, cold => [200]);
    ok(@after >= 30 && !@bad_after, 'both closed: full service ('
       . scalar(@after) . ' requests)') or diag summarize(\@bad_after);
    figures('both-stopped', \@r, [grep { $_->{t0} < $t_stop } @bad], $secs);
    no_alerts($nginx, 'both stopped: no alerts');
}

done_testing;
