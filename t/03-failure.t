# Behaviour under failure (SPEC §4 steps 4-5): Redis down or hung ->
# BYPASS through Postgres; both down -> 503 + Retry-After, or FAIL_OPEN;
# Postgres down with Redis warm -> cached sessions still pass; service
# comes back after the backends restart, without restarting nginx.
#
# Each scenario runs against a fresh nginx, so breaker state from one
# scenario never leaks into the next. Each keeps its failures per backend
# below the default breaker's min_requests (5), so a restarted backend is
# used again at once rather than after the breaker's cooldown.

use v5.36;
use Test::More;
use SessionCache::Test;

my $redis = start_redis();
my $pg    = start_postgres();

my $REDIS_OPTS = 'pool=2 connect_timeout=300ms timeout=200ms';
my $PG_ARGS    = '"' . $pg->dsn . '" pool=2 connect_timeout=300ms timeout=1s';
my $H          = session_headers();

sub site ($redis_url) {
    return start_nginx(http => protected_site(
        redis    => "$redis_url $REDIS_OPTS",
        postgres => $PG_ARGS,
        server   => <<~"NGX"));
            location /lenient/ {
                alias %%HTML%%/;
                auth_session \$cookie_session;
                auth_session_fail open;
                $H
            }
            NGX
}

