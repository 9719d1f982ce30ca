# The check, request by request (SPEC §4 steps 1-3 and 6): rejected
# tokens, MISS then HIT, negative entries, revocation, logout, stale and
# malformed cache entries, the variables, a custom key prefix and query,
# negative_ttl 0, error_page.

use v5.36;
use Test::More;
use SessionCache::Test;

my $redis = start_redis();
my $pg    = start_postgres();

my $REDIS_ARGS = $redis->url . ' pool=2 connect_timeout=300ms timeout=200ms';
my $PG_ARGS    = '"' . $pg->dsn . '" pool=2 connect_timeout=1s timeout=1s';
my $H          = session_headers();

my $nginx = start_nginx(http => protected_site(
    redis    => $REDIS_ARGS,
    postgres => $PG_ARGS,
    http     => "session_cache_ttl 300s;\nsession_cache_negative_ttl 10s;",
    protect  => 'location /open/ { auth_session off; }',
    server   => <<~"NGX"));
        location /hdr/ {
            alias %%HTML%%/;
            auth_session \$http_x_session;
            $H
        }
        location /members/ {
            alias %%HTML%%/;
            auth_session \$cookie_session;
            error_page 401 = \@login;
        }
        location \@login {
            return 302 /login;
        }
        NGX
$nginx->write_html('open/index.html', "open\n");

my @tokens;    # every token used: none may show up in the error log
sub token ($name) { my $t = "$name-9f2c41"; push @tokens, $t; return $t }

