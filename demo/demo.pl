#!/usr/bin/env perl
# ngx_session_cache demo: Redis, Postgres (with four sample sessions and
# contrib/revocation.sql's trigger) and nginx with the module protecting
# /app/ (revocation from Postgres on), all on free 127.0.0.1 ports.
# Prints curl commands to try, runs them once itself, then waits for
# Ctrl-C and stops everything it started.
#
#   perl demo/demo.pl                  # after ./build.sh
#   DEMO_NO_WAIT=1 perl demo/demo.pl   # self-check only, then exit
#
# Environment: SESSION_CACHE_MODULE (the .so, default build/...),
# NGINX_BIN, TEST_KEEP=1 (keep the temporary directories).

use v5.36;
use FindBin ();
use lib "$FindBin::Bin/../t/lib";
use SessionCache::Test;
use Time::HiRes qw(time);

$| = 1;
my $stop = 0;
# Set unconditionally: the harness only installs its own handlers when the
# signals are at their defaults.
$SIG{INT} = $SIG{TERM} = sub { $stop = 1 };

say 'ngx_session_cache demo';
say '  starting Redis...';
my $redis = start_redis();
say '  starting Postgres (initdb, reference table, sample sessions)...';
my $pg = start_postgres();
my %sessions = (
    valid   => ['demo-valid-token',   'alice', 3600],
    revoked => ['demo-revoked-token', 'bob',   3600, revoked => 1],
    expired => ['demo-expired-token', 'carol', -3600],
    logout  => ['demo-logout-token',  'dave',  3600],
);
$pg->add_session(@$_) for values %sessions;
say '  installing contrib/revocation.sql (the trigger that sends revoked tokens)...';
$pg->psql(SessionCache::Test::_slurp("$FindBin::Bin/../contrib/revocation.sql"));

say '  starting nginx with the module...';
my $H = session_headers();
my $nginx = new_nginx();
$nginx->write_html('app/index.html', "Welcome to the app, you are signed in.\n");
$nginx->start(http => <<~"NGX");
    session_cache_redis    ${\ $redis->url } pool=4 connect_timeout=1s timeout=200ms;
    session_cache_postgres "${\ $pg->dsn }" pool=2 connect_timeout=2s timeout=1s;
    session_cache_ttl      300s;
    session_cache_negative_ttl 10s;
    session_cache_breaker  errors=50% window=10s cooldown=5s;
    session_cache_revocation channel=session_cache_revoke;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /app/ {
            root %%HTML%%;
            auth_session \$cookie_session;
            $H
        }

        location = /health {
            session_cache_health;
            allow 127.0.0.1;
            deny all;
        }

        location = / {
            return 200 "ngx_session_cache demo: try /app/\\n";
        }
    }
    NGX

my $port = $nginx->port;
my $url  = "http://127.0.0.1:$port/app/";

say '';
say "nginx     http://127.0.0.1:$port/   (pid ${\ $nginx->master_pid }, files in ${\ $nginx->dir })";
say "redis     127.0.0.1:${\ $redis->port }   redis-cli -p ${\ $redis->port } keys 'session:*'";
say "postgres  127.0.0.1:${\ $pg->port }   PGPASSWORD='${\ $pg->password }' psql -h 127.0.0.1 -p ${\ $pg->port } -U nginx sessions";
say '';
say 'Sessions in platform.user_sessions:';
say "  demo-valid-token    alice  valid for an hour";
say "  demo-revoked-token  bob    revoked";
say "  demo-expired-token  carol  expired an hour ago";
say "  demo-logout-token   dave   valid, revoked by the self-check below (in Postgres only)";
say '';
say 'Try:';
say "  curl -i --cookie 'session=demo-valid-token' $url     # 200, X-Session-User: alice, MISS then HIT";
say "  curl -i --cookie 'session=demo-revoked-token' $url   # 401";
say "  curl -i --cookie 'session=no-such-token' $url        # 401, then NEGATIVE";
say "  curl -i $url                                         # 401 REJECTED (no cookie)";
say "  curl -s http://127.0.0.1:$port/health | jq .               # health, metrics, breakers";
say "  curl -s 'http://127.0.0.1:$port/health?format=prometheus'  # the same for Prometheus";
say "  kill -STOP ${\ $redis->pid }; curl -i --cookie 'session=demo-valid-token' $url; kill -CONT ${\ $redis->pid }";
say "                                         # Redis hung: 200 BYPASS through Postgres, after the 200ms Redis timeout";
say "  psql -h ${\ $pg->{sock} } -p ${\ $pg->port } -U postgres sessions \\";
say "       -c \"UPDATE platform.user_sessions SET revoked_at = now() WHERE token = 'demo-valid-token'\"";
say "                                         # revoked in Postgres alone: the next request is 401 (the trigger";
say "                                         # notifies, nginx drops the cached session from Redis)";
say '';