sub status_of ($r) { $r->{headers}{'x-session-status'} // '' }

my $n = 0;
sub session ($user = undef) {
    my $tok = 'tok-fail-' . ++$n;
    $pg->add_session($tok, $user // "user-$n", 3600);
    return $tok;
}

sub cached ($tok) {
    my $r = get('/', cookie => "session=$tok");
    return 0 unless $r->{status} == 200;
    return defined $redis->wait_for_key("session:$tok");
}

# Poll (every 250 ms, giving up after $secs) until a request for $tok is
# answered 200 with one of @statuses; the last response.
sub recovers ($tok, $secs, @statuses) {
    my $last;
    wait_until(sub {
        $last = get('/', cookie => "session=$tok");
        $last->{status} == 200 && grep { status_of($last) eq $_ } @statuses;
    }, $secs, 0.25, "a 200 @statuses for $tok");
    return $last;
}

# A request that fails over to Postgres waits at most for the Redis
# timeout (200 ms) or a refused connection; a failover that waited for
# the client's 10 s, or for several timeouts in a row, would miss this
# bound, and a loaded machine stays well within it.
my $PROMPT_MS = 2000;

# --- Redis not running at all ------------------------------------------------

{
    my $dead = free_port();
    my $nginx = site("redis://127.0.0.1:$dead/0");
    my $tok = session('user-nored');
    my $r = get('/', cookie => "session=$tok");
    is($r->{status}, 200, 'nothing listening on the Redis port: a valid session, 200');
    is(status_of($r), 'BYPASS', 'nothing listening on the Redis port: BYPASS');
    is($r->{headers}{'x-session-user'}, 'user-nored', 'BYPASS: the user id');
    cmp_ok($r->{ms}, '<', $PROMPT_MS, sprintf('BYPASS answers promptly (%.0f ms)', $r->{ms}));
    is(get('/', cookie => 'session=tok-fail-unknown')->{status}, 401,
       'nothing listening on the Redis port: an unknown token, 401');
    ok($nginx->wait_for_log(qr/redis.*refused|refused.*redis/i),
       'the error log names Redis and "connection refused"');
    no_alerts($nginx, 'Redis never up: no alerts');
}

# --- Redis stopped, then started again ----------------------------------------

{
    my $nginx = site($redis->url);
    my $warm = session();
    ok(cached($warm), 'Redis stop: a session is cached first');
    $redis->stop;
    my $r = get('/', cookie => "session=$warm");
    is($r->{status}, 200, 'Redis stopped: a cached session, 200');
    is(status_of($r), 'BYPASS', 'Redis stopped: BYPASS');
    my $cold = session();
    $r = get('/', cookie => "session=$cold");
    is($r->{status}, 200, 'Redis stopped: an uncached session, 200');
    is(status_of($r), 'BYPASS', 'Redis stopped: BYPASS for it too');

    $redis->start;
    $r = recovers($warm, 10, 'HIT', 'MISS');
    is($r->{status}, 200, 'Redis restarted: 200');
    like(status_of($r), qr/^(HIT|MISS)$/,
         'Redis restarted: Redis is used again without restarting nginx');
    no_alerts($nginx, 'Redis stop/start: no alerts');
}

# --- Redis hung (SIGSTOP) -----------------------------------------------------

{
    my $nginx = site($redis->url);
    my $warm = session();
    ok(cached($warm), 'Redis hung: a session is cached first');
    is(status_of(get('/', cookie => "session=$warm")), 'HIT', 'Redis hung: HIT before');

    $redis->pause;
    my $cold = session();
    my $r = get('/', cookie => "session=$cold");
    is($r->{status}, 200, 'Redis hung: an uncached session, 200');
    is(status_of($r), 'BYPASS', 'Redis hung: BYPASS');
    cmp_ok($r->{ms}, '<', $PROMPT_MS,
           sprintf('Redis hung: waited for the 200ms timeout, no more (%.0f ms)', $r->{ms}));
    $r = get('/', cookie => "session=$warm");
    is($r->{status}, 200, 'Redis hung: a cached session, 200 via Postgres');
    is(status_of($r), 'BYPASS', 'Redis hung: BYPASS for it too');
    cmp_ok($r->{ms}, '<', $PROMPT_MS, sprintf('and promptly (%.0f ms)', $r->{ms}));
    $redis->resume;

    $r = recovers($warm, 10, 'HIT');
    is(status_of($r), 'HIT', 'Redis resumed: HIT again without restarting nginx');
    ok($nginx->wait_for_log(qr/redis.*tim/i),
       'the error log names Redis and the timeout');
    no_alerts($nginx, 'Redis hung: no alerts');
}

# --- Both down: 503 + Retry-After, or FAIL_OPEN -------------------------------

{
    my $nginx = site($redis->url);
    my $tok = session('user-both');
    $redis->stop;
    $pg->stop;

    my $r = get('/', cookie => "session=$tok");
    is($r->{status}, 503, 'Redis and Postgres down: 503');
    like($r->{headers}{'retry-after'} // '', qr/^[1-9][0-9]*$/,
         'with Retry-After in seconds');
    cmp_ok($r->{ms}, '<', $PROMPT_MS, sprintf('and promptly (%.0f ms)', $r->{ms}));

    $r = get('/lenient/', cookie => "session=$tok");
    is($r->{status}, 200, 'auth_session_fail open: 200');
    is(status_of($r), 'FAIL_OPEN', 'auth_session_fail open: FAIL_OPEN');

    $r = get('/');
    is($r->{status}, 401, 'both down: no cookie is still 401');
    is(status_of($r), 'REJECTED', 'both down: no cookie is still REJECTED');
    is(get('/public.html')->{status}, 200, 'both down: unprotected locations work');

    $pg->start;
    $redis->start;
    $r = recovers($tok, 10, 'MISS', 'HIT');
    is($r->{status}, 200, 'both restarted: 200 again without restarting nginx');
    like(status_of($r), qr/^(MISS|HIT)$/, 'both restarted: through Redis (' . status_of($r) . ')');
    no_alerts($nginx, 'both down: no alerts');
}

# --- Postgres down, Redis warm --------------------------------------------------

{
    my $nginx = site($redis->url);
    my $warm = session('user-warm');
    ok(cached($warm), 'Postgres down: a session is cached first');
    my $cold = session('user-cold');
    $pg->stop;

    my $r = get('/', cookie => "session=$warm");
    is($r->{status}, 200, 'Postgres down, Redis warm: a cached session, 200');
    is(status_of($r), 'HIT', 'Postgres down, Redis warm: HIT');
    is($r->{headers}{'x-session-user'}, 'user-warm', 'the cached user id');

    $r = get('/', cookie => "session=$cold");
    is($r->{status}, 503, 'Postgres down: an uncached session, 503');
    like($r->{headers}{'retry-after'} // '', qr/^[1-9][0-9]*$/, 'with Retry-After');
    ok($nginx->wait_for_log(qr/postgres/i),
       'the error log names Postgres');

    $pg->start;
    $r = recovers($cold, 10, 'MISS');
    is($r->{status}, 200, 'Postgres restarted: the uncached session, 200 without restarting nginx');
    is(status_of($r), 'MISS', 'Postgres restarted: MISS');
    is($r->{headers}{'x-session-user'}, 'user-cold', 'Postgres restarted: the user id');
    unlike($nginx->error_log, qr/\Q${\ $pg->password }\E/, 'the error log holds no password');
    no_alerts($nginx, 'Postgres down: no alerts');
}

done_testing;
