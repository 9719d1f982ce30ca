# Where connection strings come from (env=, file=) and Redis AUTH with the
# right and the wrong password.

use v5.36;
use Test::More;
use File::Temp qw(tempdir);
use SessionCache::Test;

my $redis  = start_redis();
my $pg     = start_postgres();
my $REDIS_PW = 'R3dis-pw-x9';
my $secure = start_redis(requirepass => $REDIS_PW);

my $REDIS_OPTS = 'pool=2 connect_timeout=300ms timeout=200ms';
my $PG_OPTS    = 'pool=2 connect_timeout=1s timeout=1s';
my $PG_ARGS    = '"' . $pg->dsn . qq{" $PG_OPTS};

my $n = 0;
sub status_of ($r) { $r->{headers}{'x-session-status'} // '' }

# A fresh session: MISS through Postgres, cached in $store, then HIT.
sub miss_then_hit ($nginx, $store, $name) {
    my $tok = 'tok-src-' . ++$n;
    my $exp = $pg->add_session($tok, "user-$n", 3600);
    my $r = $nginx->get('/', cookie => "session=$tok");
    is($r->{status}, 200, "$name: a valid session, 200");
    is(status_of($r), 'MISS', "$name: MISS");
    is($r->{headers}{'x-session-user'}, "user-$n", "$name: the user id");
    is($store->wait_for_key("session:$tok"),
       qq({"user_id":"user-$n","expires_at":$exp}), "$name: cached in Redis");
    $r = $nginx->get('/', cookie => "session=$tok");
    is($r->{status}, 200, "$name: again, 200");
    is(status_of($r), 'HIT', "$name: HIT");
}

sub no_secrets ($nginx, $name, @secrets) {
    my $log = $nginx->error_log;
    my @found = grep { index($log, $_) >= 0 } @secrets;
    is_deeply(\@found, [], "$name: the error log holds no password");
}

# --- env= ---------------------------------------------------------------

{
    my $nginx = start_nginx(
        main => "env SESSION_REDIS_URL;\nenv SESSION_PG_DSN;",
        env  => { SESSION_REDIS_URL => $redis->url,
                  SESSION_PG_DSN    => $pg->dsn },
        http => protected_site(
            redis    => "env=SESSION_REDIS_URL $REDIS_OPTS",
            postgres => "env=SESSION_PG_DSN $PG_OPTS"));
    miss_then_hit($nginx, $redis, 'env=');
    no_secrets($nginx, 'env=', $pg->password);
    no_alerts($nginx, 'env=: no alerts');
}

# --- file= --------------------------------------------------------------

{
    my $dir = tempdir('sc-secrets-XXXXXX', TMPDIR => 1,
                      CLEANUP => !$ENV{TEST_KEEP});
    for (['redis.url', $redis->url], ['pg.dsn', $pg->dsn]) {
        open my $fh, '>', "$dir/$_->[0]" or die $!;
        print {$fh} "$_->[1]\n";    # the trailing newline is stripped
        close $fh;
        chmod 0600, "$dir/$_->[0]";
    }
    my $nginx = start_nginx(http => protected_site(
        redis    => "file=$dir/redis.url $REDIS_OPTS",
        postgres => "file=$dir/pg.dsn $PG_OPTS"));
    miss_then_hit($nginx, $redis, 'file=');
    no_secrets($nginx, 'file=', $pg->password);
    no_alerts($nginx, 'file=: no alerts');
}

# --- host names, resolved when the configuration is loaded -----------------
#
# Redis by name; Postgres by a host list whose first entry refuses (nothing
# listens on 127.0.0.2), so libpq must fall over to the next one.

{
    my $dsn = $pg->dsn =~ s/host=127\.0\.0\.1/host=127.0.0.2,localhost/r;
    my $nginx = start_nginx(http => protected_site(
        redis    => $redis->url(host => 'localhost') . " $REDIS_OPTS",
        postgres => qq{"$dsn" $PG_OPTS}));
    miss_then_hit($nginx, $redis, 'host names and a host list');
    no_secrets($nginx, 'host names', $pg->password);
    no_alerts($nginx, 'host names: no alerts');
}

# --- Redis on a unix socket -------------------------------------------------

{
    my $local = start_redis(unixsocket => 1);
    my $nginx = start_nginx(http => protected_site(
        redis    => 'unix:' . $local->socket . " $REDIS_OPTS",
        postgres => $PG_ARGS));
    miss_then_hit($nginx, $local, 'unix:');

    # SIGKILL leaves the socket file: connect() is refused (an error, where
    # a missing file would be nginx's "crit")
    $local->kill;
    my $tok = 'tok-src-unix-down';
    $pg->add_session($tok, 'user-unix', 3600);
    my $r = $nginx->get('/', cookie => "session=$tok");
    is(status_of($r), 'BYPASS', 'unix: socket gone, BYPASS');
    like($nginx->error_log, qr/\Q${\ $local->socket }\E/,
         'the error log names the socket');
    no_alerts($nginx, 'unix: no alerts');
}

# --- Redis AUTH ------------------------------------------------------------

{
    my $nginx = start_nginx(http => protected_site(
        redis    => $secure->url . " $REDIS_OPTS",    # redis://:pw@...
        postgres => $PG_ARGS));
    miss_then_hit($nginx, $secure, 'requirepass, password in the URL');
    no_secrets($nginx, 'requirepass', $REDIS_PW, $pg->password);
    no_alerts($nginx, 'requirepass: no alerts');
}

{
    my $url = $secure->url =~ s{redis://:}{redis://default:}r;
    my $nginx = start_nginx(http => protected_site(
        redis => "$url $REDIS_OPTS", postgres => $PG_ARGS));
    miss_then_hit($nginx, $secure, 'requirepass, user default and password');
    no_secrets($nginx, 'user default', $REDIS_PW, $pg->password);
    no_alerts($nginx, 'user default: no alerts');
}

{
    my $WRONG = 'Wr0ng-pw-x9';
    my $nginx = start_nginx(http => protected_site(
        redis    => $secure->url(password => $WRONG) . " $REDIS_OPTS",
        postgres => $PG_ARGS));
    my $tok = 'tok-src-wrongpw';
    $pg->add_session($tok, 'user-wp', 3600);
    for my $i (1, 2) {
        my $r = $nginx->get('/', cookie => "session=$tok");
        is($r->{status}, 200, "wrong Redis password, request $i: still 200 via Postgres");
        is(status_of($r), 'BYPASS', "wrong Redis password, request $i: BYPASS");
        is($r->{headers}{'x-session-user'}, 'user-wp', "wrong Redis password, request $i: user id");
    }
    is($secure->key_exists("session:$tok"), 0, 'wrong Redis password: nothing cached');

    my $line = wait_until(sub {
        (grep { /redis/i && /WRONGPASS|auth/i } split /\n/, $nginx->error_log)[0];
    }, 10, 0.02, 'the authentication failure in the error log');
    ok($line, 'the error log names Redis and the authentication failure')
        or diag $nginx->error_log;
    note $line if $line;
    no_secrets($nginx, 'wrong password', $WRONG, $REDIS_PW, $pg->password);
    no_alerts($nginx, 'wrong password: no alerts');
}

done_testing;
