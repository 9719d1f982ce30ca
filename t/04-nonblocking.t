# Non-blocking, always (SPEC §4): a hung backend slows only the requests
# that need it, never a location without auth_session.
#
# Redis is SIGSTOPped (connections accepted by the kernel, never answered),
# 20 protected requests are written and left waiting, and meanwhile 10
# sequential requests for an unprotected file must each be answered in
# under 100 ms. Then the protected ones must all finish, through Postgres,
# well within 3 s. The same with Postgres hung and nothing cached.

use v5.36;
use Test::More;
use Time::HiRes qw(time);
use List::Util qw(max min);
use SessionCache::Test;

my $redis = start_redis();
my $pg    = start_postgres();
my $nginx = start_nginx(http => protected_site(
    redis    => $redis->url . ' pool=2 connect_timeout=1s timeout=1s',
    postgres => '"' . $pg->dsn . '" pool=4 connect_timeout=1s timeout=1s'));

sub status_of ($r) { $r->{headers}{'x-session-status'} // '' }

my @tokens = map { "tok-nb-$_" } 0 .. 19;
$pg->add_session($_, "user-$_", 3600) for @tokens;

# Warm up: both workers get Redis and Postgres connections in their pools,
# and half of the sessions are cached.
my @warm = get_many(20, sub ($i) { ('/', cookie => "session=$tokens[$i % 10]") });
is(scalar(grep { $_->{status} == 200 } @warm), 20, 'warm-up: 20 x 200');
ok(wait_until(sub { !grep { !$redis->key_exists("session:$_") } @tokens[0 .. 9] }, 2),
   'warm-up: sessions cached');

sub hang_and_probe ($what, $expect_status, $expect_cache_status) {
    my @pending = send_many(20, sub ($i) { ('/', cookie => "session=$tokens[$i]") });

    my @public;
    push @public, get('/public.html') for 1 .. 10;
    my $public_done = time;

    my @protected = collect(@pending);

    is(scalar(grep { $_->{status} == 200 && $_->{body} eq "public\n" } @public), 10,
       "$what: 10 unprotected requests answered 200");
    my @slow = grep { $_->{ms} >= 100 } @public;
    ok(!@slow, "$what: each unprotected request took under 100 ms")
        or diag join ', ', map { sprintf '%.1f ms', $_->{ms} } @public;
    note sprintf "$what: unprotected max %.1f ms", max map { $_->{ms} } @public;

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
    cmp_ok($slowest, '<', 3000,
           sprintf("$what: each protected request took well under 3 s (max %.0f ms)",
                   $slowest));
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
ok(wait_until(sub { get('/', cookie => "session=$tokens[0]")->{status} == 200 }, 5, 0.25),
   'after both resume: 200 again');

no_alerts($nginx);
done_testing;
