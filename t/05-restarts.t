# Connection hygiene (SPEC §5): broken connections are dropped and
# replaced, none leak. Redis is restarted 100 times on the same port with a
# protected request after each; afterwards Redis sees at most workers*pool
# connections from nginx, and no worker holds more than a few more file
# descriptors than before. The same, 10 times, for Postgres. A background
# load of valid and invalid tokens runs through the Redis restarts, and
# none of its requests may fail.

use v5.36;
use Test::More;
use SessionCache::Test;
use SessionCache::Load;

my $WORKERS = 2;
my $POOL    = 2;

my $redis = start_redis();
my $pg    = start_postgres();
my $nginx = start_nginx(workers => $WORKERS, http => protected_site(
    redis    => $redis->url . " pool=$POOL connect_timeout=300ms timeout=200ms",
    postgres => '"' . $pg->dsn . qq{" pool=$POOL connect_timeout=1s timeout=1s},
    # a short cooldown, so that the restarts exercise reconnection rather
    # than a breaker that stays open
    http => 'session_cache_breaker window=1s buckets=4 cooldown=200ms;'));

sub status_of ($r) { $r->{headers}{'x-session-status'} // '' }

my $tok = 'tok-restart';
$pg->add_session($tok, 'user-restart', 3600);

# Warm up every worker's pools, then take the fd counts.
my @warm = get_many(20, sub { ('/', cookie => "session=$tok") });
is(scalar(grep { $_->{status} == 200 } @warm), 20, 'warm-up: 20 x 200');
my @workers = $nginx->worker_pids;
is(scalar @workers, $WORKERS, "$WORKERS workers");
my %fds = map { $_ => $nginx->fd_count($_) } @workers;
note 'fds before: ' . join ', ', map { "$_=$fds{$_}" } @workers;

sub fds_within ($what, $slack = 4) {
    for my $pid (@workers) {
        my $now = $nginx->fd_count($pid);
        ok(defined $now && $now <= $fds{$pid} + $slack,
           "$what: worker $pid holds " . ($now // 'no') . " fds (was $fds{$pid})");
    }
}

# --- Redis: 100 restarts ---------------------------------------------------------

$pg->add_session("tok-restart-load-$_", "user-load-$_", 3600) for 1 .. 8;
my $load = start_load(
    tokens => { valid => [ map { "tok-restart-load-$_" } 1 .. 8 ],
                invalid => [ map { "tok-restart-unknown-$_" } 1 .. 4 ] },
    rate => 50);

my %seen;
my @failed;
my $max_clients = 0;
for my $i (1 .. 100) {
    $redis->stop;
    $redis->start;
    my $r = get('/', cookie => "session=$tok");
    $seen{ status_of($r) }++;
    push @failed, "#$i: $r->{status} " . status_of($r) . ($r->{error} ? " $r->{error}" : '')
        unless $r->{status} == 200;
    # Three failures in a row: nginx is broken, not slow; stop here rather
    # than spend 10 s per remaining restart.
    last if @failed >= 3 && $failed[-3] =~ /^#@{[ $i - 2 ]}:/;
    if ($i % 10 == 0) {
        my $c = $redis->client_count;
        $max_clients = $c if $c > $max_clients;
    }
}
my @load = $load->stop;
my @unexpected = unexpected(\@load);
ok(@load > 100 && !@unexpected,
   'the load through 100 Redis restarts: ' . summarize(\@load))
    or diag summarize(\@unexpected);
cmp_ok($max_clients, '<=', $WORKERS * $POOL,
       "during the restarts, Redis saw at most $max_clients connections");
ok(!@failed, '100 Redis restarts: every request after a restart answered 200')
    or diag join "\n", @failed[0 .. ($#failed < 9 ? $#failed : 9)];
note 'statuses: ' . join ', ', map { "$_=$seen{$_}" } sort keys %seen;

# Let the pools settle with a burst that uses them all.
get_many(20, sub { ('/', cookie => "session=$tok") });
my $clients = $redis->client_count;
cmp_ok($clients, '<=', $WORKERS * $POOL,
       "Redis sees $clients connections, at most workers*pool");
ok($seen{HIT} || $seen{MISS} || status_of(get('/', cookie => "session=$tok")) =~ /HIT|MISS/,
   'Redis is still used after the restarts');
fds_within('after 100 Redis restarts');
is_deeply([ $nginx->worker_pids ], \@workers, 'no worker died');

# --- Postgres: 10 restarts ------------------------------------------------------

@failed = ();
for my $i (1 .. 10) {
    $pg->stop;
    $pg->start;
    $redis->cli('DEL', "session:$tok");    # make the next request ask Postgres
    my $r;
    my $ok = wait_until(sub {
        $r = get('/', cookie => "session=$tok");
        $r->{status} == 200;
    }, 5, 0.1);
    push @failed, "#$i: $r->{status} " . status_of($r) unless $ok;
    last if @failed >= 2;
}
ok(!@failed, '10 Postgres restarts: service back after each') or diag join "\n", @failed;

get_many(20, sub ($i) { $redis->cli('DEL', "session:$tok") if $i == 0;
                        ('/', cookie => "session=$tok") });
my $pg_clients = $pg->psql(
    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'nginx'");
cmp_ok($pg_clients, '<=', $WORKERS * $POOL,
       "Postgres sees $pg_clients connections from nginx, at most workers*pool");
fds_within('after 10 Postgres restarts');
is_deeply([ $nginx->worker_pids ], \@workers, 'no worker died');

no_alerts($nginx);
done_testing;