# --- self-check ----------------------------------------------------------

say 'Self-check:';
my @checks = (
    ['valid cookie',           'demo-valid-token',   200, 'MISS', 'alice'],
    ['valid cookie, again',    'demo-valid-token',   200, 'HIT',  'alice'],
    ['revoked cookie',         'demo-revoked-token', 401, undef,  ''],
    ['expired cookie',         'demo-expired-token', 401, undef,  ''],
    ['bad cookie',             'no-such-token',      401, undef,  ''],
    ['bad cookie, again',      'no-such-token',      401, 'NEGATIVE', ''],
    ['no cookie',              undef,                401, 'REJECTED', ''],
);
my $failures = 0;
for my $c (@checks) {
    my ($name, $token, $want, $want_status, $want_user) = @$c;
    my $r = get('/app/', defined $token ? (cookie => "session=$token") : ());
    my $status = $r->{headers}{'x-session-status'} // '';
    my $user   = $r->{headers}{'x-session-user'}   // '';
    my $ok = $r->{status} == $want
          && (!defined $want_status || $status eq $want_status)
          && $user eq $want_user;
    $failures++ unless $ok;
    printf "  %-4s %-22s %-28s X-Session-Status: %-9s X-Session-User: %s%s\n",
        $ok ? 'ok' : 'FAIL', $name,
        $r->{status_line} // "no response ($r->{error})", $status, $user,
        $ok ? '' : "   (expected $want" . (defined $want_status ? " $want_status" : '') . ')';
    # Let the cache fill land before the next request for the same token.
    $redis->wait_for_key("session:$token", 1) if defined $token && $r->{status} != 0;
}
# revocation from Postgres: dave's session, cached, revoked in the database
# alone; the listener deletes the Redis key, the next request is refused
{
    my $listening = wait_until(sub { get('/health')->{body} =~ /"listening":\s*true/ }, 10, 0.05);
    my $r1 = get('/app/', cookie => 'session=demo-logout-token');
    $redis->wait_for_key('session:demo-logout-token', 1);
    my $r2 = get('/app/', cookie => 'session=demo-logout-token');
    my $t0 = time;
    $pg->psql("UPDATE platform.user_sessions SET revoked_at = now() "
            . "WHERE token = 'demo-logout-token'");
    my $r3;
    my $refused = wait_until(sub {
        ($r3 = get('/app/', cookie => 'session=demo-logout-token'))->{status} == 401
    }, 2, 0.005);
    my $ms = (time - $t0) * 1000;
    my $ok = $listening && $r1->{status} == 200 && $r2->{status} == 200
          && ($r2->{headers}{'x-session-status'} // '') eq 'HIT' && $refused;
    $failures++ unless $ok;
    printf "  %-4s %-22s %-28s %s\n", $ok ? 'ok' : 'FAIL', 'revoked in Postgres',
        $r3->{status_line} // "no response ($r3->{error})",
        sprintf('200 HIT before; refused %.0f ms after the UPDATE (psql included)', $ms);
}
{
    my $r = get('/health');
    my $ok = $r->{status} == 200 && $r->{body} =~ /"status":\s*"healthy"/;
    $failures++ unless $ok;
    printf "  %-4s %-22s %-28s %s\n", $ok ? 'ok' : 'FAIL', 'health document',
        $r->{status_line} // "no response ($r->{error})",
        $r->{body} =~ /"hitRate":\s*([\d.]+)/ ? "hitRate: $1%" : '';
}
my @alerts = grep { /\[(alert|emerg|crit)\]/ } split /\n/, $nginx->error_log;
say @alerts ? "  FAIL error log: @alerts" : '  ok   error log: no alerts';
$failures += @alerts;
say $failures ? "Self-check: $failures FAILED" : 'Self-check: all ok';

if ($ENV{DEMO_NO_WAIT}) {
    say 'DEMO_NO_WAIT set: stopping.';
    exit($failures ? 1 : 0);
}

say '';
say 'Running. Press Ctrl-C to stop.';
sleep 1 until $stop;
say "\nStopping nginx, Redis and Postgres...";
$nginx->stop;
$redis->stop;
$pg->stop;
say 'Stopped.';
exit 0;
