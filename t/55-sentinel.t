# Redis Sentinel (SPEC §10): sentinel:// in session_cache_redis. nginx -t's
# refusals (never a password); discovery through the sentinels, confirmed
# with ROLE, sessions answered by the master (HIT) and never by the
# replica; the health document's "sentinel" object and its Prometheus
# figures; the URL and sentinel_password= through env= and file=; a
# sentinel that names a replica (stale) caught by ROLE; a sentinel that
# does not know MASTER, a wrong sentinel password and an address given as
# a host name without a resolver: each a clear message in the log and the
# health document, requests answered by Postgres (BYPASS), no password
# anywhere.

use v5.36;
use Test::More;
use SessionCache::Test;

my $PW  = 'redis-S3cret-pw';      # the data nodes'
my $SPW = 'sentinel-S3cret-pw';   # the sentinels'

my $master  = start_redis(requirepass => $PW);
my $replica = start_redis(requirepass => $PW);
replicate($replica, $master);
my $sentinel = start_sentinel(master => $master, requirepass => $SPW,
                              quorum => 1);
my $pg = start_postgres();

my $S   = '127.0.0.1:' . $sentinel->port;
my $URL = "sentinel://:$PW\@$S/mymaster";
my $PG  = '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=1s';
my $OPTS = 'pool=2 connect_timeout=300ms timeout=300ms';

sub site ($redis, %o) {
    return protected_site(
        redis    => $redis,
        postgres => $PG,
        http     => $o{http} // '',
        server   => 'location = /health { session_cache_health; }');
}

sub secrets_ok ($text, $what) {
    ok($text !~ /S3cret/, "$what: no password") or diag $text;
}

# --- nginx -t --------------------------------------------------------------

{
    my %bad = (
        "sentinel://:$PW\@$S"                     => qr/missing master name/,
        "sentinel://:$PW\@127.0.0.1:S3cret/m"     => qr/invalid port/,
        "sentinel://$S/m\$x"                      => qr/invalid character in master name/,
        "\"sentinel://$S/m S3cret\""              => qr/unknown parameter after the URL/,
        "sentinel://no-such-host.invalid:26379/m" => qr/sentinel: could not translate host name/,
        "redis://127.0.0.1:1/0 sentinel_password=S3cret" =>
            qr/sentinel_password= needs a sentinel:\/\/ URL/,
        "\"$URL sentinel_password=S3cret\" sentinel_password=S3cret" =>
            qr/sentinel_password= is given twice/,
        "$URL sentinel_password=env=NO_SUCH_VAR_55" =>
            qr/environment variable "NO_SUCH_VAR_55" is not set/,
    );
    for my $arg (sort keys %bad) {
        my ($rc, $out) = check_config(http => site("$arg $OPTS"));
        ok($rc != 0 && $out =~ /session_cache_redis: .*$bad{$arg}/,
           "nginx -t refuses a bad sentinel:// setting ($bad{$arg})")
            or diag $out;
        secrets_ok($out, "nginx -t ($bad{$arg})");
    }
}

# --- discovery, HIT from the master -------------------------------------------

my $exp = int(time + 3600);
$pg->add_session('tok-sent-1', 'user-1', 3600);
$master->cli('SET', 'session:tok-sent-2', qq({"user_id":"user-2","expires_at":$exp}));
$master->cli('WAIT', 1, 1000);

sub health_of ($nginx) { my ($r, $d) = $nginx->health; return ($r, $d) }

