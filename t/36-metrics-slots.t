# Metrics slots (issue 10 item 5): the zone holds twice worker_processes
# slots, so that the old and the new workers of a reload fit together; a
# worker that finds no free slot tries again and gets one when an old
# worker goes. The health document's pool.max (pool= times the workers)
# tells whether every worker has a slot.

use v5.36;
use Test::More;
use JSON::PP ();
use IO::Socket::INET;
use SessionCache::Test;

my $redis = start_redis();
my $REDIS_URL = $redis->url;
my $json = JSON::PP->new;

sub health ($nginx) {
    my $r = $nginx->get('/health');
    return eval { $json->decode($r->{body}) } // {};
}

sub pool_max ($nginx) { health($nginx)->{redis}{pool}{max} // -1 }

# --- 70 workers and three reloads: 140 workers at once, every one counted

{
    my $W = 70;
    my $http = <<~"NGX";
        session_cache_redis $REDIS_URL pool=2;
        server {
            listen 127.0.0.1:%%PORT%%;
            location = /health { session_cache_health; }
            location / { auth_session \$cookie_session; }
        }
        NGX
    my $nginx = start_nginx(workers => $W, http => $http);

    # started: forked, not yet all past init_process
    my $max;
    ok(wait_until(sub { ($max = pool_max($nginx)) == 2 * $W }, 10, 0.1),
       "$W workers: pool.max is pool=2 times $W") or diag "pool.max is $max";

    for my $n (1 .. 3) {
        $nginx->reload;    # returns once the old workers are gone
        ok(wait_until(sub { ($max = pool_max($nginx)) == 2 * $W }, 10, 0.1),
           "reload $n: pool.max back to " . 2 * $W)
            or diag "pool.max stays at $max";
    }

    my $slotless = () = $nginx->error_log =~ /no free metrics slot/g;
    is($slotless, 0, 'no worker went without a metrics slot');

    # Fewer workers: a smaller zone, the same counters. Requests without a
    # token are counted (REJECTED) without touching Redis.
    is($nginx->get('/')->{status}, 401, "request $_: 401, counted") for 1 .. 3;
    my $total = health($nginx)->{sessionCache}{metrics}{total};
    cmp_ok($total, '>=', 3, 'the counters count');
    $nginx->{workers} = 4;
    $nginx->reload(http => $http);
    ok(wait_until(sub { ($max = pool_max($nginx)) == 8 }, 10, 0.1),
       'worker_processes 4 on a reload: pool.max is 8')
        or diag "pool.max is $max";
    is(health($nginx)->{sessionCache}{metrics}{total}, $total,
       'worker_processes changed on a reload: the counters go on');
    no_alerts($nginx);
}

# --- a worker without a slot tries again --------------------------------
#
# One worker: two slots. A request held open in each of two generations of
# workers keeps both from exiting, so the third generation's worker finds
# no free slot; once the held requests end, it takes one.

{
    my $upstream = IO::Socket::INET->new(
        Listen => 8, LocalAddr => '127.0.0.1', LocalPort => free_port(),
        Proto => 'tcp', ReuseAddr => 1, Timeout => 10)
        or die "listen: $!";
    my $UP = $upstream->sockport;

    my $nginx = start_nginx(workers => 1, http => <<~"NGX");
        session_cache_redis $REDIS_URL pool=2;
        server {
            listen 127.0.0.1:%%PORT%%;
            location = /health { session_cache_health; }
            location = /hang {
                proxy_pass http://127.0.0.1:$UP;
                proxy_read_timeout 60s;
            }
        }
        NGX

    ok(wait_until(sub { pool_max($nginx) == 2 }, 10, 0.1),
       'one worker: pool.max is 2');

    # A request that stays in the current worker until its upstream
    # connection, accepted here, is closed.
    my (@held, @upstreams);
    my $hold = sub ($what) {
        push @held, send_many(1, sub ($i) { ('/hang', port => $nginx->port,
                                             timeout => 30) });
        my $c = $upstream->accept;
        ok($c, "$what: a request held in the worker") or return;
        push @upstreams, $c;
    };

    # SIGHUP without waiting for the old worker to go (it cannot).
    my $hup = sub ($what) {
        my %old = map { $_ => 1 } $nginx->worker_pids;
        kill 'HUP', $nginx->master_pid;
        ok(wait_until(sub { grep { !$old{$_} } $nginx->worker_pids }, 10),
           "$what: a new worker started");
    };

    $hold->('first generation');
    $hup->('reload 1');
    $hold->('second generation');
    $hup->('reload 2');

    ok(wait_until(sub { $nginx->error_log =~ /no free metrics slot \(2 slots\)/ }),
       'reload 2: the new worker finds no free slot (both old ones hold theirs)');
    is(pool_max($nginx), 4, 'meanwhile pool.max counts the two old workers');

    close $_ for @upstreams;
    my @answers = collect(@held);
    is(scalar(grep { $_->{status} == 502 } @answers), 2,
       'the held requests end (502: their upstream closed)');

    ok(wait_until(sub { $nginx->worker_pids == 1 }, 10),
       'the old workers exit');
    ok(wait_until(sub { $nginx->error_log =~ /metrics slot found/ }, 10),
       'the new worker tries again and finds a slot');
    is(pool_max($nginx), 2, 'pool.max is 2: the new worker is counted');
    no_alerts($nginx);
}

done_testing;
