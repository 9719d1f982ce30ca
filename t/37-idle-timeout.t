# idle_timeout= on both backend directives: a pooled connection that
# carries no job for that long is closed (as nginx's upstream keepalive
# closes an idle connection), so that a quiet worker holds no socket a
# firewall or Redis's own `timeout` would cut; the next request opens a
# new one. A bad value fails nginx -t naming the directive.

use v5.36;
use Test::More;
use SessionCache::Test;

# ------------------------------------------------------------ nginx -t

my $pg_any = '"host=127.0.0.1 port=1 dbname=sessions user=nginx"';

for my $case (['session_cache_redis', 'redis://127.0.0.1:1/0'],
              ['session_cache_postgres', $pg_any])
{
    my ($directive, $source) = @$case;
    my $key = $directive =~ /redis/ ? 'redis' : 'postgres';

    for my $bad ('idle_timeout=', 'idle_timeout=soon', 'idle_timeout=-1s',
                 'idle_timeout=1x')
    {
        my ($rc, $out) = check_config(
            http => protected_site($key => "$source $bad"));
        isnt($rc, 0, "$directive $bad: nginx -t fails");
        like($out, qr/\Q$directive\E: invalid idle_timeout/,
             "$directive $bad: the message names the directive and "
             . "the parameter") or diag $out;
    }

    for my $good ('idle_timeout=1s', 'idle_timeout=500ms', 'idle_timeout=0',
                  'idle_timeout=5m')
    {
        my ($rc, $out) = check_config(
            http => protected_site($key => "$source $good"));
        is($rc, 0, "$directive $good: nginx -t accepts it") or diag $out;
    }
}

# ------------------------------------------------------------- running

my $redis = start_redis();
my $pg    = start_postgres();

$pg->add_session('tok-idle-1', 'user-idle-1', 3600);
$pg->add_session('tok-idle-2', 'user-idle-2', 3600);

my $nginx = start_nginx(workers => 1, http => protected_site(
    redis    => $redis->url . ' pool=2 timeout=2s idle_timeout=1s',
    postgres => '"' . $pg->dsn . '" pool=2 timeout=3s idle_timeout=1s'));

# the module's connections to Postgres (application_name is its default)
sub pg_connections () {
    return $pg->psql("SELECT count(*) FROM pg_stat_activity "
                   . "WHERE application_name = 'ngx_session_cache'");
}

for my $round (1, 2) {
    # a token Redis does not hold yet: Redis is asked, then Postgres, then
    # the answer is written to Redis
    my $r = get('/', cookie => "session=tok-idle-$round");
    is($r->{status}, 200, "round $round: a session from Postgres: 200");
    is($r->{headers}{'x-session-user'}, "user-idle-$round",
       "round $round: the user id");
    ok(defined $redis->wait_for_key("session:tok-idle-$round", 5),
       "round $round: the answer is cached in Redis");

    # 1 s without a job, then both pools close their connections (the
    # 10 s bound only keeps a broken build from hanging the suite)
    ok(wait_until(sub { $redis->client_count == 0 }, 10),
       "round $round: the idle Redis connection is closed")
        or diag "Redis clients: " . $redis->client_count;
    ok(wait_until(sub { pg_connections() == 0 }, 10),
       "round $round: the idle Postgres connection is closed")
        or diag "Postgres connections: " . pg_connections();
}

# the next request opens a new Redis connection and is answered from it
my $r = get('/', cookie => 'session=tok-idle-1');
is($r->{status}, 200, 'after the idle close: a cached session: 200');
is($r->{headers}{'x-session-status'}, 'HIT', 'after the idle close: a HIT');

# closing an idle connection is not a failure
unlike($nginx->error_log, qr/\[error\]|connection dropped/,
       'closing idle connections logs no error');

no_alerts($nginx);

done_testing();
