# Redis commands are pipelined (several in flight on one pooled
# connection): every reply must still reach the request that asked for it,
# also when the connection times out with several commands on it.

use v5.36;
use Test::More;
use SessionCache::Test;

my $redis = start_redis();
my $pg    = start_postgres();

# One Redis connection per worker and one worker: concurrent requests can
# only be served by pipelining.
my $nginx = start_nginx(workers => 1, http => protected_site(
    redis    => $redis->url . ' pool=1 connect_timeout=300ms timeout=200ms',
    postgres => '"' . $pg->dsn . '" pool=2 timeout=2s'));

my $N = 40;
$pg->psql(<<~"SQL");
    INSERT INTO platform.user_sessions (token, user_id, expires_at)
    SELECT 'tok-pipe-' || i, 'user-' || i, now() + interval '1 hour'
      FROM generate_series(1, $N) AS i
    SQL

sub round ($what, $n, $want_status) {
    my @r = $nginx->get_many($n, sub ($i) {
        return ('/', cookie => 'session=tok-pipe-' . ($i + 1));
    });
    my @wrong = grep {
        $r[$_]{status} != 200
        || ($r[$_]{headers}{'x-session-user'} // '') ne 'user-' . ($_ + 1)
        || ($r[$_]{headers}{'x-session-status'} // '') !~ $want_status
    } 0 .. $#r;
    is(scalar @wrong, 0, "$what: $n concurrent requests, each gets its own user")
        or diag explain [ map { { token => $_ + 1, status => $r[$_]{status},
                                  headers => $r[$_]{headers} } } @wrong[0 .. 2] ];
}

round('first touch', $N, qr/^MISS$/);
ok(wait_until(sub { !grep { !$redis->key_exists("session:tok-pipe-$_") } 1 .. $N },
              10, 0.02, "all $N sessions in Redis"),
   'the cache is filled');
round('cached', $N, qr/^HIT$/);
cmp_ok($redis->client_count, '<=', 1, 'all of it on one Redis connection');

# Redis hangs with several commands on the connection: they all time out
# together, the connection goes, and each request is answered from
# Postgres. (Four, below the breaker's default min_requests.)
$redis->pause;
round('Redis hung', 4, qr/^BYPASS$/);
$redis->resume;
round('Redis back', 4, qr/^HIT$/);
round('Redis back, all tokens', $N, qr/^HIT$/);

like($nginx->error_log, qr/redis: timed out after 200ms/,
     'the timeout is logged');
no_alerts($nginx);
done_testing;