sub status_of ($r) { $r->{headers}{'x-session-status'} // '' }

# ---------------------------------------------------------------------
# 1. No token, or an implausible one: 401 at once, no backend I/O.

{
    my $stats   = $redis->commandstats;
    my $queries = $pg->query_count;

    my $r = get('/');
    is($r->{status}, 401, 'no cookie: 401');
    is(status_of($r), 'REJECTED', 'no cookie: status REJECTED');

    $r = get('/', cookie => 'session=');
    is($r->{status}, 401, 'an empty cookie: 401');
    is(status_of($r), 'REJECTED', 'an empty cookie: status REJECTED');

    $r = get('/', cookie => 'session=abc def');
    is($r->{status}, 401, 'a cookie with a space: 401');
    is(status_of($r), 'REJECTED', 'a cookie with a space: status REJECTED');

    $r = get('/', cookie => 'other=abc');
    is($r->{status}, 401, 'a cookie by another name: 401');

    my %bad = (
        'an empty header'          => '',
        'a 513-byte token'         => 'a' x 513,
        'a token with a space'     => 'abc def',
        'a token with a semicolon' => 'abc;def',
        'a token with a tab'       => "abc\tdef",
        'a token with a 0x01 byte' => "abc\x01def",
        'a token with a 0x7f byte' => "abc\x7fdef",
        'a token with a 0xff byte' => "abc\xffdef",
        'a token with UTF-8'       => "abc\xc3\xa9def",
    );
    for my $name (sort keys %bad) {
        my $r = get('/hdr/', headers => { 'X-Session' => $bad{$name} });
        is($r->{status}, 401, "$name: 401");
        is(status_of($r), 'REJECTED', "$name: status REJECTED");
    }

    is_deeply($redis->commandstats, $stats,
              'rejected tokens sent nothing to Redis');
    is($pg->query_count, $queries, 'rejected tokens sent nothing to Postgres');

    # 512 bytes is still plausible: it gets looked up (and is unknown).
    $r = get('/hdr/', headers => { 'X-Session' => 'b' x 512 });
    is($r->{status}, 401, 'a 512-byte unknown token: 401');
    isnt(status_of($r), 'REJECTED', 'a 512-byte token is looked up, not rejected');
}

# ---------------------------------------------------------------------
# 2-3. A valid session: MISS (Postgres, cache filled), then HIT.

my $valid = token('tok-valid');
my $valid_exp = $pg->add_session($valid, 'user-42', 3600);
{
    my $q = $pg->query_count;
    my $r = get('/', cookie => "session=$valid");
    is($r->{status}, 200, 'a valid session only in Postgres: 200');
    is($r->{body}, "ok\n", 'the protected file is served');
    is(status_of($r), 'MISS', 'status MISS');
    is($r->{headers}{'x-session-user'}, 'user-42', '$session_user_id is the user id');
    is($r->{headers}{'x-session-expires'}, $valid_exp,
       '$session_expires_at is expires_at in unix seconds');
    is($pg->query_count, $q + 1, 'one Postgres query');

    my $value = $redis->wait_for_key("session:$valid");
    is($value, qq({"user_id":"user-42","expires_at":$valid_exp}),
       'the cache is filled with the JSON value');
    my $ttl = $redis->ttl("session:$valid");
    ok($ttl > 0 && $ttl <= 300, "its TTL ($ttl) is within session_cache_ttl");

    $r = get('/', cookie => "session=$valid");
    is($r->{status}, 200, 'the same session again: 200');
    is(status_of($r), 'HIT', 'status HIT');
    is($r->{headers}{'x-session-user'}, 'user-42', 'HIT: the user id');
    is($r->{headers}{'x-session-expires'}, $valid_exp, 'HIT: the expiry');
    is($pg->query_count, $q + 1, 'HIT: no new Postgres query');

    my @rs = get_many(10, sub ($i) { ('/', cookie => "session=$valid") });
    is(scalar(grep { $_->{status} == 200 && status_of($_) eq 'HIT' } @rs), 10,
       '10 concurrent requests: all 200 HIT');
}

# A session that ends before session_cache_ttl: the cache entry ends with it.
{
    my $tok = token('tok-short');
    my $exp = $pg->add_session($tok, 'user-short', 60);
    my $r = get('/', cookie => "session=$tok");
    is($r->{status}, 200, 'a session expiring in 60s: 200');
    ok(defined $redis->wait_for_key("session:$tok"), 'it is cached');
    my $ttl = $redis->ttl("session:$tok");
    # expires_at is whole seconds (rounded by ::bigint), hence the 1s slack.
    ok($ttl > 0 && $ttl <= 61 && $ttl <= $exp - time + 1,
       "its TTL ($ttl) does not outlive expires_at ($exp)");
}

# Token sources other than a cookie.
{
    my $r = get('/hdr/', headers => { 'X-Session' => $valid });
    is($r->{status}, 200, 'auth_session $http_x_session: a valid token, 200');
    is($r->{headers}{'x-session-user'}, 'user-42', 'the header token: user id');
}

# ---------------------------------------------------------------------
# Unknown token: 401, negative entry, then NEGATIVE without Postgres.

{
    my $tok = token('tok-unknown');
    my $q = $pg->query_count;
    my $r = get('/', cookie => "session=$tok");
    is($r->{status}, 401, 'an unknown token: 401');
    is($pg->query_count, $q + 1, 'an unknown token: Postgres was asked');
    is($redis->wait_for_key("session:$tok"), '{"invalid":true}',
       'a negative entry is written');
    my $ttl = $redis->ttl("session:$tok");
    ok($ttl > 0 && $ttl <= 10, "its TTL ($ttl) is within session_cache_negative_ttl");

    $r = get('/', cookie => "session=$tok");
    is($r->{status}, 401, 'the unknown token again: 401');
    is(status_of($r), 'NEGATIVE', 'status NEGATIVE');
    is($pg->query_count, $q + 1, 'NEGATIVE: no new Postgres query');
}

# ---------------------------------------------------------------------
# Revoked and expired sessions.

for my $case (['revoked', 3600, revoked => 1], ['expired', -60]) {
    my ($what, $in, %opt) = @$case;
    my $tok = token("tok-$what");
    $pg->add_session($tok, "user-$what", $in, %opt);
    my $r = get('/', cookie => "session=$tok");
    is($r->{status}, 401, "a $what session: 401");
    is($r->{headers}{'x-session-user'} // '', '', "a $what session: no user id");
    $r = get('/', cookie => "session=$tok");
    is($r->{status}, 401, "a $what session, asked again: 401");
}

# ---------------------------------------------------------------------
# Logout: the application deletes the key; the next request re-checks.

{
    my $tok = token('tok-logout');
    $pg->add_session($tok, 'user-logout', 3600);
    get('/', cookie => "session=$tok");
    ok(defined $redis->wait_for_key("session:$tok"), 'logout: the session is cached');
    is(status_of(get('/', cookie => "session=$tok")), 'HIT', 'logout: HIT before');

    $redis->cli('DEL', "session:$tok");
    my $q = $pg->query_count;
    my $r = get('/', cookie => "session=$tok");
    is($r->{status}, 200, 'after DEL, still valid in Postgres: 200');
    is(status_of($r), 'MISS', 'after DEL: MISS');
    is($pg->query_count, $q + 1, 'after DEL: Postgres was asked');

    # Wait for the refill, so it cannot land after the DEL below.
    ok(defined $redis->wait_for_key("session:$tok"), 'logout: cached again');
    $pg->revoke_session($tok);
    $redis->cli('DEL', "session:$tok");
    $r = get('/', cookie => "session=$tok");
    is($r->{status}, 401, 'revoked in Postgres and deleted from Redis: 401');
}

# ---------------------------------------------------------------------
# Stale and malformed cache entries never let a request through.

{
    my $past = time - 10;
    my $tok = token('tok-stale');
    $redis->cli('SET', "session:$tok",
                qq({"user_id":"ghost","expires_at":$past}), 'EX', 300);
    my $r = get('/', cookie => "session=$tok");
    is($r->{status}, 401, 'a cached entry past its expires_at, nothing in Postgres: 401');
    isnt(status_of($r), 'HIT', 'the stale entry is not a HIT');

    my $tok2 = token('tok-stale-valid');
    my $exp = $pg->add_session($tok2, 'real-user', 3600);
    $redis->cli('SET', "session:$tok2",
                qq({"user_id":"ghost","expires_at":$past}), 'EX', 300);
    $r = get('/', cookie => "session=$tok2");
    is($r->{status}, 200, 'a stale entry, valid in Postgres: 200');
    is(status_of($r), 'MISS', 'a stale entry, valid in Postgres: MISS');
    is($r->{headers}{'x-session-user'}, 'real-user', 'the user comes from Postgres');

    my $tok3 = token('tok-garbage');
    $redis->cli('SET', "session:$tok3", 'garbage', 'EX', 300);
    $r = get('/', cookie => "session=$tok3");
    is($r->{status}, 401, 'a malformed entry, nothing in Postgres: 401');

    my $tok4 = token('tok-garbage-valid');
    $pg->add_session($tok4, 'user-g', 3600);
    $redis->cli('SET', "session:$tok4", 'garbage', 'EX', 300);
    $r = get('/', cookie => "session=$tok4");
    is($r->{status}, 200, 'a malformed entry, valid in Postgres: 200');
    is(status_of($r), 'MISS', 'a malformed entry is a miss');
    is($r->{headers}{'x-session-user'}, 'user-g', 'Postgres decides the user');

    my $tok5 = token('tok-inject');
    my $future = time + 3600;
    $redis->cli('SET', "session:$tok5",
        qq({"user_id":"evil\\r\\nX-Injected: 1","expires_at":$future}), 'EX', 300);
    $r = get('/', cookie => "session=$tok5");
    is($r->{status}, 401, 'a cached user id with CR/LF, nothing in Postgres: 401');
    ok(!exists $r->{headers}{'x-injected'}, 'no header injected');
}

# ---------------------------------------------------------------------
# auth_session off, error_page.

{
    my $r = get('/open/');
    is($r->{status}, 200, 'auth_session off in a nested location: 200 without a cookie');
    is($r->{body}, "open\n", 'auth_session off: the file');

    $r = get('/members/', cookie => 'session=' . token('tok-members-bad'));
    is($r->{status}, 302, 'error_page 401 = @login: a bad cookie redirects');
    like($r->{headers}{location} // '', qr{/login$}, 'to /login');

    $r = get('/members/');
    is($r->{status}, 302, 'error_page 401 = @login: no cookie redirects');

    $r = get('/members/', cookie => "session=$valid");
    is($r->{status}, 200, 'error_page 401 = @login: a valid cookie, 200');
}

is(get('/public.html')->{status}, 200, 'an unprotected location: 200 without a cookie');

my $log = $nginx->error_log;
my @leaked = grep { index($log, $_) >= 0 } @tokens;
is_deeply(\@leaked, [], 'the error log holds no token');
unlike($log, qr/\Q${\ $pg->password }\E/, 'the error log holds no password');
no_alerts($nginx);

# ---------------------------------------------------------------------
# Custom key prefix and query; negative_ttl 0 (a second nginx).

# One worker with one Redis connection: a later request's cache fill is
# written after any write this nginx queued before it.
my $custom = start_nginx(workers => 1, http => protected_site(
    redis    => $redis->url . ' pool=1 connect_timeout=300ms timeout=200ms',
    postgres => $PG_ARGS,
    http     => <<~'NGX'));
        session_cache_key_prefix "sc:";
        session_cache_negative_ttl 0;
        session_cache_query "SELECT 'custom-' || user_id, extract(epoch FROM expires_at)::bigint FROM platform.user_sessions WHERE token = $1 AND revoked_at IS NULL AND expires_at > now()";
        NGX
{
    my $tok = token('tok-custom');
    my $exp = $pg->add_session($tok, 'u7', 3600);
    my $r = get('/', cookie => "session=$tok");
    is($r->{status}, 200, 'custom query: 200');
    is($r->{headers}{'x-session-user'}, 'custom-u7', 'custom query: its first column is the user id');
    is($r->{headers}{'x-session-expires'}, $exp, 'custom query: its second column is the expiry');
    is($redis->wait_for_key("sc:$tok"),
       qq({"user_id":"custom-u7","expires_at":$exp}),
       'custom prefix: the key is sc:<token>');
    is($redis->key_exists("session:$tok"), 0, 'custom prefix: no session:<token> key');
    $r = get('/', cookie => "session=$tok");
    is(status_of($r), 'HIT', 'custom prefix: HIT');

    # A key under the default prefix means nothing to this server.
    my $tok2 = token('tok-other-prefix');
    $redis->cli('SET', "session:$tok2", qq({"user_id":"x","expires_at":$exp}), 'EX', 300);
    is(get('/', cookie => "session=$tok2")->{status}, 401,
       'custom prefix: a session:<token> key is not looked at');

    my $unknown = token('tok-unknown-nottl');
    is(get('/', cookie => "session=$unknown")->{status}, 401,
       'negative_ttl 0: an unknown token, 401');
    # a valid session after it: once its fill is in Redis, a negative
    # entry written for the unknown token would be there too
    my $later = token('tok-custom-later');
    $pg->add_session($later, 'u8', 3600);
    is(get('/', cookie => "session=$later")->{status}, 200,
       'negative_ttl 0: a valid session after it, 200');
    ok(defined $redis->wait_for_key("sc:$later"), 'negative_ttl 0: that one is cached');
    is($redis->key_exists("sc:$unknown"), 0, 'negative_ttl 0: no negative entry written');
    my $r2 = get('/', cookie => "session=$unknown");
    is($r2->{status}, 401, 'negative_ttl 0: asked again, 401');
    isnt(status_of($r2), 'NEGATIVE', 'negative_ttl 0: not NEGATIVE');
    is($pg->queries_for($unknown), 2, 'negative_ttl 0: Postgres asked both times');
}
no_alerts($custom, 'no alerts in the custom-settings nginx');

done_testing;
