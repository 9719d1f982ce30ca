# Secrets under failure (SPEC §7): a wrong Redis password (WRONGPASS), a
# wrong Postgres password, a port nothing listens on and a host name that
# does not resolve. The error log, `nginx -t` and the health document
# (JSON and Prometheus) name the backend and the cause, and none holds a
# password, right or wrong. `file=` secrets are read again on reload.

use v5.36;
use Test::More;
use File::Temp qw(tempdir);
use SessionCache::Test;

my $REDIS_PW = 'R3dis-Right-pw-41c9';
my $WRONG_R  = 'R3dis-Wrong-pw-8e2a';
my $WRONG_P  = 'pg-Wrong-pw-5d7f';

my $redis = start_redis(requirepass => $REDIS_PW);
my $pg    = start_postgres();
my $PG_PW = $pg->password;
my @SECRETS = ($REDIS_PW, $WRONG_R, $WRONG_P, $PG_PW);

my $dir = tempdir('sc-secrets-XXXXXX', TMPDIR => 1, CLEANUP => !$ENV{TEST_KEEP});
chmod 0755, $dir;

sub write_secret ($name, $content) {
    my $path = "$dir/$name";
    open my $fh, '>', "$path.new" or die "$path: $!";
    print {$fh} "$content\n";
    close $fh;
    chmod 0644, "$path.new";
    rename "$path.new", $path or die "rename $path: $!";
    return $path;
}