{
    # each worker asks the sentinel for itself, and one that does not know
    # the master yet answers BYPASS: the requests below wait for both
    my $hp = free_port();
    my $nginx = start_nginx(workers => 2, http => site(
        "$URL $OPTS sentinel_password=$SPW",
        http => "session_cache_l1 size=1m;\n"
              . SessionCache::Test::worker_health($hp)));

    my $addr = '127.0.0.1:' . $master->port;
    ok(SessionCache::Test::wait_every_worker($nginx, $hp, sub ($d) {
        ($d->{redis}{sentinel}{address} // '') eq $addr
            && $d->{redis}{connected};
    }, 'the master in the health document'),
       'the master discovered through the sentinel');

    my $r = get('/', cookie => 'session=tok-sent-2');
    is($r->{status}, 200, 'a session cached in the master: 200');
    is($r->{headers}{'x-session-status'}, 'HIT', '... HIT');

    $r = get('/', cookie => 'session=tok-sent-1');
    is("$r->{status} $r->{headers}{'x-session-status'}", '200 MISS',
       'a session from Postgres: MISS');
    ok($master->wait_for_key('session:tok-sent-1'), '... written to the master');

    is($replica->calls('get'), 0, 'the replica was never asked');
    ok($master->calls('role') >= 1, 'the master was asked its ROLE');

    my ($hr, $d) = health_of($nginx);
    my $s = $d->{redis}{sentinel};
    is($s->{master}, 'mymaster', 'health: sentinel.master');
    is($s->{switches}, 0, 'health: no switch yet');
    ok(exists $s->{lastSwitch} && !defined $s->{lastSwitch},
       'health: lastSwitch null');
    ok(exists $s->{error} && !defined $s->{error}, 'health: no error');
    is($d->{status}, 'healthy', 'health: healthy') or diag explain $d->{errors};
    like($d->{l1}{armed} ? 'armed' : 'not', qr/armed/,
         'the L1 listener follows the discovered master')
        or diag explain $d->{l1};
    secrets_ok($hr->{body}, 'health document');

    my $p = $nginx->get('/health?format=prometheus');
    like($p->{body},
         qr/^nginx_session_cache_redis_sentinel_master_info\{master="mymaster",address="\Q$addr\E"\} 1$/m,
         'prometheus: the master');
    like($p->{body}, qr/^nginx_session_cache_redis_sentinel_switches_total 0$/m,
         'prometheus: switches');
    promtool_ok($p->{body}, 'prometheus with sentinel');
    secrets_ok($p->{body}, 'prometheus');

    like($nginx->error_log,
         qr/redis sentinel: master "mymaster" is \Q$addr\E/,
         'the master named in the error log (notice)');

    # a reload: the new workers start with the master the instance knew
    $nginx->reload;
    $r = get('/', cookie => 'session=tok-sent-2');
    is("$r->{status} $r->{headers}{'x-session-status'}", '200 HIT',
       'after a reload: HIT');
    (undef, $d) = health_of($nginx);
    is($d->{redis}{sentinel}{switches}, 0, 'after a reload: still no switch');
    unlike($nginx->error_log, qr/is now/, '... none logged');
    secrets_ok($nginx->error_log, 'error log');
    no_alerts($nginx);
    $nginx->stop;
}

# --- env= and file=: the URL with sentinel_password=, and the parameter -------

{
    my $file = "$sentinel->{dir}/redis-url";
    open my $fh, '>', $file or die $!;
    print {$fh} "$URL sentinel_password=$SPW\n";
    close $fh;

    for my $case (
        [ "env=SC_SENTINEL_URL $OPTS", { SC_SENTINEL_URL => "$URL sentinel_password=$SPW" },
          'env= holding the URL and sentinel_password=' ],
        [ "file=$file $OPTS", {}, 'file= holding both' ],
        [ "env=SC_SENTINEL_URL $OPTS sentinel_password=env=SC_SENTINEL_PW",
          { SC_SENTINEL_URL => $URL, SC_SENTINEL_PW => $SPW },
          'sentinel_password=env=' ],
    ) {
        my ($arg, $env, $what) = @$case;
        my $main = join '', map { "env $_;\n" } sort keys %$env;
        my $nginx = start_nginx(env => $env, main => $main,
                                http => site($arg));
        ok(wait_until(sub {
            get('/', cookie => 'session=tok-sent-2')->{headers}{'x-session-status'} eq 'HIT'
        }, 10, 0.05, 'HIT'), "$what: HIT through the sentinel");
        secrets_ok($nginx->error_log, "$what: error log");
        no_alerts($nginx);
        $nginx->stop;
    }
}

# --- what goes wrong: each a clear message, Postgres answers ------------------

sub failing ($url, $expect, $what, %o) {
    my $nginx = start_nginx(http => site("$url $OPTS", %o));
    my $d;
    ok(wait_until(sub {
        (undef, $d) = health_of($nginx);
        ($d->{redis}{sentinel}{error} // '') =~ $expect;
    }, 10, 0.05, $what), "$what: the health document says why")
        or diag explain $d->{redis};
    ok((grep { /^redis: sentinel: / && $_ =~ $expect } @{ $d->{errors} }),
       "$what: ... in errors");
    is($d->{status}, 'degraded', "$what: degraded");
    ok($nginx->wait_for_log(qr/\[error\].*redis sentinel: no master for "\w+": .*$expect/),
       "$what: logged at error");
    my $r = get('/', cookie => 'session=tok-sent-1');
    is("$r->{status} $r->{headers}{'x-session-status'}", '200 BYPASS',
       "$what: a valid session is let through by Postgres");
    secrets_ok($nginx->error_log, "$what: error log");
    secrets_ok(($nginx->health)[0]{body}, "$what: health");
    no_alerts($nginx);
    $nginx->stop;
    return $nginx;
}

failing("sentinel://:$PW\@$S/nosuchmaster sentinel_password=$SPW",
        qr/sentinel 127\.0\.0\.1:\d+ does not know the master "nosuchmaster"/,
        'a sentinel that does not know MASTER');

failing("\"$URL sentinel_password=Wrong-S3cret\"",
        qr/sentinel 127\.0\.0\.1:\d+: AUTH refused: WRONGPASS/,
        'a wrong sentinel password');

failing("$URL",
        qr/sentinel 127\.0\.0\.1:\d+: SENTINEL refused: NOAUTH/,
        'no sentinel password');

# --- a sentinel naming a replica: caught by ROLE ----------------------------------

{
    my $stale = start_fake_sentinel(address => ['127.0.0.1', $replica->port]);
    my $gets = $replica->calls('get');

    # alone: no master
    failing("sentinel://:$PW\@127.0.0.1:" . $stale->port . '/mymaster',
            qr/named 127\.0\.0\.1:\d+, which is not a master \(ROLE: slave\)/,
            'a sentinel naming a replica');

    # first in the list: the next sentinel names the master
    my $nginx = start_nginx(http => site(
        "sentinel://:$PW\@127.0.0.1:" . $stale->port . ",$S/mymaster "
        . "$OPTS sentinel_password=$SPW"));
    ok(wait_until(sub {
        get('/', cookie => 'session=tok-sent-2')->{headers}{'x-session-status'} eq 'HIT'
    }, 10, 0.05, 'HIT'), 'a stale sentinel first in the list: HIT from the master');
    ok($stale->asked >= 1, '... the stale sentinel was asked');
    ok($nginx->wait_for_log(qr/\[warn\].*named 127\.0\.0\.1:\d+, which is not a master \(ROLE: slave\)/),
       '... its answer refused by ROLE, at warn');
    is($replica->calls('get'), $gets, '... and the replica never asked a GET');
    no_alerts($nginx);
    $nginx->stop;
}

# --- an address given as a host name, and no resolver ------------------------------

{
    my $named = start_fake_sentinel(address => ['redis-master.example', $master->port]);
    failing("sentinel://:$PW\@127.0.0.1:" . $named->port . '/mymaster',
            qr/a host name, and no resolver is configured/,
            'a host name without a resolver');
}

# --- an address given as a host name, through nginx's resolver -------------------

{
    # a DNS server of the test's own: every name is 127.0.0.1
    my $dns = SessionCache::Test::start_fake_dns();
    my $dns_port = $dns->port;
    my $named = start_fake_sentinel(address => ['redis-master.example', $master->port]);
    # each worker resolves the name for itself: the request below may
    # reach either
    my $hp = free_port();
    my $nginx = start_nginx(http => site(
        "sentinel://:$PW\@127.0.0.1:" . $named->port . "/mymaster $OPTS",
        http => "resolver 127.0.0.1:$dns_port ipv6=off valid=10s;\n"
              . SessionCache::Test::worker_health($hp)));
    my $d;
    ok(SessionCache::Test::wait_every_worker($nginx, $hp, sub ($doc) {
        $d = $doc;
        ($d->{redis}{sentinel}{address} // '') eq '127.0.0.1:' . $master->port;
    }, 'the name resolved'),
       'a master given as a host name: resolved through nginx\'s resolver')
        or diag explain $d->{redis};
    my $r = get('/', cookie => 'session=tok-sent-2');
    is("$r->{status} $r->{headers}{'x-session-status'}", '200 HIT', '... HIT');
    ok($dns->asked('redis-master.example') >= 1, '... asked of the DNS server');
    no_alerts($nginx);
    $nginx->stop;
}

# --- the master demoted behind the sentinels' back: READONLY, ROLE ------------

{
    # a sentinel that keeps naming the old master, as a stale one would
    my $stuck = start_fake_sentinel(address => ['127.0.0.1', $master->port]);
    # one worker: what a worker learns of the master is its own, and the
    # health document below must come from the worker the requests reach
    my $nginx = start_nginx(workers => 1, http => site(
        "sentinel://:$PW\@127.0.0.1:" . $stuck->port . "/mymaster $OPTS"));
    ok(wait_until(sub {
        get('/', cookie => 'session=tok-sent-2')->{headers}{'x-session-status'} eq 'HIT'
    }, 10, 0.05, 'HIT'), 'through a sentinel that will go stale: HIT');

    $replica->cli('REPLICAOF', 'NO', 'ONE');
    $master->cli('CONFIG', 'SET', 'masterauth', $PW);
    $master->cli('REPLICAOF', '127.0.0.1', $replica->port);
    ok(wait_until(sub { $master->cli('ROLE') =~ /^slave/ }, 10, 0.05, 'demoted'),
       'the master demoted to a replica');

    my $since = $nginx->log_size;
    $pg->add_session('tok-sent-3', 'user-3', 3600);
    for (1 .. 3) {
        my $r = get('/', cookie => 'session=tok-sent-3');
        is($r->{status}, 200, 'a session only in Postgres: 200');
    }
    ok($nginx->wait_for_log(qr/not the master \((SET: READONLY|ROLE: slave)\)/, 1, $since),
       'the server refusing as a master is caught (READONLY or ROLE)');
    my $d;
    ok(wait_until(sub {
        (undef, $d) = health_of($nginx);
        ($d->{redis}{sentinel}{error} // '') =~ /which is not a master \(ROLE: slave\)/;
    }, 10, 0.05, 'the health document'),
       'the sentinels asked again: the one they name is not a master')
        or diag explain $d->{redis};
    my $r = get('/', cookie => 'session=tok-sent-3');
    is("$r->{status} $r->{headers}{'x-session-status'}", '200 BYPASS',
       'requests go to Postgres, not to a replica');
    no_alerts($nginx);
    $nginx->stop;
}

done_testing();
