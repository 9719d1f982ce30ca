# Non-blocking, always (SPEC §4): a hung backend slows only the requests
# that need it, never a location without auth_session.
#
# Redis is SIGSTOPped (connections accepted by the kernel, never answered),
# 20 protected requests are written and left waiting for the 2 s Redis
# timeout, and meanwhile 10 sequential requests for an unprotected file
# must each be answered in well under that timeout. Then the protected
# ones must all finish, through Postgres, within about one timeout. The
# same with Postgres hung and nothing cached.

use v5.36;
use Test::More;
use Time::HiRes qw(time);
use List::Util qw(max min);
use SessionCache::Test;

my $redis = start_redis();
my $pg    = start_postgres();
my $nginx = start_nginx(http => protected_site(
    redis    => $redis->url . ' pool=2 connect_timeout=2s timeout=2s',
    postgres => '"' . $pg->dsn . '" pool=4 connect_timeout=2s timeout=2s'));

# The figures below tell a worker that waits for a hung backend from one
# that does not; the timeouts are long so that the two are far apart:
my $TIMEOUT_MS = 2000;
# - an unprotected request served by a worker that blocked on the hung
#   backend would wait for the whole timeout (2 s); one that did not
#   takes a few ms, tens on a loaded machine: 1 s separates the two.
my $PUBLIC_MS = $TIMEOUT_MS / 2;
# - a protected request waits for one timeout, then Postgres answers; one
#   queued behind other requests' timeouts would take two or more.
my $PROTECTED_MS = 2 * $TIMEOUT_MS - 250;

sub status_of ($r) { $r->{headers}{'x-session-status'} // '' }

my @tokens = map { "tok-nb-$_" } 0 .. 19;
$pg->add_session($_, "user-$_", 3600) for @tokens;

# Warm up: both workers get Redis and Postgres connections in their pools,
# and half of the sessions are cached.
my @warm = get_many(20, sub ($i) { ('/', cookie => "session=$tokens[$i % 10]") });
is(scalar(grep { $_->{status} == 200 } @warm), 20, 'warm-up: 20 x 200');
ok(wait_until(sub { !grep { !$redis->key_exists("session:$_") } @tokens[0 .. 9] },
              10, 0.02, 'the warm-up sessions in Redis'),
   'warm-up: sessions cached');

sub hang_and_probe ($what, $expect_status, $expect_cache_status) {
    my @pending = send_many(20, sub ($i) { ('/', cookie => "session=$tokens[$i]") });

    my @public;
    push @public, get('/public.html') for 1 .. 10;
    my $public_done = time;

    my @protected = collect(@pending);

    is(scalar(grep { $_->{status} == 200 && $_->{body} eq "public\n" } @public), 10,
       "$what: 10 unprotected requests answered 200");
    my @slow = grep { $_->{ms} >= $PUBLIC_MS } @public;
    ok(!@slow, "$what: each unprotected request took under $PUBLIC_MS ms "
               . sprintf('(max %.1f ms)', max map { $_->{ms} } @public))
        or diag join ', ', map { sprintf '%.1f ms', $_->{ms} } @public;

    my $first_done = min map { $_->{t1} } @protected;
    cmp_ok($first_done, '>', $public_done,
           "$what: the protected requests were all still waiting meanwhile");

    my @wrong = grep { $_->{status} != $expect_status
                       || (defined $expect_cache_status
                           && status_of($_) ne $expect_cache_status) } @protected;
    ok(!@wrong, "$what: all 20 protected requests answered $expect_status "
                . ($expect_cache_status // ''))
        or diag join ', ', map { "$_->{status} " . status_of($_)
                                 . ($_->{error} ? " ($_->{error})" : '') } @wrong;
    my $slowest = max map { $_->{ms} } @protected;
    cmp_ok($slowest, '<', $PROTECTED_MS,
           sprintf("$what: each protected request waited for one timeout, "
                   . "not two (max %.0f ms, timeout $TIMEOUT_MS ms)", $slowest));
}

# --- Redis hung --------------------------------------------------------------

$redis->pause;
hang_and_probe('Redis hung', 200, 'BYPASS');
$redis->resume;

# --- Postgres hung, Redis answering "not cached" ------------------------------

$redis->cli('FLUSHALL');
$pg->pause;
hang_and_probe('Postgres hung', 503, undef);
$pg->resume;

# Both back: service as usual.
ok(wait_until(sub { get('/', cookie => "session=$tokens[0]")->{status} == 200 },
              10, 0.25, 'a 200 after both resume'),
   'after both resume: 200 again');

no_alerts($nginx);
done_testing;
