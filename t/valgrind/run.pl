#!/usr/bin/env perl
# make test-valgrind: nginx (master_process off, daemon off) with the
# module, under valgrind memcheck, driven through hits, misses, negative
# entries, rejected tokens, the health document, Redis down (BYPASS) and
# both backends down (503), then stopped gracefully (SIGQUIT). Passes when valgrind reports
# no error: no invalid read or write, no use of uninitialised memory, and
# no definite leak (the suppressions in nginx.supp aside; each says why).
#
#   perl t/valgrind/run.pl        (from the repository root, after build)
#
# Environment: as for the harness (SESSION_CACHE_MODULE, NGINX_BIN), plus
# VALGRIND (default: valgrind from PATH) and TEST_KEEP=1 to keep the logs.

use v5.36;
use FindBin;
use lib "$FindBin::Bin/../lib";
use Test::More;
use Time::HiRes qw(time);
use POSIX qw(:sys_wait_h);
use SessionCache::Test;

my $t0 = time;
my $valgrind = $ENV{VALGRIND} // 'valgrind';
my $supp = "$FindBin::Bin/nginx.supp";

my $redis = start_redis();
my $pg    = start_postgres();

# The harness writes the configuration; this script starts nginx itself,
# under valgrind, so it gets valgrind's exit status.
my $nginx = new_nginx();
my $conf  = $nginx->dir . '/nginx.conf';
my $vglog = $nginx->dir . '/valgrind.log';
{
    open my $fh, '>', $conf or die "$conf: $!";
    print {$fh} $nginx->_config(main => 'master_process off;',
        http => protected_site(
            redis    => $redis->url . ' pool=2 connect_timeout=2s timeout=2s',
            postgres => '"' . $pg->dsn . '" pool=2 connect_timeout=3s timeout=3s',
            http     => 'session_cache_negative_ttl 10s;',
            server   => 'location = /health { session_cache_health timeout=5s; }'));
    close $fh;
}

my $pid = SessionCache::Test::_spawn(
    cmd => [$valgrind, '--tool=memcheck', '--error-exitcode=99',
            '--leak-check=full', '--show-leak-kinds=definite',
            '--errors-for-leak-kinds=definite', '--track-origins=yes',
            '--num-callers=30', "--suppressions=$supp",
            "--log-file=$vglog",
            $nginx->{bin}, '-p', $nginx->dir . '/', '-c', $conf,
            '-e', $nginx->dir . '/error.log'],
    env => $nginx->_env({}),
    stdout => $nginx->dir . '/nginx.stderr',
    stderr => $nginx->dir . '/nginx.stderr');
$nginx->{pid} = $pid;
$SessionCache::Test::NGINX = $nginx;

ok(wait_until(sub { SessionCache::Test::_port_accepts($nginx->port) }, 60, 0.2),
   'nginx under valgrind accepts connections') or BAIL_OUT(
    "nginx did not start:\n" . $nginx->error_log
    . SessionCache::Test::_slurp($vglog));

sub status_of ($r) { $r->{headers}{'x-session-status'} // '' }

# Generous timeouts: everything runs about 20 times slower under memcheck.
sub req ($cookie) { get('/', cookie => $cookie, timeout => 30) }

$pg->add_session("vg-tok-$_", "user-$_", 3600) for 1 .. 3;

for my $i (1 .. 3) {
    my $r = req("session=vg-tok-$i");
    is($r->{status}, 200, "session $i: 200");
    is(status_of($r), 'MISS', "session $i: MISS");
    ok(defined $redis->wait_for_key("session:vg-tok-$i", 10), "session $i cached");
}
for my $i (1 .. 3) {
    is(status_of(req("session=vg-tok-$i")), 'HIT', "session $i: HIT");
}

my $r = req('session=vg-unknown');
is($r->{status}, 401, 'unknown token: 401');
ok(defined $redis->wait_for_key('session:vg-unknown', 10), 'negative entry written');
is(status_of(req('session=vg-unknown')), 'NEGATIVE', 'unknown token again: NEGATIVE');

is(status_of(req('session=' . ('x' x 600))), 'REJECTED', 'implausible token (600 bytes): REJECTED');
is(status_of(req('x=1')), 'REJECTED', 'no token: REJECTED');
$redis->cli('SET', 'session:vg-bad', '{"user_id":');
is(req('session=vg-bad')->{status}, 401, 'malformed cached value: 401 via Postgres');

# The health document probes both backends through the same pools.
is(get('/health', timeout => 30)->{status}, 200, 'health document: 200');
is(get('/health?format=prometheus', timeout => 30)->{status}, 200,
   'health document, Prometheus: 200');

# Redis down: BYPASS through Postgres (connections dropped and refused).
$redis->stop;
$r = req('session=vg-tok-1');
is($r->{status}, 200, 'Redis down: 200');
is(status_of($r), 'BYPASS', 'Redis down: BYPASS');
is(req('session=vg-unknown2')->{status}, 401, 'Redis down, unknown token: 401');

# Both down: 503.
$pg->stop;
$r = req('session=vg-tok-2');
is($r->{status}, 503, 'both down: 503');
is(req('session=vg-tok-3')->{status}, 503, 'both down again: 503');
is(get('/health', timeout => 30)->{status}, 503, 'both down: health 503');

# Both back: served again from the same process.
$pg->start;
$redis->start;
ok(wait_until(sub { req('session=vg-tok-1')->{status} == 200 }, 20, 0.5),
   'both back: 200 again');

# Graceful stop; valgrind reports at exit.
kill 'QUIT', $pid;
my $status;
wait_until(sub {
    my $w = waitpid $pid, WNOHANG;
    $status = $? if $w == $pid;
    defined $status;
}, 120, 0.2);
$nginx->{pid} = undef;
ok(defined $status, 'nginx exited after SIGQUIT');
my $log = SessionCache::Test::_slurp($vglog);
my $code = defined $status ? $status >> 8 : -1;
is($code, 0, 'valgrind exit status 0 (no error: --error-exitcode=99)')
    or diag $log;
my ($errors) = $log =~ /ERROR SUMMARY: (\d+) errors/;
is($errors, 0, 'ERROR SUMMARY: 0 errors');
my ($definite) = $log =~ /definitely lost: ([\d,]+) bytes/;
is($definite // 0, 0, 'definitely lost: 0 bytes (after suppressions)');
unlike($log, qr/Invalid (read|write)|uninitialised|Invalid free/,
       'no invalid read, write or free, no uninitialised use');
my ($supp_n) = $log =~ /used_suppression:\s+(\d+)/;
diag "valgrind log: $vglog" if $ENV{TEST_KEEP};
diag($log =~ /(used_suppression:.*?)(?:\n==\d+== \n|\z)/s ? $1 : 'no suppression used')
    if $ENV{TEST_VERBOSE};
no_alerts($nginx, 'no alerts in the error log');
diag sprintf('test-valgrind took %.0f s', time - $t0);

done_testing;
