# The Postgres breaker, and both stores at once, under load (SPEC §4.5,
# §5, issue 3). The background load sends warm tokens (valid and cached),
# invalid tokens (remembered as invalid), cold tokens (valid, never cached)
# and an unprotected page.
#   - Postgres stopped with Redis warm: cached sessions keep working,
#     uncached ones get 503; Postgres restarted: full service, no restart.
#   - Postgres hung: once its breaker is open, the 503 comes at once.
#   - Both stopped: 503 at once; both restarted: full service.

use v5.36;
use Test::More;
use Time::HiRes qw(time sleep);
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

sub site () {
    return start_nginx(workers => 2, http => protected_site(
        redis    => $redis->url . ' pool=2 connect_timeout=300ms timeout=200ms',
        postgres => '"' . $pg->dsn . '" pool=2 connect_timeout=500ms timeout=500ms',
        http     => $BREAKER));
}

# Warm tokens cached, invalid ones remembered as invalid.
sub warm_up ($warm, $invalid) {
    for my $t (@$warm) {
        get('/', cookie => "session=$t");
        $redis->wait_for_key("session:$t", 2);
    }
    for my $t (@$invalid) {
        get('/', cookie => "session=$t");
        $redis->wait_for_key("session:$t", 2);
    }
}

sub count ($nginx, $re) { scalar(() = $nginx->error_log =~ /$re/g) }
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
    my $t_stop = time;
    my $load = start_load(tokens => { valid => $warm, invalid => $invalid,
                                      cold => $cold },
                          public => '/public.html');
    ok(wait_until(sub { count($nginx, qr/postgres circuit breaker opened:/) }, 5),
       'Postgres stopped: its breaker opens');
    sleep 0.5;
    my $r = get('/', cookie => "session=$cold->[0]");
    is($r->{status}, 503, 'Postgres stopped: an uncached session, 503');
    cmp_ok($r->{headers}{'retry-after'} // 0, '>=', 1, 'with Retry-After >= 1');
    cmp_ok($r->{headers}{'retry-after'} // 99, '<=', 1,
           'Retry-After is the time to the next trial (cooldown 1s)');
    sleep 1.5;

    my $t_start = time;
    $pg->start;
    ok(wait_until(sub { count($nginx, qr/postgres circuit breaker closed/) }, 5),
       'Postgres restarted: its breaker closes');
    sleep 1;
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
    cmp_ok($secs, '<', 4, sprintf('time to recover: %.2f s (cooldown 1 s)', $secs));
    my @after = grep { defined $back && $_->{t0} >= $back + 0.1 } @r;
    my @bad_after = unexpected(\@after, cold => [200]);
    ok(@after > 20 && !@bad_after, 'after the recovery, full service: '
       . scalar(@after) . ' requests') or diag summarize(\@bad_after);
    figures('postgres-stopped', \@r, \@bad, $secs);
    no_alerts($nginx, 'Postgres stopped: no alerts');
}

# --- Postgres hung: the 503 comes at once once the breaker is open ----------------
# Here unknown tokens are new for every request ("fresh"), so each one
# needs Postgres: 401 while it answers, 503 while it hangs.

{
    my $nginx = site();
    my ($warm, undef, $invalid) = tokens();
    warm_up($warm, $invalid);

    my $load = start_load(tokens => { valid => $warm, invalid => $invalid },
                          fresh => "tok-pgb$round-fresh",
                          public => '/public.html');
    sleep 0.5;
    $pg->pause;
    ok(wait_until(sub { count($nginx, qr/postgres circuit breaker opened:/) }, 10),
       'Postgres hung: its breaker opens');
    my $t_open = time;
    sleep 2.5;
    my $t_resume = time;
    $pg->resume;
    ok(wait_until(sub { count($nginx, qr/postgres circuit breaker closed/) }, 5),
       'Postgres resumed: its breaker closes');
    sleep 0.5;
    my @r = $load->stop;
    note summarize(\@r);

    my @bad = unexpected(\@r, fresh => [503]);
    ok(!@bad, 'Postgres hung: warm 200, invalid 401, fresh 401 or 503')
        or diag summarize(\@bad);
    my @open = grep { $_->{kind} eq 'fresh' && $_->{t0} >= $t_open + 0.05
                      && $_->{t1} < $t_resume } @r;
    my $trials = count($nginx, qr/postgres circuit breaker half-open/);
    my @slow = grep { $_->{ms} >= 500 } @open;
    cmp_ok(scalar @slow, '<=', $trials + 2,
           scalar(@slow) . ' of ' . scalar(@open)
           . " requests for Postgres waited for its timeout ($trials trials)");
    is(scalar(grep { $_->{status} != 503 } @open), 0,
       'while open, every request that needs Postgres gets 503');
    cmp_ok(median(map { $_->{ms} } @open), '<', 50,
           sprintf('while open, the 503 comes at once (median %.1f ms)',
                   median(map { $_->{ms} } @open)));
    my @public = grep { $_->{kind} eq 'public' } @r;
    cmp_ok(max(map { $_->{ms} } @public), '<', 200,
           sprintf('the unprotected page never waits (max %.1f ms)',
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
    sleep 0.5;
    my $t_stop = time;
    $redis->stop;
    $pg->stop;
    ok(wait_until(sub { count($nginx, qr/redis circuit breaker opened:/)
                        && count($nginx, qr/postgres circuit breaker opened:/) }, 10),
       'both stopped: both breakers open');
    my $t_open = time;
    sleep 2;
    my $t_start = time;
    $redis->start;
    $pg->start;
    ok(wait_until(sub { count($nginx, qr/redis circuit breaker closed/)
                        && count($nginx, qr/postgres circuit breaker closed/) }, 6),
       'both restarted: both breakers close');
    sleep 1;
    my @r = $load->stop;
    note summarize(\@r);

    my @down = grep { $_->{t0} >= $t_open + 0.05 && $_->{t1} < $t_start } @r;
    my @prot = grep { $_->{kind} ne 'public' } @down;
    is(scalar(grep { $_->{status} != 503 } @prot), 0,
       'both down: every protected request, 503 (' . scalar(@prot) . ')');
    cmp_ok(median(map { $_->{ms} } @prot), '<', 50,
           sprintf('both down: the 503 comes at once (median %.1f ms)',
                   median(map { $_->{ms} } @prot)));
    my @bad = unexpected(\@r, valid => [503], invalid => [503], cold => [200, 503]);
    ok(!@bad, 'both down: no other answer, the unprotected page always 200')
        or diag summarize(\@bad);

    my $back = first_time(\@r, $t_start,
                          sub ($x) { $x->{kind} eq 'cold' && $x->{status} == 200 });
    my $secs = defined $back ? $back - $t_start : -1;
    ok(defined $back, sprintf('both restarted: time to recover %.2f s', $secs));
    my @after = grep { defined $back && $_->{t0} >= $back + 0.5 } @r;
    my @bad_after = unexpected(\@after, cold => [200]);
    ok(@after > 20 && !@bad_after, 'both restarted: full service ('
       . scalar(@after) . ' requests)') or diag summarize(\@bad_after);
    figures('both-stopped', \@r, [grep { $_->{t0} < $t_stop } @bad], $secs);
    no_alerts($nginx, 'both stopped: no alerts');
}

done_testing;
