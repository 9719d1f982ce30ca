# rediss://: TLS to Redis through nginx's SSL layer. The server's chain is
# checked against tls_ca=, its name against the URL's host; a connection
# that fails either check is refused and the request goes to Postgres.

use v5.36;
use Test::More;
use SessionCache::Test;

# A CA, a server certificate for "localhost" only (so 127.0.0.1 does not
# match it), and a second, unrelated CA: ca.crt, server.crt/.key and
# other.crt in $dir.
my $dir = SessionCache::Test::make_ca(san => 'DNS:localhost')->{dir};

my $redis = start_redis(tls => { cert => "$dir/server.crt",
                                 key => "$dir/server.key",
                                 ca => "$dir/ca.crt" });
my $pg = start_postgres();
my $PG = '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=1s';
my $OPTS = 'pool=2 connect_timeout=1s timeout=500ms';

sub status_of ($r) { $r->{headers}{'x-session-status'} // '' }

my $n = 0;
sub site ($redis_args) {
    return start_nginx(http => protected_site(redis => $redis_args,
                                              postgres => $PG));
}

# --- the right CA: MISS, cached over TLS, then HIT --------------------------

{
    my $nginx = site($redis->url(host => 'localhost')
                     . " tls_ca=$dir/ca.crt $OPTS");
    my $tok = 'tok-tls-' . ++$n;
    my $exp = $pg->add_session($tok, 'user-tls', 3600);

    my $r = $nginx->get('/', cookie => "session=$tok");
    is($r->{status}, 200, 'rediss:// with the right CA: 200');
    is(status_of($r), 'MISS', 'rediss://: MISS');
    is($redis->wait_for_key("session:$tok"),
       qq({"user_id":"user-tls","expires_at":$exp}),
       'rediss://: the session is cached over TLS');
    $r = $nginx->get('/', cookie => "session=$tok");
    is(status_of($r), 'HIT', 'rediss://: HIT');
    is($r->{headers}{'x-session-user'}, 'user-tls', 'HIT: the user id');
    no_alerts($nginx, 'right CA: no alerts');
}

# --- an unrelated CA: refused, BYPASS ----------------------------------------

{
    my $nginx = site($redis->url(host => 'localhost')
                     . " tls_ca=$dir/other.crt $OPTS");
    my $tok = 'tok-tls-' . ++$n;
    $pg->add_session($tok, 'user-tls2', 3600);

    my $r = $nginx->get('/', cookie => "session=$tok");
    is($r->{status}, 200, 'an untrusted certificate: still 200 via Postgres');
    is(status_of($r), 'BYPASS', 'an untrusted certificate: BYPASS');
    is($redis->key_exists("session:$tok"), 0, 'nothing written to that Redis');
    like($nginx->error_log, qr/certificate verify failed/,
         'the error log says the certificate was not trusted');
    no_alerts($nginx, 'untrusted CA: no alerts');
}

# --- the right CA, the wrong name --------------------------------------------

{
    my $nginx = site($redis->url(host => '127.0.0.1')
                     . " tls_ca=$dir/ca.crt $OPTS");
    my $tok = 'tok-tls-' . ++$n;
    $pg->add_session($tok, 'user-tls3', 3600);

    my $r = $nginx->get('/', cookie => "session=$tok");
    is(status_of($r), 'BYPASS', 'a certificate for another name: BYPASS');
    # the URL names an address: the certificate (DNS:localhost) must list
    # it among its IP addresses, and does not
    like($nginx->error_log, qr/does not match the IP address/,
         'the error log says the address does not match');
    no_alerts($nginx, 'wrong name: no alerts');
}

# --- tls_verify=off: encrypted, not authenticated ----------------------------

{
    my $nginx = site($redis->url(host => '127.0.0.1')
                     . " tls_verify=off $OPTS");
    my $tok = 'tok-tls-' . ++$n;
    $pg->add_session($tok, 'user-tls4', 3600);

    is(status_of($nginx->get('/', cookie => "session=$tok")), 'MISS',
       'tls_verify=off: MISS');
    ok(defined $redis->wait_for_key("session:$tok"), 'tls_verify=off: cached');
    is(status_of($nginx->get('/', cookie => "session=$tok")), 'HIT',
       'tls_verify=off: HIT');
    no_alerts($nginx, 'tls_verify=off: no alerts');
}

# --- configuration errors ----------------------------------------------------

{
    my ($rc, $out) = check_config(http => protected_site(
        redis => "redis://127.0.0.1:6379/0 tls_ca=$dir/ca.crt",
        postgres => $PG));
    isnt($rc, 0, 'tls_ca= on a redis:// URL fails nginx -t');
    like($out, qr/session_cache_redis: .*rediss:\/\//,
         'and says it needs rediss://');

    ($rc, $out) = check_config(http => protected_site(
        redis => "rediss://localhost:6379/0 tls_ca=$dir/missing.crt",
        postgres => $PG));
    isnt($rc, 0, 'a missing tls_ca file fails nginx -t');
    like($out, qr/missing\.crt/, 'and names the file');
}

done_testing;
