# The lag guard (SPEC §11, issue 15): the standby applies WAL 2 s late
# (recovery_min_apply_delay), the pool prefers it.
#   - a session inserted on the primary and asked for at once: the standby
#     has no row yet, the primary is asked and has it: 200, cached as a
#     session, never as a negative;
#   - an unknown token: 401 once the primary said so too;
#   - the primary stopped: an unknown token gets 401 and nothing is
#     remembered, neither in Redis nor in L1 (the next request asks again);
#   - the standby promoted: its "no row" is final again.

use v5.36;
use Test::More;
use Time::HiRes qw(time);
use SessionCache::Test;

my $redis   = start_redis();
my $primary = start_postgres();
my $standby = $primary->start_standby(
    conf => { recovery_min_apply_delay => '2s' });
my $PW = $primary->password;

my $dsn = $primary->hosts_dsn([$standby, $primary],
                              target_session_attrs => 'prefer-standby');

my $nginx = start_nginx(workers => 1, http => protected_site(
    redis    => $redis->url . ' pool=2 timeout=500ms',
    postgres => qq{"$dsn" pool=2 connect_timeout=1s timeout=2s},
    http     => "session_cache_negative_ttl 60s;\n"
              . "session_cache_l1 size=1m ttl=30s tracking=off;"));

sub on_standby ($tok) {
    $standby->psql('SELECT count(*) FROM platform.user_sessions WHERE token = '
                   . $standby->quote($tok));
}

# ---------------------------------------------------------- a fresh login
my $fresh = 'tok-lag-fresh';
$primary->add_session($fresh, 'user-fresh', 3600);
my $r = get('/', cookie => "session=$fresh");
is(on_standby($fresh), 0, 'the standby has not replayed the login yet');
is($r->{status}, 200, 'a session created a moment ago on the primary: 200');
is($r->{headers}{'x-session-user'}, 'user-fresh', '... its user');
is($standby->queries_for($fresh), 1, '... asked on the standby first');
is($primary->queries_for($fresh), 1, '... and confirmed on the primary');
# the cache fill is sent after the answer
my $cached = $redis->wait_for_key("session:$fresh") // '';
like($cached, qr/user-fresh/, '... and cached as a session, not a negative');
$r = get('/', cookie => "session=$fresh");
is($r->{status}, 200, '... asked again: 200 from the cache');
is($primary->queries_for($fresh) + $standby->queries_for($fresh), 2,
   '... without a new query');

# ---------------------------------------------------------- unknown token
my $unknown = 'tok-lag-unknown';
$r = get('/', cookie => "session=$unknown");
is($r->{status}, 401, 'an unknown token: 401');
is($standby->queries_for($unknown), 1, '... the standby had no row');
is($primary->queries_for($unknown), 1, '... nor had the primary');
ok(defined $redis->wait_for_key("session:$unknown"),
   '... confirmed: remembered as invalid');

# ---------------------------------------------------------- no primary
$primary->stop;
my $since = $nginx->log_size;
my $lost = 'tok-lag-no-primary';
$r = get('/', cookie => "session=$lost");
is($r->{status}, 401, 'no primary: an unknown token still gets 401');
ok($nginx->wait_for_log(qr/no primary (?:can confirm|confirmed) it/, 1,
                        $since), '... the log says why it is not remembered');
is($redis->key_exists("session:$lost"), 0, '... no negative entry in Redis');
$r = get('/', cookie => "session=$lost");
is($r->{status}, 401, '... asked again: 401');
is($r->{headers}{'x-session-status'}, 'MISS',
   '... from Postgres again, not from a negative entry (Redis or L1)');
is($standby->queries_for($lost), 2, '... the standby was asked twice');

# A burst of unknown tokens while the primary is down: each gets 401 and
# none is remembered, but they do not each cost a connection attempt (one
# that walks the host list, and is refused by the standby, read-only,
# after a whole startup there): after one fails, the lag guard does not
# try again for 1 s.
{
    my $attempt = qr/\[error\].*session_cache: postgres primary: /;
    ok($nginx->log_count($attempt, $since) >= 1,
       'no primary: the failed attempts to reach it are logged');
    my $mark = $nginx->log_size;
    my $t0 = time;
    my @burst = map { "tok-lag-burst-$_" } 1 .. 30;
    my @st = map { get('/', cookie => "session=$_")->{status} } @burst;
    my $secs = time - $t0;
    is(scalar(grep { $_ != 401 } @st), 0, 'no primary, 30 unknown tokens: each 401');
    is(scalar(grep { $redis->key_exists("session:$_") } @burst), 0,
       '... none remembered');
    my $tries = $nginx->log_count($attempt, $mark);
    # one worker: one attempt, then one a second at most
    cmp_ok($tries, '<=', int($secs) + 1,
           sprintf('... %d connection attempts to the primary in %.2f s', $tries, $secs));
    ok($nginx->log_count(qr/no primary reached less than a second ago/, $mark) >= 1,
       '... the others were refused without one, and the log says so');
}

$r = get('/', cookie => "session=$fresh");
is($r->{status}, 200, 'a cached session still works without the primary');

# ---------------------------------------------------------- promoted
# The standby's connections stay; the server now reports in_hot_standby
# off, so its "no row" is final and remembered.
$standby->promote;
my $after = 'tok-lag-promoted';
$r = get('/', cookie => "session=$after");
is($r->{status}, 401, 'the standby promoted: an unknown token gets 401');
ok(defined $redis->wait_for_key("session:$after"),
   '... and is remembered: the promoted server answered for itself');

unlike($nginx->error_log, qr/\Q$PW\E/, 'no password in the error log');
no_alerts($nginx);
done_testing;
