# nginx -s reload under load (issue 3): no request fails while workers are
# replaced, and the breakers' state survives in shared memory, also when
# the reload changes the breaker's window.
#
# Each step waits for what it needs to have happened (the workers' pids
# changed, the load answered by the new workers, a breaker line), never
# for a length of time.

use v5.36;
use Test::More;
use Time::HiRes qw(time);
use SessionCache::Test;
use SessionCache::Load;
use JSON::PP ();

my $redis = start_redis();
my $pg    = start_postgres();

my @valid   = map { "tok-reload-$_" } 1 .. 12;
my @invalid = map { "tok-reload-unknown-$_" } 1 .. 6;
$pg->add_session($_, "user-$_", 3600) for @valid;

sub site ($breaker) {
    return protected_site(
        redis    => $redis->url . ' pool=2 connect_timeout=300ms timeout=200ms',
        postgres => '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=1s',
        http     => "session_cache_breaker $breaker;",
        server   => 'location = /health { session_cache_health; }');
}

sub breaker_shown ($backend) {
    my $r = get('/health');
    my $d = eval { JSON::PP::decode_json($r->{body}) } // {};
    return $d->{$backend}{breaker} // "(no document: $r->{status})";
}

sub count ($nginx, $re) { $nginx->log_count($re) }

sub protected ($x) { $x->{kind} ne 'public' }

# $n answers (protected ones, with $pred) to requests sent from now on:
# after a reload, the new workers serve them (reload() returns once the
# old ones are gone).
sub answered_from_now ($load, $n, $what, $pred = \&protected) {
    my $t = time;
    ok($load->wait_for($n, sub ($x) { $x->{t0} >= $t && $pred->($x) },
                       "$n answers from now"), $what);
}

# --- reloads under load, both stores up ----------------------------------------

{
    my $nginx = start_nginx(workers => 2, http => site('cooldown=1s'));
    my $load = start_load(tokens => { valid => \@valid, invalid => \@invalid },
                          public => '/public.html');
    answered_from_now($load, 40, 'before the reloads: the load is answered');
    my @generations = ([ $nginx->worker_pids ]);
    for my $i (1 .. 3) {
        $nginx->reload;
        push @generations, [ $nginx->worker_pids ];
        answered_from_now($load, 40, "reload $i: the new workers answer the load");
    }
    my @r = $load->stop;
    note summarize(\@r);
    my %seen;
    $seen{$_}++ for map { @$_ } @generations;
    is(scalar keys %seen, 8, '3 reloads: 4 generations of 2 workers each');
    my @bad = unexpected(\@r);
    ok(@r > 200 && !@bad, scalar(@r) . ' requests across 3 reloads: none failed')
        or diag summarize(\@bad);
    diag sprintf('scenario reload: %d requests, %d failures', scalar @r, scalar @bad)
        if $ENV{SESSION_CACHE_FIGURES};
    no_alerts($nginx, 'reloads under load: no alerts');
}

# --- the breaker's state survives a reload ---------------------------------------

{
    # a long cooldown: the breaker stays open for the whole test
    my $nginx = start_nginx(workers => 2,
                            http => site('window=2s buckets=4 cooldown=60s'));
    my $load = start_load(tokens => { valid => \@valid, invalid => \@invalid },
                          public => '/public.html');
    answered_from_now($load, 40, 'before the stop: the load goes through Redis',
                      sub ($x) { $x->{sstatus} =~ /^(HIT|MISS|NEGATIVE)$/ });
    $redis->stop;
    ok($nginx->wait_for_log(qr/redis circuit breaker opened:/),
       'Redis stopped: the breaker opens');
    # the requests that were in flight when it opened have logged their
    # Redis errors once they are answered
    ok($load->wait_settled(time),
       'every request sent before the opening was seen is answered');
    my $errors = count($nginx, qr/session_cache: redis: /);

    my $t_reload = time;
    $nginx->reload;
    answered_from_now($load, 40, 'reload: the new workers answer the load');
    # a new window layout: the state is kept, the counts start afresh
    $nginx->reload(http => site('window=3s buckets=6 cooldown=60s'));
    answered_from_now($load, 40, 'reload with a new window: the new workers answer');
    my @r = $load->stop;
    note summarize(\@r);

    is(count($nginx, qr/redis circuit breaker opened:/), 1,
       'after two reloads, the breaker was never opened again');
    is(count($nginx, qr/session_cache: redis: /), $errors,
       'the new workers never tried Redis: the breaker was open for them');
    # (the health probe goes around the breaker, so it comes last)
    is(breaker_shown('redis'), 'open',
       'the health document of the new workers shows it open');
    my @after = grep { $_->{t0} >= $t_reload && protected($_) } @r;
    is(scalar(grep { $_->{sstatus} ne 'BYPASS' } @after), 0,
       'every protected request after the reloads is BYPASS ('
       . scalar(@after) . ')');
    my @bad = unexpected(\@r);
    ok(!@bad, 'no request failed') or diag summarize(\@bad);
    $redis->start;
    no_alerts($nginx, 'breaker across reloads: no alerts');
}

done_testing;