sub status_of ($r) { $r->{headers}{'x-session-status'} // '' }

sub pg_dsn (%o) {
    my $port = $o{port} // $pg->port;
    my $host = $o{host} // '127.0.0.1';
    my $pw   = $o{password} // $PG_PW;
    return "host=$host port=$port dbname=sessions user=nginx password=$pw";
}

sub redis_url (%o) {
    my $port = $o{port} // $redis->port;
    my $host = $o{host} // '127.0.0.1';
    my $pw   = $o{password} // $REDIS_PW;
    return "redis://default:$pw\@$host:$port/0";
}

sub opts_r { 'pool=2 connect_timeout=300ms timeout=300ms' }
sub opts_p { 'pool=2 connect_timeout=1s timeout=1s' }

sub site (%o) {
    return protected_site(
        redis    => qq{"$o{redis}" } . opts_r(),
        postgres => qq{"$o{postgres}" } . opts_p(),
        server   => 'location = /health { session_cache_health timeout=2s; }');
}

# The health document, JSON and Prometheus: it names the backend and the
# cause ($cause, a pattern), and holds no password.
sub health_check ($name, $cause) {
    for my $path ('/health', '/health?format=prometheus') {
        my $r = get($path);
        like($r->{body}, $cause, "$name: $path names the backend and the cause")
            or diag $r->{body} unless $path =~ /prometheus/;
        no_secret_in($r->{body}, "$name: $path");
        diag $r->{body} if $ENV{TEST_SHOW_HEALTH};
    }
}

# Nothing in $text may hold any password of this test.
sub no_secret_in ($text, $what) {
    my @found = grep { index($text, $_) >= 0 } @SECRETS;
    ok(!@found, "$what holds no password") or diag "found: @found";
}

# nginx -t on $http: passes or fails as expected, never shows a password.
sub config_check ($name, $http, %o) {
    my ($rc, $out) = check_config(http => $http);
    if ($o{fails}) {
        isnt($rc, 0, "$name: nginx -t fails");
        like($out, $o{fails}, "$name: nginx -t names the backend and the cause")
            or diag $out;
    } else {
        is($rc, 0, "$name: nginx -t passes (it opens no connection)") or diag $out;
    }
    no_secret_in($out, "$name: nginx -t output");
    return $out;
}

my $n = 0;
sub session () {
    my $tok = 'tok-secret-' . ++$n;
    $pg->add_session($tok, "user-$n", 3600);
    return $tok;
}

# ------------------------------------------------ wrong Redis password

{
    my $http = site(redis => redis_url(password => $WRONG_R),
                    postgres => pg_dsn());
    config_check('wrong Redis password', $http);
    my $nginx = start_nginx(http => $http);
    my $r = get('/', cookie => 'session=' . session());
    is($r->{status}, 200, 'wrong Redis password: a valid session, 200 via Postgres');
    is(status_of($r), 'BYPASS', 'wrong Redis password: BYPASS');
    ok(wait_until(sub { $nginx->error_log =~ /redis.*WRONGPASS/ }, 2),
       'wrong Redis password: the error log names Redis and WRONGPASS')
        or diag $nginx->error_log;
    like($nginx->error_log, qr{redis://default:\*\*\*\@127\.0\.0\.1:\d+/0},
         'wrong Redis password: the address is shown masked');
    health_check('wrong Redis password', qr/redis: [^"]*AUTH refused/);
    like(get('/health')->{body}, qr/redis: [^"]*AUTH refused: WRONGPASS/,
         'wrong Redis password: /health quotes WRONGPASS');
    no_alerts($nginx, 'wrong Redis password: no alerts');
    no_secret_in($nginx->error_log, 'wrong Redis password: the error log');
}

# --------------------------------------------- wrong Postgres password

{
    my $http = site(redis => redis_url(), postgres => pg_dsn(password => $WRONG_P));
    config_check('wrong Postgres password', $http);
    my $nginx = start_nginx(http => $http);
    my $r = get('/', cookie => 'session=' . session());
    is($r->{status}, 503, 'wrong Postgres password: an uncached session, 503');
    ok(wait_until(sub {
        $nginx->error_log =~ /postgres.*password authentication failed/i }, 2),
       'wrong Postgres password: the error log names Postgres and '
       . '"password authentication failed"') or diag $nginx->error_log;
    like($nginx->error_log, qr/password=\*\*\*/,
         'wrong Postgres password: the conninfo is shown masked');
    health_check('wrong Postgres password',
                 qr/postgres.*password authentication failed/is);
    no_alerts($nginx, 'wrong Postgres password: no alerts');
    no_secret_in($nginx->error_log, 'wrong Postgres password: the error log');
}

# ------------------------------------------- a port nothing listens on

{
    my ($rp, $pp) = (free_port(), free_port());
    my $http = site(redis => redis_url(port => $rp),
                    postgres => pg_dsn(port => $pp));
    config_check('unreachable ports', $http);
    my $nginx = start_nginx(http => $http);
    my $r = get('/', cookie => 'session=' . session());
    is($r->{status}, 503, 'both ports unreachable: 503');
    ok(wait_until(sub { $nginx->error_log =~ /redis.*refused/i }, 2),
       'unreachable port: the error log names Redis and "refused"')
        or diag $nginx->error_log;
    ok(wait_until(sub { $nginx->error_log =~ /postgres.*refused/i }, 2),
       'unreachable port: the error log names Postgres and "refused"')
        or diag $nginx->error_log;
    health_check('unreachable ports', qr/redis.*refused.*postgres.*refused|postgres.*refused.*redis.*refused/is);
    no_alerts($nginx, 'unreachable ports: no alerts');
    no_secret_in($nginx->error_log, 'unreachable ports: the error log');
}

# ---------------------------------------------- an unknown host name

{
    my $host = 'no-such-host.invalid';
    config_check('unknown Redis host',
        site(redis => redis_url(host => $host), postgres => pg_dsn()),
        fails => qr/session_cache_redis.*(\Q$host\E|translate|resolve)/is);
    config_check('unknown Postgres host',
        site(redis => redis_url(), postgres => pg_dsn(host => $host)),
        fails => qr/session_cache_postgres.*(\Q$host\E|translate|resolve)/is);
}

# ------------------------------------------ file= secrets on reload

{
    my $rfile = write_secret('redis.url', redis_url(password => $WRONG_R));
    my $pfile = write_secret('pg.dsn', pg_dsn(password => $WRONG_P));
    my $nginx = start_nginx(http => protected_site(
        redis    => "file=$rfile " . opts_r(),
        postgres => "file=$pfile " . opts_p()));
    my $tok = session();
    my $r = get('/', cookie => "session=$tok");
    is($r->{status}, 503, 'file= secrets, both passwords wrong: 503');

    write_secret('redis.url', redis_url());
    write_secret('pg.dsn', pg_dsn());
    my $conf = $nginx->dir . '/nginx.conf';
    my %old = map { $_ => 1 } $nginx->worker_pids;
    # nginx -s reload, with the environment the harness gives nginx (the
    # sanitizer runtimes under make test-asan)
    my ($rc, $out) = SessionCache::Test::_run(env => $nginx->_env({}),
        cmd => [$nginx->{bin}, '-p', $nginx->dir . '/', '-c', $conf,
                '-s', 'reload']);
    is($rc, 0, 'nginx -s reload') or diag $out;
    ok(wait_until(sub {
        my @now = $nginx->worker_pids;
        !grep({ $old{$_} } @now) && @now >= $nginx->workers;
    }, 10), 'the workers were replaced');

    $r = get('/', cookie => "session=$tok");
    is($r->{status}, 200, 'after the files changed and a reload: 200');
    is(status_of($r), 'MISS', 'through Redis and Postgres, with the new passwords: MISS');
    ok(defined $redis->wait_for_key("session:$tok", 2),
       'the session is cached: Redis accepted the new password');
    no_alerts($nginx, 'file= reload: no alerts');
    no_secret_in($nginx->error_log, 'file= reload: the error log');
}

done_testing;
