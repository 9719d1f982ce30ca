# Postgres primary and a streaming standby (SPEC §11, issue 15):
#   - target_session_attrs=prefer-standby, the primary listed first: libpq
#     walks past it, the lookups go to the standby (counted in each
#     server's statement log), and the health document says where the
#     pool is, that it is a standby, and how far it replays behind;
#   - target_session_attrs=read-write, the standby listed first: the
#     lookups go to the primary;
#   - a host that accepts the TCP connection and never answers costs
#     connect_timeout, then the walk goes on with the next host (the
#     module's timer is per host, as libpq's own connect_timeout).

use v5.36;
use Test::More;
use Time::HiRes qw(time);
use IO::Socket::INET;
use SessionCache::Test;

my $primary = start_postgres();
my $standby = $primary->start_standby;
my $PW      = $primary->password;

sub site ($dsn, $params) {
    return protected_site(
        postgres => qq{"$dsn" pool=2 $params},
        server   => "location = /health { session_cache_health "
                  . "threshold=5s timeout=2s; }");
}

my @valid = map { "tok-standby-$_" } 1 .. 10;
$primary->add_session($_, "user-$_", 3600) for @valid;
$standby->wait_replayed($primary);

# ---------------------------------------------------------- prefer-standby
# One worker: the health document shows the pool that served.
my $nginx = start_nginx(workers => 1, http => site(
    $primary->hosts_dsn([$primary, $standby],
                        target_session_attrs => 'prefer-standby'),
    'connect_timeout=1s timeout=2s'));

my @r = map { get('/', cookie => "session=$_") } @valid;
is(scalar(grep { $_->{status} == 200 } @r), 10,
   'prefer-standby: every valid session is accepted');
is($standby->query_count, 10, 'prefer-standby: the standby answered all 10');
is($primary->query_count, 0, 'prefer-standby: the primary answered none');

my ($h, $doc) = $nginx->health;
my @hosts = @{ $doc->{postgres}{hosts} // [] };
my ($on) = grep { $_->{pool} eq 'main' } @hosts;
ok($on, 'health: postgres.hosts names the main pool') or diag explain $doc;
is($on->{port}, $standby->port, 'health: the main pool is on the standby');
is($on->{host}, '127.0.0.1', 'health: by the configured host name');
is($on->{role}, 'standby', 'health: which is a standby');
ok(defined $on->{replicationLagMs} && $on->{replicationLagMs} >= 0,
   "health: its replication lag, probed ($on->{replicationLagMs} ms)");
unlike($h->{body}, qr/\Q$PW\E/, 'health: no password');
{
    my $p = $nginx->get('/health?format=prometheus')->{body};
    my $sp = $standby->port;
    like($p, qr/^nginx_session_cache_postgres_host_connections\{pool="main",host="127\.0\.0\.1",port="$sp",role="standby"\} [1-9]\d*$/m,
         'Prometheus: the main pool\'s connections, on the standby');
    like($p, qr/^nginx_session_cache_postgres_replication_lag_seconds\{pool="main",host="127\.0\.0\.1",port="$sp",role="standby"\} \d/m,
         'Prometheus: the standby\'s replication lag');
    promtool_ok($p, 'Prometheus with postgres hosts');
}

# ---------------------------------------------------------- read-write
$nginx->reload(http => site(
    $primary->hosts_dsn([$standby, $primary],
                        target_session_attrs => 'read-write'),
    'connect_timeout=1s timeout=2s'));
my $before = $standby->query_count;
@r = map { get('/', cookie => "session=$_") } @valid;
is(scalar(grep { $_->{status} == 200 } @r), 10,
   'read-write: every valid session is accepted');
is($primary->query_count, 10, 'read-write: the primary answered all 10');
is($standby->query_count, $before, 'read-write: the standby answered none');
($h, $doc) = $nginx->health;
($on) = grep { $_->{pool} eq 'main' } @{ $doc->{postgres}{hosts} // [] };
is($on->{role} // '', 'primary', 'health: the main pool is on a primary');
is($on->{replicationLagMs}, undef, 'health: a primary has no lag');

# ---------------------------------------------------------- a silent host
# The kernel completes the handshake into the backlog; nobody reads the
# startup packet.
my $silent = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                   Listen => 16, Proto => 'tcp')
    or die "listen: $!";
my $since = $nginx->log_size;
$nginx->reload(http => site($primary->hosts_dsn([$silent->sockport, $primary]),
                            'connect_timeout=1s timeout=5s'));
my $t0 = time;
my $res = get('/', cookie => "session=$valid[0]");
my $took = time - $t0;
is($res->{status}, 200, 'a silent first host: the next host answers');
# the figure protects: the silent host cost its connect_timeout (1 s),
# not the request's whole timeout (5 s); the next host has a connect_timeout
# of its own (a busy machine may take a while to start a backend)
ok($took >= 0.99 && $took < 4,
   sprintf('... after one connect_timeout on the silent host (%.2f s)', $took));
ok($nginx->wait_for_log(qr/port \Q${\ $silent->sockport }\E did not answer within connect_timeout, trying the next host/, 1, $since),
   '... the log names the host skipped');

unlike($nginx->error_log, qr/\Q$PW\E/, 'no password in the error log');
no_alerts($nginx);
done_testing;
