# The health probes never block a worker (SPEC §4, §6): with Redis
# SIGSTOPped (connections accepted by the kernel, never answered), 50
# concurrent health requests all answer once their probe's deadline has
# passed, not later, while a location without auth_session stays fast.
#
# The figures are far apart on purpose. Every probe waits the whole 1 s
# deadline; an unprotected request takes a few ms (tens on a loaded
# machine), so half the deadline tells a worker that blocked from one that
# did not. A health answer comes at the deadline; one second of slack
# fails probes that outlive it or wait one after another (50 x 1 s), and
# leaves a loaded machine room.

use v5.36;
use Test::More;
use Time::HiRes qw(time);
use List::Util qw(max min);
use JSON::PP ();
use SessionCache::Test;

my $redis = start_redis();
my $pg    = start_postgres();

my $TIMEOUT_MS = 1000;    # session_cache_health timeout=, and Redis's
my $PUBLIC_MS  = $TIMEOUT_MS / 2;
my $SLACK_MS   = 1000;
my $nginx = start_nginx(http => protected_site(
    redis    => $redis->url . ' pool=2 connect_timeout=1s timeout=1s',
    postgres => '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=1s',
    server   => <<~"NGX"));
        location = /health {
            session_cache_health threshold=1s timeout=${TIMEOUT_MS}ms;
        }
        NGX

my $json = JSON::PP->new;

# Warm up: both workers have connections to both backends.
my @warm = get_many(10, sub ($i) { ('/health') });
is(scalar(grep { $_->{status} == 200 } @warm), 10, 'warm-up: 10 health answers, 200');

$redis->pause;
my $paused_at = time;

my @pending = send_many(50, sub ($i) { ('/health') });

my @public;
push @public, get('/public.html') for 1 .. 10;

my @health = collect(@pending);
my $answered_at = time;
$redis->resume;

is(scalar(grep { $_->{status} == 200 && $_->{body} eq "public\n" } @public), 10,
   'meanwhile: 10 requests for an unprotected location, 200');
my $public_max = max map { $_->{ms} } @public;
cmp_ok($public_max, '<', $PUBLIC_MS,
       sprintf("meanwhile: each took under $PUBLIC_MS ms (max %.1f ms)", $public_max));

cmp_ok(min(map { $_->{t1} } @health), '>', max(map { $_->{t1} } @public),
       'meanwhile: the health requests were all still waiting');

my @bad = grep { $_->{status} != 200 } @health;
ok(!@bad, 'Redis hung: all 50 health requests answered 200 (degraded, Postgres answers)')
    or diag join ', ', map { "$_->{status}" . ($_->{error} ? " ($_->{error})" : '') } @bad;

my @status = map { (eval { $json->decode($_->{body}) } // {})->{status} // '' } @health;
is(scalar(grep { $_ eq 'degraded' } @status), 50, 'Redis hung: all 50 say degraded');

my $slowest = max map { $_->{ms} } @health;
my $bound = $TIMEOUT_MS + $SLACK_MS;
cmp_ok($slowest, '<', $bound,
       sprintf('Redis hung: each answered within the probe timeout '
               . '(+%d ms slack): max %.0f ms', $SLACK_MS, $slowest));
note sprintf 'health answers while Redis was stopped: max %.0f ms, all within %.0f ms of the pause',
    $slowest, ($answered_at - $paused_at) * 1000;

# Redis back: healthy again.
ok(wait_until(sub {
    my $d = eval { $json->decode(get('/health')->{body}) } // {};
    ($d->{status} // '') eq 'healthy';
}, 10, 0.2, 'a healthy document'), 'Redis resumed: healthy again');

no_alerts($nginx);

# --- the directive's timeout bounds a probe the pool would wait longer for

my $slow = start_nginx(http => protected_site(
    redis    => $redis->url . ' pool=2 connect_timeout=1s timeout=5s',
    postgres => '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=1s',
    server   => <<~"NGX"));
        location = /health {
            session_cache_health threshold=1s timeout=300ms;
        }
        NGX

get_many(4, sub ($i) { ('/health') });
$redis->pause;
@health = get_many(20, sub ($i) { ('/health') });
$redis->resume;

my @why = map { (eval { $json->decode($_->{body}) } // {})->{errors} // [] } @health;
is(scalar(grep { $_->{status} == 200 } @health), 20,
   'Redis timeout=5s, health timeout=300ms, Redis hung: 20 x 200');
is(scalar(grep { grep { /^redis: .*probe timed out after 300ms/ } @$_ } @why), 20,
   'each names the probe timeout')
    or diag explain $why[0];
$slowest = max map { $_->{ms} } @health;
# far below the pool's 5 s: the directive's 300 ms bounds the probe
cmp_ok($slowest, '<', 300 + $SLACK_MS,
       sprintf('each answered within 300 ms (+%d ms slack): max %.0f ms',
               $SLACK_MS, $slowest));

no_alerts($slow, 'the slow-Redis nginx: no alerts');

done_testing;
